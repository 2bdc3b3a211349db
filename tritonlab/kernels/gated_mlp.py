"""gated_mlp: the fused gated up-projection of a Llama-style MLP,

    y = act(x W_gate^T) * (x W_up^T)          (SwiGLU with act = SiLU, GeGLU with GELU-tanh)

in one kernel: each program computes the same output tile of both products, with two fp32
accumulators over one K loop that loads each x tile once, and writes only the gated result.
The unfused chain writes gate and up (two M x N tensors), reads them back for the activation
and the product, and writes two more: 7 M N elements of traffic against 1 here.

With ``norm_weight`` the RMSNorm in front of the MLP is folded in too (the best inference
block: x is read once, normalised x never exists in memory): the per-row sum of squares is
accumulated in the same K loop, each x tile is multiplied by its norm-weight tile as it is
loaded, and the 1/rms row scale multiplies both accumulators in the epilogue, since
(r x g) W^T = r ((x g) W^T). Op ``rmsnorm_gated_mlp`` measures that variant.

Decode-sized M (<= 16 rows) goes to the split-K kernel of :mod:`._splitk` with both weights.
On the Hopper class (sm_90, sm_100) the other sizes run ``_persistent_gated_kernel``: the
same math on the persistent schedule of :mod:`._persistent` (one program per SM looping over
output tiles, x and both weights loaded through tensor descriptors, i.e. TMA), when a
descriptor can read x, the weights and the output, and the dots are not exact fp32; the tiled
kernel otherwise, with the reason in ``GATED_LAST``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritonlab.kernels._gemm import (
    _cfg,
    check_no_grad,
    desc_tile,
    grouped_tile,
    needs_int64,
    operand_desc,
    precision_for,
    tile_offsets,
)
from tritonlab.kernels._persistent import descriptor_problem, prepare_launch, tma_device
from tritonlab.kernels._splitk import (
    DECODE_MAX_M,
    as_rows,
    check_eps,
    check_norm,
    check_weight,
    fold_norm,
    fused_epilogue,
    launch_splitk,
    prepare_out,
)
from tritonlab.kernels.tuning import LastConfig, TunedKernel, hopper_class

__all__ = ["gated_mlp", "GATED_ACTIVATIONS", "GATED_KERNEL", "GATED_PERSISTENT", "GATED_LAST"]

GATED_ACTIVATIONS = ("silu", "gelu_tanh")


@triton.jit
def _gated_mlp_kernel(
    x_ptr, wg_ptr, wu_ptr, nw_ptr, out_ptr,
    M, N, K, eps,
    stride_xm, stride_xk,
    stride_gn, stride_gk,
    stride_un, stride_uk,
    stride_nw,
    stride_om, stride_on,
    ACTIVATION: tl.constexpr, RMS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Y = act(X Wg^T) * (X Wu^T), one BLOCK_M x BLOCK_N tile of Y per program.

    x_ptr: X (M, K), strides (stride_xm, stride_xk). wg_ptr, wu_ptr: W_gate, W_up (N, K) in
    nn.Linear layout, strides (stride_gn, stride_gk) and (stride_un, stride_uk), read in place
    as (K, N) tiles. nw_ptr: RMSNorm weight (K,), stride stride_nw (RMS only): X is then
    replaced by RMSNorm(X) * nw with eps ``eps``. out_ptr: Y (M, N), written once.
    ACTIVATION: "silu" or "gelu_tanh". EVEN_K: K % BLOCK_K == 0 (no K masks).
    Grid: (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N),), tiles ordered by ``grouped_tile``.
    Both products and the sum of squares accumulate in fp32 over one K loop that loads each X
    tile once; out-of-range rows/columns wrap (% M, % N) and are never stored.
    """
    pid = tl.program_id(0)
    offs_m, offs_n, rows, cols, offs_k = tile_offsets(pid, M, N, BLOCK_M, BLOCK_N, BLOCK_K,
                                                      GROUP_M, USE_INT64)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    g_ptrs = wg_ptr + offs_k[:, None] * stride_gk + cols[None, :] * stride_gn
    u_ptrs = wu_ptr + offs_k[:, None] * stride_uk + cols[None, :] * stride_un
    if RMS:
        nw_ptrs = nw_ptr + offs_k * stride_nw

    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            x = tl.load(x_ptrs)
            wg = tl.load(g_ptrs)
            wu = tl.load(u_ptrs)
        else:
            k_left = K - k * BLOCK_K
            x = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            wg = tl.load(g_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
            wu = tl.load(u_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if RMS:
            if EVEN_K:
                nw = tl.load(nw_ptrs)
            else:
                nw = tl.load(nw_ptrs, mask=offs_k < k_left, other=0.0)
            x, ss = fold_norm(x, nw, ss)
            nw_ptrs += BLOCK_K * stride_nw
        acc_g = tl.dot(x, wg, acc_g, input_precision=INPUT_PRECISION)
        acc_u = tl.dot(x, wu, acc_u, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        g_ptrs += BLOCK_K * stride_gk
        u_ptrs += BLOCK_K * stride_uk

    y = fused_epilogue(acc_g, acc_u, ss, None, offs_n, N, K, eps, 0,
                       ACTIVATION, True, RMS, False)
    out_rows = offs_m
    out_cols = offs_n
    if USE_INT64:
        out_rows = out_rows.to(tl.int64)
        out_cols = out_cols.to(tl.int64)
    out_ptrs = out_ptr + out_rows[:, None] * stride_om + out_cols[None, :] * stride_on
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _persistent_gated_kernel(
    x_ptr, wg_ptr, wu_ptr, nw_ptr, out_ptr,
    M, N, K, eps,
    stride_xm, stride_xk,
    stride_gn, stride_gk,
    stride_un, stride_uk,
    stride_nw,
    stride_om,
    X_T: tl.constexpr, G_T: tl.constexpr, U_T: tl.constexpr,
    ACTIVATION: tl.constexpr, RMS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SIZE_M: tl.constexpr, FLATTEN: tl.constexpr,
):
    """Y = act(X Wg^T) * (X Wu^T) (X replaced by RMSNorm(X) * nw with RMS), persistent over
    output tiles: the schedule and descriptor loads of ``_persistent_matmul_kernel``
    (kernels/_persistent.py) with the two-accumulator K loop of ``_gated_mlp_kernel``.

    x_ptr: X (M, K); row-major (X_T=False) or column-major (X_T=True).
    wg_ptr, wu_ptr: W_gate, W_up (N, K), read as the (K, N) operands W^T: G_T / U_T are
        True for the usual row-major weights (W^T is then column-major).
    nw_ptr: RMSNorm weight (K,), stride stride_nw (RMS only). out_ptr: Y (M, N), row-major
        (row stride stride_om), written once through a descriptor.
    NUM_SMS: the tile stride; grid (min(NUM_SMS, tiles),). FLATTEN: as in the matmul kernel.
    Both products and the sum of squares accumulate in fp32; descriptor loads zero-fill
    past the edges (zero rows and K columns add nothing to the sums of squares either);
    assumes the descriptor rules (checked by the launcher).
    """
    start = tl.program_id(0)
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    x_desc = operand_desc(x_ptr, M, K, stride_xm, stride_xk, BLOCK_M, BLOCK_K, X_T)
    g_desc = operand_desc(wg_ptr, K, N, stride_gk, stride_gn, BLOCK_K, BLOCK_N, G_T)
    u_desc = operand_desc(wu_ptr, K, N, stride_uk, stride_un, BLOCK_K, BLOCK_N, U_T)
    o_desc = tl.make_tensor_descriptor(out_ptr, shape=[M, N], strides=[stride_om, 1],
                                       block_shape=[BLOCK_M, BLOCK_N])
    tile_c = start - NUM_SMS  # the epilogue's own tile counter (see the matmul kernel)
    for tile in tl.range(start, num_tiles, NUM_SMS, flatten=FLATTEN):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for ki in range(k_tiles):
            off_k = ki * BLOCK_K
            x = desc_tile(x_desc, off_m, off_k, X_T)
            if RMS:
                ks = off_k + tl.arange(0, BLOCK_K)
                nw = tl.load(nw_ptr + ks * stride_nw, mask=ks < K, other=0.0)
                x, ss = fold_norm(x, nw, ss)
            acc_g = tl.dot(x, desc_tile(g_desc, off_k, off_n, G_T), acc_g,
                           input_precision=INPUT_PRECISION)
            acc_u = tl.dot(x, desc_tile(u_desc, off_k, off_n, U_T), acc_u,
                           input_precision=INPUT_PRECISION)
        tile_c += NUM_SMS
        pid_m, pid_n = grouped_tile(tile_c, M, N, BLOCK_M, BLOCK_N, GROUP_SIZE_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        y = fused_epilogue(acc_g, acc_u, ss, None, offs_n, N, K, eps, 0,
                           ACTIVATION, True, RMS, False)
        o_desc.store([pid_m * BLOCK_M, pid_n * BLOCK_N], y.to(out_ptr.dtype.element_ty))


def gated_configs(capability: tuple[int, int], dtype: torch.dtype) -> list[triton.Config]:
    """Autotune candidates for the two-accumulator kernel. Two fp32 accumulators double the
    registers of a plain GEMM tile, so the largest tile is 128 x 128 with 8 warps (two
    warpgroups for wgmma on Hopper) and each stage holds an x tile and two weight tiles (48 KB
    at 128 x 128 x 64 in 16-bit: 4 stages fit Hopper's 228 KB). Ampere's mma.sync keeps
    operand fragments in registers too, so its tiles stop at 64 x 128. fp32 operands halve
    BLOCK_K to keep the same shared memory. Every entry compiles without spills for sm_90a /
    sm_80 in fp16, bf16 and fp32, with and without the norm. The first is the default when
    autotuning is off."""
    major = capability[0]
    if hopper_class(capability):
        configs = [_cfg(128, 128, 64, 4, 8), _cfg(128, 128, 64, 3, 8), _cfg(128, 64, 64, 4, 8),
                   _cfg(64, 128, 64, 4, 8), _cfg(64, 64, 64, 5, 4)]
    elif major >= 8:
        configs = [_cfg(64, 128, 32, 4, 8), _cfg(64, 64, 64, 4, 4), _cfg(64, 64, 32, 5, 4)]
    else:
        configs = [_cfg(64, 64, 32, 2, 4)]
    if dtype == torch.float32:
        configs = [triton.Config({**c.kwargs, "BLOCK_K": max(16, c.kwargs["BLOCK_K"] // 2)},
                                 num_stages=c.num_stages, num_warps=c.num_warps)
                   for c in configs]
    return configs


# The tiled kernel and the config of gated_mlp's last call (tiled or split-K), public for the
# op declarations (compile targets, Impl.config).
GATED_KERNEL = TunedKernel(
    _gated_mlp_kernel,
    key=["M", "N", "K", "stride_xm", "stride_xk", "stride_gn", "stride_gk", "stride_un",
         "stride_uk", "INPUT_PRECISION", "RMS"],
    configs=gated_configs,
    heuristics={"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0},
)
GATED_LAST = LastConfig()


def persistent_gated_configs(capability: tuple[int, int], dtype: torch.dtype
                             ) -> list[triton.Config]:
    """:func:`gated_configs` with the persistent kernel's keys: GROUP_SIZE_M, and FLATTEN on
    the Hopper class (the next tile's loads overlap this tile's epilogue)."""
    return [triton.Config({**{k: v for k, v in c.kwargs.items() if k != "GROUP_M"},
                           "GROUP_SIZE_M": c.kwargs["GROUP_M"], "FLATTEN": hopper_class(capability)},
                          num_stages=c.num_stages, num_warps=c.num_warps)
            for c in gated_configs(capability, dtype)]


GATED_PERSISTENT = TunedKernel(
    _persistent_gated_kernel,
    key=["M", "N", "K", "X_T", "G_T", "U_T", "INPUT_PRECISION", "RMS", "ACTIVATION"],
    configs=persistent_gated_configs,
    interpreter_config=triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64,
                                      "GROUP_SIZE_M": 2, "FLATTEN": False},
                                     num_stages=1, num_warps=4),
)


# Exact fp32 dots run on the FMA units, and the persistent kernel's two accumulators then
# compile to a 16 KB spill on sm_90a (ptxas allocates it 32 registers; 18 KB with the norm);
# the tiled kernel spills none (1.2 KB with the norm): `tritonlab inspect gated_mlp
# rmsnorm_gated_mlp --arch sm_90a --dtype float32`.
_EXACT_FP32 = ("exact fp32 (input_precision ieee): the persistent gated kernel spills 16 KB "
               "on sm_90a, the tiled one does not")


def _persistent_problem(x2, w_gate, w_up, out2, precision: str) -> str | None:
    """Why the persistent kernel does not take these operands (None: it does)."""
    if x2.dtype == torch.float32 and precision == "ieee":
        return _EXACT_FP32
    return (descriptor_problem("x", x2) or descriptor_problem("w_gate", w_gate)
            or descriptor_problem("w_up", w_up) or descriptor_problem("out", out2, row_major=True))


def gated_mlp(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
              activation: str = "silu", *, norm_weight: torch.Tensor | None = None,
              eps: float = 1e-5, out: torch.Tensor | None = None,
              input_precision: str | None = None) -> torch.Tensor:
    """act(x W_gate^T) * (x W_up^T) in one kernel; with ``norm_weight``, x is first replaced
    by RMSNorm(x) * norm_weight (eps ``eps``), folded into the same kernel.

    x: (..., K); w_gate, w_up: (N, K) (nn.Linear layout; views of one fused (2N, K) weight
    work); norm_weight: (K,) or None; activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU);
    out: (..., N) or None. Every tensor has x's dtype (float16, bfloat16 or float32) and
    device; any strides. Returns (..., N) in x's dtype. Accumulation is fp32. M <= 16 rows
    run the split-K decode kernel. ``input_precision``: as in ``matmul`` (float32 only).
    Inference only, with no backward: with grad mode on and an input requiring grad it
    raises a RuntimeError rather than return an output autograd cannot differentiate.
    """
    if activation not in GATED_ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r} for gated_mlp; expected one of: "
                         + ", ".join(repr(a) for a in GATED_ACTIVATIONS))
    x2, lead = as_rows(x)
    check_weight("w_gate", w_gate, x2)
    N = w_gate.shape[0]
    check_weight("w_up", w_up, x2, N)
    eps = check_norm(norm_weight, eps, x2) if norm_weight is not None else check_eps(eps)
    check_no_grad("gated_mlp", x=x, w_gate=w_gate, w_up=w_up, norm_weight=norm_weight)
    precision = precision_for(x2.dtype, input_precision)
    out, out2 = prepare_out(out, x2, lead, N)
    M, K = x2.shape
    if M == 0 or N == 0:
        return out
    if K == 0:
        out2.zero_()
        return out
    if M <= DECODE_MAX_M:
        GATED_LAST.value = launch_splitk(x2, w_gate.t(), out2, b2=w_up.t(),
                                         norm_weight=norm_weight, eps=eps,
                                         activation=activation, precision=precision)
        return out
    rms = norm_weight is not None
    fallback = None
    if tma_device(x2.device):
        fallback = _persistent_problem(x2, w_gate, w_up, out2, precision)
        if fallback is None:
            sms = prepare_launch(x2.device)
            GATED_PERSISTENT.launch(
                lambda meta: (min(sms, triton.cdiv(M, meta["BLOCK_M"])
                                  * triton.cdiv(N, meta["BLOCK_N"])),),
                x2.dtype,
                x2, w_gate, w_up, norm_weight, out2, M, N, K, eps,
                x2.stride(0), x2.stride(1), w_gate.stride(0), w_gate.stride(1),
                w_up.stride(0), w_up.stride(1), norm_weight.stride(0) if rms else 0,
                out2.stride(0),
                X_T=x2.stride(1) != 1, G_T=w_gate.stride(1) == 1, U_T=w_up.stride(1) == 1,
                ACTIVATION=activation, RMS=rms, INPUT_PRECISION=precision, NUM_SMS=sms,
            )
            cfg = GATED_PERSISTENT.last_config or {}
            tiles = (triton.cdiv(M, cfg.get("BLOCK_M", 1))
                     * triton.cdiv(N, cfg.get("BLOCK_N", 1)))
            GATED_LAST.value = {"path": "persistent", "programs": min(sms, tiles), **cfg}
            return out
    GATED_KERNEL.launch(
        lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),),
        x2.dtype,
        x2, w_gate, w_up, norm_weight, out2, M, N, K, eps,
        x2.stride(0), x2.stride(1), w_gate.stride(0), w_gate.stride(1),
        w_up.stride(0), w_up.stride(1), norm_weight.stride(0) if rms else 0,
        out2.stride(0), out2.stride(1),
        ACTIVATION=activation, RMS=rms, INPUT_PRECISION=precision,
        USE_INT64=needs_int64(x2, w_gate, w_up, out2),
    )
    GATED_LAST.tiled(GATED_KERNEL)
    if fallback:
        GATED_LAST.value["fallback"] = fallback
    return out

