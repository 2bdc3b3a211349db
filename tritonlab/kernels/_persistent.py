"""The persistent tensor-descriptor GEMM: the Hopper main loop of ``matmul``, ``fp8_matmul``
and ``linear``'s forward (docs/matmul.md).

Schedule. One program per SM (``NUM_SMS`` programs, fewer when there are fewer output
tiles) walks the output tiles ``start, start + NUM_SMS, ...`` in grouped order
(``grouped_tile``: GROUP_SIZE_M tile-rows at a time, so that the programs running together
share A and B panels in L2; named apart from the tiled kernels' GROUP_M so that a launch
config tells the kernels apart). A program never exits between tiles, so there is no tail of launches
and each SM's registers and shared memory are set up once.

Loads. A, B and C are addressed through tensor descriptors (``tl.make_tensor_descriptor``),
which on sm_90+ compile to TMA (``UTMALDG`` / ``UTMASTG`` in SASS): one thread issues a whole
tile copy, the copy engine does the address arithmetic and the edge handling (out-of-bounds
elements read as zeros, so no masks), and the warps are free for wgmma. Operands are read in
place whichever of their two dimensions is contiguous (``operand_desc``): an nn.Linear weight
W (N, K) is B = W^T without a copy.

Overlap. With ``FLATTEN`` the tile loop and the K loop are flattened into one software-
pipelined loop, so the loads of the next tile's first K steps are in flight while this tile's
epilogue runs; the epilogue recomputes its tile coordinates from its own counter
(``tile_c``) so they are not values carried across the pipelined loop. ``EPILOGUE_SPLIT``
stores C in column halves, which halves the shared-memory staging buffer of the TMA store and
the epilogue's live registers.

Epilogue (constexpr switches, each specialisation holds only its own code): fp8 dequant
scales (per-tensor, per-row of A, per-column of B), bias, an activation and its derivative
D = act'(Z) for linear's backward.

Requirements (the launchers check them and fall back or raise; see
:func:`descriptor_problem`): every matrix has one dimension with stride 1, its other stride
a multiple of 16 bytes, and a 16-byte aligned base; C and D are row-major.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import triton
import triton.language as tl

from tritonlab.kernels._activations import activation_grad, apply_activation
from tritonlab.kernels._gemm import desc_tile, grouped_tile, halves, operand_desc
from tritonlab.kernels.tuning import CompileTarget, TunedKernel, hopper_class

__all__ = ["launch_persistent", "descriptor_problem", "persistent_target", "PERSISTENT_KERNEL",
           "num_programs", "prepare_launch", "tma_device", "persistent_configs",
           "INTERPRETER_PROGRAMS"]

# Programs of the persistent kernel under the interpreter: a small odd number, so that the
# CPU tests see programs that own several tiles and tile counts that are no multiple of it.
INTERPRETER_PROGRAMS = 3


@triton.jit
def _epilogue_part(acc, c_desc, d_desc, bias_ptr, sb_ptr, off_m, col, N,
                   stride_bias, stride_sb, out_dtype: tl.constexpr, WIDTH: tl.constexpr,
                   SCALE_B: tl.constexpr, HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
                   SAVE_DACT: tl.constexpr):
    """The column-dependent part of the epilogue on a BLOCK_M x WIDTH piece ``acc`` (fp32)
    of the tile at (off_m, col): per-column scale of B, bias, D = act'(Z) stored through
    ``d_desc`` when SAVE_DACT, Y = act(Z) stored through ``c_desc`` (both cast to
    ``out_dtype``; the descriptor store clips rows and columns past M and N)."""
    if SCALE_B == "col" or HAS_BIAS:
        cols = col + tl.arange(0, WIDTH)
        in_n = cols < N
    if SCALE_B == "col":
        acc = acc * tl.load(sb_ptr + cols * stride_sb, mask=in_n, other=0.0)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + cols * stride_bias, mask=in_n,
                            other=0.0).to(tl.float32)[None, :]
    if SAVE_DACT:
        d_desc.store([off_m, col], activation_grad(acc, ACTIVATION).to(out_dtype))
    c_desc.store([off_m, col], apply_activation(acc, ACTIVATION).to(out_dtype))


@triton.jit
def _persistent_matmul_kernel(
    a_ptr, b_ptr, c_ptr, d_ptr, bias_ptr, sa_ptr, sb_ptr,
    M, N, K,
    stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_cm, stride_dm,
    stride_bias, stride_sa, stride_sb,
    A_T: tl.constexpr, B_T: tl.constexpr,
    SCALE_A: tl.constexpr, SCALE_B: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, SAVE_DACT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr, EPILOGUE_SPLIT: tl.constexpr, FLATTEN: tl.constexpr,
):
    """C[M, N] = act(sa * sb * (A[M, K] @ B[K, N]) + bias), persistent over output tiles.

    a_ptr: A (M, K); row-major (stride_ak == 1, A_T=False) or column-major (stride_am == 1,
        A_T=True); fp16, bf16, fp32 (TF32 or FMA per INPUT_PRECISION) or fp8 (e4m3/e5m2).
    b_ptr: B (K, N); row-major (stride_bn == 1, B_T=False) or column-major (stride_bk == 1,
        B_T=True, e.g. an nn.Linear weight W (N, K) as W^T); A's dtype.
    c_ptr: C (M, N), row-major (unit column stride), row stride stride_cm; written once.
    d_ptr: D = act'(Z) (M, N), row stride stride_dm, C's dtype; written only with SAVE_DACT.
    bias_ptr: bias (N,), stride stride_bias; read only with HAS_BIAS.
    sa_ptr: fp32 scale of A: SCALE_A "none" (unused), "tensor" (one value), "row" (M values,
        stride stride_sa). sb_ptr: fp32 scale of B: "none", "tensor", "col" (N values, stride
        stride_sb). The scaled product is sa[m] * sb[n] * sum_k A[m, k] B[k, n].
    ACTIVATION: "none" | "relu" | "gelu" | "gelu_tanh" | "silu", on the fp32 result.
    NUM_SMS: the tile stride of every program; the grid is (min(NUM_SMS, tiles),).
    EPILOGUE_SPLIT: 1 or 2 column pieces per stored tile. FLATTEN: flatten the tile and K
        loops into one pipelined loop (the next tile's loads overlap this tile's epilogue).
    Accumulates in fp32 (on sm_90 fp8 wgmma accumulates at the tensor core's reduced
    internal precision, Triton's default for fp8, as cuBLAS's fast-accumulation mode does).
    Assumes the descriptor rules (16-byte aligned bases and leading strides), checked by the
    launcher; edges need no masks (TMA zero-fills loads and clips stores).
    """
    start = tl.program_id(0)
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    SUB_N: tl.constexpr = BLOCK_N // EPILOGUE_SPLIT
    a_desc = operand_desc(a_ptr, M, K, stride_am, stride_ak, BLOCK_M, BLOCK_K, A_T)
    b_desc = operand_desc(b_ptr, K, N, stride_bk, stride_bn, BLOCK_K, BLOCK_N, B_T)
    c_desc = tl.make_tensor_descriptor(c_ptr, shape=[M, N], strides=[stride_cm, 1],
                                       block_shape=[BLOCK_M, SUB_N])
    if SAVE_DACT:
        d_desc = tl.make_tensor_descriptor(d_ptr, shape=[M, N], strides=[stride_dm, 1],
                                           block_shape=[BLOCK_M, SUB_N])
    else:
        d_desc = c_desc
    out_dtype: tl.constexpr = c_ptr.dtype.element_ty

    # The epilogue's own tile counter: in a flattened loop, the tile coordinates of the
    # prologue are those of a later tile by the time the epilogue runs.
    tile_c = start - NUM_SMS
    for tile in tl.range(start, num_tiles, NUM_SMS, flatten=FLATTEN):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ki in range(k_tiles):
            off_k = ki * BLOCK_K
            a = desc_tile(a_desc, off_m, off_k, A_T)
            b = desc_tile(b_desc, off_k, off_n, B_T)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

        tile_c += NUM_SMS
        pid_m, pid_n = grouped_tile(tile_c, M, N, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
        off_cm = pid_m * BLOCK_M
        off_cn = pid_n * BLOCK_N
        if SCALE_A == "tensor":
            acc = acc * tl.load(sa_ptr)
        elif SCALE_A == "row":
            rows = off_cm + tl.arange(0, BLOCK_M)
            acc = acc * tl.load(sa_ptr + rows * stride_sa, mask=rows < M, other=0.0)[:, None]
        if SCALE_B == "tensor":
            acc = acc * tl.load(sb_ptr)
        if EPILOGUE_SPLIT == 2:
            h0, h1 = halves(acc, BLOCK_M, BLOCK_N)
            _epilogue_part(h0, c_desc, d_desc, bias_ptr, sb_ptr, off_cm, off_cn, N,
                           stride_bias, stride_sb, out_dtype, SUB_N, SCALE_B, HAS_BIAS,
                           ACTIVATION, SAVE_DACT)
            _epilogue_part(h1, c_desc, d_desc, bias_ptr, sb_ptr, off_cm, off_cn + SUB_N, N,
                           stride_bias, stride_sb, out_dtype, SUB_N, SCALE_B, HAS_BIAS,
                           ACTIVATION, SAVE_DACT)
        else:
            _epilogue_part(acc, c_desc, d_desc, bias_ptr, sb_ptr, off_cm, off_cn, N,
                           stride_bias, stride_sb, out_dtype, BLOCK_N, SCALE_B, HAS_BIAS,
                           ACTIVATION, SAVE_DACT)


def _pcfg(bm, bn, bk, stages, warps, split, flatten, group=8) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_SIZE_M": group,
                          "EPILOGUE_SPLIT": split, "FLATTEN": flatten},
                         num_stages=stages, num_warps=warps)


def persistent_configs(capability: tuple[int, int], dtype: torch.dtype) -> list[triton.Config]:
    """Autotune candidates for the persistent kernel (the first is the default).

    Hopper: 128 x 256 and 256 x 128 tiles with 8 warps (two consumer warpgroups for wgmma),
    3 stages, the store split in halves; 128 x 128 with 4 stages for shapes with few tiles.
    Every 16-bit entry fits 227 KB of shared memory: stages x (BLOCK_M + BLOCK_N) x BLOCK_K x
    2 bytes plus the BLOCK_M x BLOCK_N / EPILOGUE_SPLIT store buffer. One-byte fp8 doubles
    BLOCK_K (128: the same bytes per stage, twice the K per wgmma chain); fp32 halves it.
    Other GPUs (the fp8 path of sm_89, and a forced path on Ampere/Ada or consumer
    Blackwell) get 128 x 128 tiles, where descriptor loads compile to ordinary loads on 8.x.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    bk = {1: 128, 2: 64, 4: 32}[itemsize]
    if hopper_class(capability):
        return [
            _pcfg(128, 256, bk, 3, 8, 2, True),
            _pcfg(256, 128, bk, 3, 8, 2, True),
            _pcfg(128, 128, bk, 4, 8, 1, True),
            _pcfg(128, 256, bk, 3, 8, 2, False),
            _pcfg(128, 128, bk, 4, 4, 2, True),
            _pcfg(64, 128, bk, 4, 4, 1, True),
        ]
    return [_pcfg(128, 128, bk // 2, 3, 8, 2, False), _pcfg(64, 128, bk // 2, 4, 4, 1, False)]


PERSISTENT_KERNEL = TunedKernel(
    _persistent_matmul_kernel,
    key=["M", "N", "K", "A_T", "B_T", "SCALE_A", "SCALE_B", "HAS_BIAS", "ACTIVATION",
         "SAVE_DACT", "INPUT_PRECISION"],
    configs=persistent_configs,
    # GROUP_SIZE_M=2: the interpreter's small problems still get several tile groups.
    interpreter_config=_pcfg(64, 64, 64, 1, 4, 2, False, group=2),
)


def descriptor_problem(name: str, t: torch.Tensor, *, row_major: bool = False) -> str | None:
    """Why the 2-D tensor ``t`` cannot be read through a tensor descriptor, or None.

    A descriptor (TMA) needs one dimension with stride 1 (the last, or with the operand
    described transposed, the first; ``row_major`` demands the last), the other stride a
    multiple of 16 bytes (not 0), and a base address aligned to 16 bytes.
    """
    if t.dim() != 2:
        return f"{name} is {t.dim()}-D, a descriptor here describes 2-D matrices"
    size = t.element_size()
    if t.stride(1) == 1:
        lead = t.stride(0)
    elif t.stride(0) == 1 and not row_major:
        lead = t.stride(1)
    else:
        need = "unit column stride" if row_major else "a dimension with stride 1"
        return f"{name} has strides {tuple(t.stride())}, a descriptor needs {need}"
    if lead == 0:
        return f"{name} is broadcast (a stride of 0), which a descriptor cannot describe"
    if (lead * size) % 16:
        return (f"{name}'s leading stride is {lead * size} bytes, a descriptor needs a "
                f"multiple of 16 bytes")
    if t.data_ptr() % 16:
        return f"{name}'s data pointer is not 16-byte aligned"
    return None


def tma_device(device: torch.device) -> bool:
    """Whether the GEMM launchers choose the persistent kernel by default on ``device``: a
    CUDA GPU of the Hopper class (:func:`~tritonlab.kernels.tuning.hopper_class`: TMA, a
    warpgroup MMA and the shared memory its configs need). Under the interpreter the tiled
    kernels stay the default (the persistent one runs when asked for)."""
    return device.type == "cuda" and hopper_class(torch.cuda.get_device_capability(device))


def num_programs(device: torch.device) -> int:
    """The persistent kernel's program stride: the SM count on CUDA (one resident program
    per SM), :data:`INTERPRETER_PROGRAMS` under the interpreter."""
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _sm_count(index)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.cache
def _scratch_allocator(device: torch.device):
    """Triton's allocator for the global scratch that device-side tensor descriptors live in
    (128 bytes per descriptor and program), on ``device``."""
    def alloc(size: int, alignment: int, stream):
        return torch.empty(size, dtype=torch.int8, device=device)
    return alloc


def prepare_launch(device: torch.device) -> int:
    """Ready a persistent descriptor kernel's launch on ``device``; returns its program
    stride (:func:`num_programs`). Device-side descriptors need global scratch, which Triton
    allocates at launch through the calling thread's allocator (a ContextVar): it is set on
    every launch."""
    if device.type == "cuda":
        triton.set_allocator(_scratch_allocator(device))
    return num_programs(device)


def launch_persistent(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, *,
                      precision: str = "ieee", scale_a: torch.Tensor | None = None,
                      scale_b: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                      activation: str = "none", dact: torch.Tensor | None = None) -> dict:
    """out = act(scale_a * scale_b * (a @ b) + bias), and dact = act'(...) when given, on
    validated operands that pass :func:`descriptor_problem` (out and dact row-major).

    a (M, K), b (K, N), out (M, N); M, N, K >= 1 (callers handle empty shapes). scale_a:
    None, one fp32 value, or (M,) values (any view with M elements); scale_b: None, one
    value, or (N,). Returns the launch config: path "persistent", the program count and the
    tile config.
    """
    M, K = a.shape
    N = b.shape[1]
    sms = prepare_launch(a.device)

    def scale_mode(s, per):
        if s is None:
            return "none", 0
        return ("tensor", 0) if s.numel() == 1 else (per, s.stride(-1) if s.dim() else 0)

    mode_a, stride_sa = scale_mode(scale_a, "row")
    mode_b, stride_sb = scale_mode(scale_b, "col")
    if scale_a is not None and mode_a == "row":
        stride_sa = scale_a.reshape(-1).stride(0)
    if scale_b is not None and mode_b == "col":
        stride_sb = scale_b.reshape(-1).stride(0)
    PERSISTENT_KERNEL.launch(
        lambda meta: (min(sms, triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"])),),
        a.dtype,
        a, b, out, dact if dact is not None else out, bias if bias is not None else out,
        scale_a if scale_a is not None else out, scale_b if scale_b is not None else out,
        M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0),
        dact.stride(0) if dact is not None else out.stride(0),
        bias.stride(0) if bias is not None else 0, stride_sa, stride_sb,
        A_T=a.stride(1) != 1, B_T=b.stride(1) != 1, SCALE_A=mode_a, SCALE_B=mode_b,
        HAS_BIAS=bias is not None, ACTIVATION=activation, SAVE_DACT=dact is not None,
        INPUT_PRECISION=precision, NUM_SMS=sms,
    )
    return {"path": "persistent", "programs": min(sms, _tiles(M, N)),
            **(PERSISTENT_KERNEL.last_config or {})}


def _tiles(M: int, N: int) -> int:
    cfg = PERSISTENT_KERNEL.last_config or {}
    return triton.cdiv(M, cfg.get("BLOCK_M", 1)) * triton.cdiv(N, cfg.get("BLOCK_N", 1))


def persistent_target(name: str, dtype: torch.dtype, M: int, N: int, K: int, *,
                      b_col_major: bool = False, out_dtype: torch.dtype | None = None,
                      scales: tuple[str, str] = ("none", "none"), has_bias: bool = False,
                      activation: str = "none", save_dact: bool = False,
                      impls: tuple[str, ...] | None = None, sms: int = 132,
                      runs_on: Callable[[tuple[int, int]], bool] = hopper_class
                      ) -> CompileTarget:
    """The persistent kernel as launched on a row-major A (M, K) and a row-major B (K, N)
    (``b_col_major``: B = W^T of an nn.Linear weight W (N, K)) on an H100 (132 SMs), for
    ``tritonlab inspect``. It has no configs on a capability where ``runs_on`` is false: the
    dispatch runs the tiled kernel there (the 16-bit GEMMs use it on the Hopper class only;
    fp8 runs it from sm_89)."""
    out_dtype = out_dtype or dtype
    values = dict(
        M=M, N=N, K=K, stride_am=K, stride_ak=1,
        stride_bk=1 if b_col_major else N, stride_bn=K if b_col_major else 1,
        stride_cm=N, stride_dm=N, stride_bias=1, stride_sa=1, stride_sb=1,
        c_ptr=out_dtype, d_ptr=out_dtype, bias_ptr=out_dtype,
        sa_ptr=torch.float32, sb_ptr=torch.float32,
        A_T=False, B_T=b_col_major, SCALE_A=scales[0], SCALE_B=scales[1],
        HAS_BIAS=has_bias, ACTIVATION=activation, SAVE_DACT=save_dact,
        INPUT_PRECISION="tf32" if dtype == torch.float32 else "ieee", NUM_SMS=sms,
    )
    return CompileTarget(name, PERSISTENT_KERNEL.kernel, dtype, values, impls=impls,
                         configs=lambda cap: persistent_configs(cap, dtype) if runs_on(cap)
                         else [])
