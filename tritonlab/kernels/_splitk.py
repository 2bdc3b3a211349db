"""The decode path: split-K GEMM for small M (1..16 rows, batch-1 and small-batch generation),
and the fused epilogue it shares with the tiled fused-inference kernels.

Why split-K. With M <= 16 a GEMM is a matrix-vector product: every weight element is read
once and used M times, so the kernel is bound by memory bandwidth, and bandwidth needs many
loads in flight on every SM. A data-parallel tiling has only cdiv(N, BLOCK_N) programs (64
for N = 4096 and BLOCK_N = 64, half of an H100's 132 SMs), each walking all of K. Splitting K
into S slices gives cdiv(N, BLOCK_N) * S programs; S is chosen from the SM count so that
there are at least two programs per SM.

Two launches when S > 1. Each program writes its fp32 partial tile to a workspace
(S, M, N); a second small kernel sums the S partials and applies the epilogue (RMSNorm row
scale, bias, activation, gating), which cannot run before the sum because it is nonlinear.
This is deterministic, needs no atomics and no zero-initialised output, and the partials
re-run idempotently while the autotuner benchmarks configs. The workspace costs
2 * S * M * N * 4 bytes (written and read); S is capped so that this stays within 1/8 of a
16-bit weight's 2 * N * K. When one slice already fills the GPU (S = 1) the epilogue runs in
the same kernel and nothing else is launched.

The same kernel serves three ops through constexpr switches: plain matmul (``matmul``,
``linear``), the gated MLP (``GATED``: a second weight and accumulator) and RMSNorm folded into
the matmul (``RMS``: per-row sum of squares over the program's K slice, summed across slices
in the reduction). The operand checks the fused inference launchers share live here too.

(Over 500 lines on purpose: the partial kernel, the reduction kernel, the split choice and
the workspace size are one mechanism, and a change to one needs the others in view.)
"""

from __future__ import annotations

import collections
import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from tritonlab.kernels._activations import apply_activation, normalize_activation
from tritonlab.kernels._gemm import (
    check_matmul_operands,
    check_no_grad,
    check_operand,
    check_same,
    needs_int64,
    precision_for,
)
from tritonlab.kernels.tuning import CompileTarget, LastConfig, TunedKernel, smem_budget

__all__ = ["splitk_matmul", "launch_splitk", "splitk_targets", "DECODE_MAX_M", "LAUNCHES", "LAST",
           "as_rows", "check_eps", "check_norm", "check_weight", "prepare_out"]

# Largest M the fused and plain launchers send to the decode path.
DECODE_MAX_M = 16

# Kernel launches of the decode path, by kernel ("partial" and "reduce"). Tests read it to
# check that the launchers dispatch small M here; it costs one dict update per launch.
LAUNCHES: collections.Counter = collections.Counter()


@triton.jit
def fold_norm(a, g, ss):
    """Fold RMSNorm into a matmul operand tile.

    a: (BLOCK_M, BLOCK_K) tile of x as loaded; g: (BLOCK_K,) tile of the norm weight;
    ss: (BLOCK_M,) fp32 running sum of squares of each row of x.
    Returns (x * g cast back to x's dtype for tl.dot, ss + sum_k x^2). The 1/rms row scale is
    applied to the accumulator in the epilogue: (r x g) W^T = r ((x g) W^T) since r is per-row.
    """
    af = a.to(tl.float32)
    ss += tl.sum(af * af, axis=1)
    return (af * g.to(tl.float32)[None, :]).to(a.dtype), ss


@triton.jit
def fused_epilogue(acc, acc2, ss, bias_ptr, offs_n, N, K, eps, stride_bias,
                   ACTIVATION: tl.constexpr, GATED: tl.constexpr, RMS: tl.constexpr,
                   HAS_BIAS: tl.constexpr):
    """The inference epilogue on fp32 accumulators, in order: RMSNorm row scale, bias,
    activation, gating.

    acc, acc2: (BLOCK_M, BLOCK_N) fp32 sums of x W^T (acc2: the up projection, GATED only).
    ss: (BLOCK_M,) fp32 sum over all of K of x^2 (RMS only); the row scale is
    rsqrt(ss / K + eps). bias_ptr: (N,) with stride ``stride_bias`` (HAS_BIAS only);
    offs_n: (BLOCK_N,) column indices, masked against N for the bias load.
    GATED returns act(acc) * acc2, otherwise act(acc + bias). Returns an fp32 tile.
    """
    if RMS:
        r = tl.math.rsqrt(ss / K + eps)
        acc = acc * r[:, None]
        if GATED:
            acc2 = acc2 * r[:, None]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n * stride_bias, mask=offs_n < N, other=0.0)
        acc = acc + bias.to(tl.float32)[None, :]
    acc = apply_activation(acc, ACTIVATION)
    if GATED:
        acc = acc * acc2
    return acc


@triton.jit
def _splitk_kernel(
    a_ptr, b_ptr, b2_ptr, nw_ptr, bias_ptr, out_ptr, ws_ptr, ss_ptr,
    M, N, K, K_SPLIT, eps,
    stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_b2k, stride_b2n,
    stride_nw, stride_bias,
    stride_om, stride_on,
    stride_wa, stride_ws, stride_wm,
    ACTIVATION: tl.constexpr, GATED: tl.constexpr, RMS: tl.constexpr,
    HAS_BIAS: tl.constexpr, DIRECT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """One K slice of C = A @ B for one (BLOCK_M, BLOCK_N) tile; the decode-path partial.

    a_ptr: A (M, K), any strides. b_ptr: B (K, N), any strides (an nn.Linear weight (N, K)
    is passed as its transposed view, strides (1, K), and read in place).
    b2_ptr: second B (K, N) (GATED: the up projection). nw_ptr: norm weight (K,) (RMS).
    bias_ptr: (N,) (HAS_BIAS, DIRECT only). out_ptr: C (M, N), written only when DIRECT.
    ws_ptr: fp32 workspace (1 or 2, S, M, N) with strides (stride_wa, stride_ws, stride_wm, 1):
    partial sums of slice s go to ws[0, s] (and ws[1, s] for GATED) when not DIRECT.
    ss_ptr: fp32 (S, M), contiguous: the slice's per-row sum of squares (RMS, not DIRECT),
    written by the programs of the first column tile only.
    Grid: (cdiv(N, BLOCK_N), S, cdiv(M, BLOCK_M)); slice s covers K in
    [s * K_SPLIT, min(K, (s + 1) * K_SPLIT)), and K_SPLIT is a multiple of BLOCK_K, so only the
    last slice can end inside a K tile (EVEN_K: K % BLOCK_K == 0, no masks at all).
    DIRECT (S == 1): the epilogue runs here and C is written; nothing else is launched.
    Accumulates in fp32. Rows/columns past the edge wrap (% M, % N) for unmasked loads, as in
    the tiled matmul; their results are never stored.
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_start = pid_s * K_SPLIT
    k_len = tl.minimum(K - k_start, K_SPLIT)
    offs_k = k_start + tl.arange(0, BLOCK_K)
    rows = offs_m % M
    cols = offs_n % N
    if USE_INT64:
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn
    b2_ptrs = b2_ptr + offs_k[:, None] * stride_b2k + cols[None, :] * stride_b2n
    if RMS:
        nw_ptrs = nw_ptr + offs_k * stride_nw
    k_tile = tl.arange(0, BLOCK_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for i in range(0, tl.cdiv(k_len, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = k_len - i * BLOCK_K
            a = tl.load(a_ptrs, mask=k_tile[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=k_tile[:, None] < k_left, other=0.0)
        if RMS:
            if EVEN_K:
                g = tl.load(nw_ptrs)
            else:
                g = tl.load(nw_ptrs, mask=k_tile < k_left, other=0.0)
            a, ss = fold_norm(a, g, ss)
            nw_ptrs += BLOCK_K * stride_nw
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        if GATED:
            if EVEN_K:
                b2 = tl.load(b2_ptrs)
            else:
                b2 = tl.load(b2_ptrs, mask=k_tile[:, None] < k_left, other=0.0)
            acc2 = tl.dot(a, b2, acc2, input_precision=INPUT_PRECISION)
            b2_ptrs += BLOCK_K * stride_b2k
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    out_rows = offs_m
    out_cols = offs_n
    if USE_INT64:
        out_rows = out_rows.to(tl.int64)
        out_cols = out_cols.to(tl.int64)
    if DIRECT:
        y = fused_epilogue(acc, acc2, ss, bias_ptr, offs_n, N, K, eps, stride_bias,
                           ACTIVATION, GATED, RMS, HAS_BIAS)
        out_ptrs = out_ptr + out_rows[:, None] * stride_om + out_cols[None, :] * stride_on
        tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        ws_ptrs = ws_ptr + pid_s * stride_ws + out_rows[:, None] * stride_wm + out_cols[None, :]
        tl.store(ws_ptrs, acc, mask=mask)
        if GATED:
            tl.store(ws_ptrs + stride_wa, acc2, mask=mask)
        if RMS:
            if pid_n == 0:
                tl.store(ss_ptr + pid_s * M + offs_m, ss, mask=offs_m < M)


@triton.jit
def _splitk_reduce_kernel(
    ws_ptr, ss_ptr, bias_ptr, out_ptr,
    M, N, K, S, eps,
    stride_wa, stride_ws, stride_wm,
    stride_bias, stride_om, stride_on,
    ACTIVATION: tl.constexpr, GATED: tl.constexpr, RMS: tl.constexpr,
    HAS_BIAS: tl.constexpr, USE_INT64: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """C = epilogue(sum over s of the split-K partials), one (BLOCK_M, BLOCK_N) tile per program.

    ws_ptr: fp32 (1 or 2, S, M, N), strides (stride_wa, stride_ws, stride_wm, 1), as written
    by ``_splitk_kernel``. ss_ptr: fp32 (S, M), contiguous (RMS). bias_ptr: (N,) (HAS_BIAS).
    out_ptr: C (M, N), strides (stride_om, stride_on), written once in its dtype.
    Grid: (cdiv(M, BLOCK_M), cdiv(N, BLOCK_N)). Sums in fp32, slices in order (deterministic).
    """
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    rows = offs_m
    cols = offs_n
    if USE_INT64:
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
    ws_ptrs = ws_ptr + rows[:, None] * stride_wm + cols[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for s in range(0, S):
        acc += tl.load(ws_ptrs, mask=mask, other=0.0)
        if GATED:
            acc2 += tl.load(ws_ptrs + stride_wa, mask=mask, other=0.0)
        if RMS:
            ss += tl.load(ss_ptr + s * M + offs_m, mask=offs_m < M, other=0.0)
        ws_ptrs += stride_ws
    y = fused_epilogue(acc, acc2, ss, bias_ptr, offs_n, N, K, eps, stride_bias,
                       ACTIVATION, GATED, RMS, HAS_BIAS)
    out_ptrs = out_ptr + rows[:, None] * stride_om + cols[None, :] * stride_on
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------- launch

# Slices are a multiple of this many K elements: the largest BLOCK_K of the config lists, so
# every config tiles every slice exactly.
_K_GRAIN_GPU = 256
# Nominal BLOCK_N used to count column tiles when choosing S (the tuned BLOCK_N may differ).
_NOMINAL_BLOCK_N = 64
# Under the interpreter: one small fixed split, so the workspace and reduction run in tests.
_INTERPRETER_SPLIT = 2


def _decode_cfg(bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": 16, "BLOCK_N": bn, "BLOCK_K": bk},
                         num_warps=warps, num_stages=stages)


# (BLOCK_N, BLOCK_K, num_warps, num_stages). Checked with ptxas for sm_80 and sm_90a, M = 1
# (a constant, as the JIT specialises it) and M = 16, fp16/bf16/fp32, every switch
# combination: no spills, except the second gated entry, which spills a few bytes in fp32 on
# sm_90a. ptxas spills a few bytes at 56-128 registers for tiles left out here (64x128x4w,
# 128x64x8w, 64x64x6 stages for the plain kernel; 64x256 and 64x64 tiles for the gated one).
_DECODE_TILES = {
    1: [(64, 256, 4, 3), (32, 256, 8, 4), (64, 128, 8, 4), (128, 128, 8, 3), (32, 128, 4, 6),
        (64, 256, 8, 4)],
    2: [(32, 128, 4, 6), (64, 128, 4, 4)],
}


def decode_configs(capability: tuple[int, int], dtype: torch.dtype, n_weights: int = 1
                   ) -> list[triton.Config]:
    """Autotune candidates for the split-K kernel: BLOCK_M = 16 (the smallest tl.dot M on a
    GPU), weight tiles of 8-32 KB per stage and enough stages to keep several tiles in flight
    per SM (bandwidth needs bytes in flight, not tensor-core throughput). The pipeliner keeps
    num_stages - 1 buffers of ``n_weights`` weight tiles plus the x tile; a tile whose
    stages exceed the architecture's budget (:func:`~tritonlab.kernels.tuning.smem_budget`)
    keeps as many as fit, and is dropped when not even two do. So on a 99 KB SM (Ada,
    consumer Blackwell) the gated default runs 5 stages instead of 6, and fp32 tiles fewer
    stages everywhere."""
    size = torch.empty((), dtype=dtype).element_size()
    budget = smem_budget(capability)
    out = []
    for bn, bk, warps, stages in _DECODE_TILES[n_weights]:
        per_stage = size * bk * (16 + n_weights * bn)
        fit = min(stages, budget // per_stage + 1)
        if fit >= 2 and (bn, bk, warps, fit) not in out:
            out.append((bn, bk, warps, fit))
    return [_decode_cfg(*t) for t in out]


_INTERPRETER_DECODE_CONFIG = _decode_cfg(64, 64, 4, 1)
_K_GRAIN_INTERPRETER = _INTERPRETER_DECODE_CONFIG.kwargs["BLOCK_K"]

_SPLITK_KEY = ["M", "N", "K", "K_SPLIT", "stride_am", "stride_ak", "stride_bk", "stride_bn",
               "INPUT_PRECISION", "GATED", "RMS"]
_EVEN_K = {"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0}
_SPLITK = TunedKernel(_splitk_kernel, key=_SPLITK_KEY, configs=decode_configs,
                      interpreter_config=_INTERPRETER_DECODE_CONFIG, heuristics=_EVEN_K)
_SPLITK_GATED = TunedKernel(_splitk_kernel, key=_SPLITK_KEY,
                            configs=functools.partial(decode_configs, n_weights=2),
                            interpreter_config=_INTERPRETER_DECODE_CONFIG, heuristics=_EVEN_K)

_REDUCE_BLOCK_M, _REDUCE_BLOCK_N = 16, 256


@functools.cache
def sm_count(device_index: int) -> int:
    """The SM count of CUDA device ``device_index`` (cached)."""
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def gpu_k_split(M: int, N: int, K: int, sms: int) -> int:
    """The K slice length on a GPU with ``sms`` SMs: one slice when the column tiles alone
    reach the SM count, else enough slices for two programs per SM, but at most K / (32 M)
    slices, which keeps the workspace traffic (8 S M N bytes) within 1/8 of a 16-bit
    weight's (2 N K)."""
    tiles = triton.cdiv(N, _NOMINAL_BLOCK_N) * triton.cdiv(M, 16)
    split_k = 1 if tiles >= sms else min(triton.cdiv(2 * sms, tiles), max(1, K // (32 * M)))
    return _slice(K, split_k, _K_GRAIN_GPU)


def _slice(K: int, split_k: int, grain: int) -> int:
    return max(grain, triton.cdiv(triton.cdiv(K, split_k), grain) * grain)


def choose_k_split(M: int, N: int, K: int, device: torch.device,
                   split_k: int | None = None) -> int:
    """K elements per slice (a multiple of the K grain); the number of slices is
    cdiv(K, result), at most ``split_k`` when given. Without ``split_k``: ``gpu_k_split``
    with the device's SM count on CUDA, a fixed split of 2 under the interpreter."""
    on_gpu = device.type == "cuda"
    grain = _K_GRAIN_GPU if on_gpu else _K_GRAIN_INTERPRETER
    if split_k is None:
        if not on_gpu:
            return _slice(K, _INTERPRETER_SPLIT, grain)
        index = device.index if device.index is not None else torch.cuda.current_device()
        return gpu_k_split(M, N, K, sm_count(index))
    return _slice(K, split_k, grain)


def splitk_targets(name: str, dtype: torch.dtype, M: int, N: int, K: int, *,
                    gated: bool = False, rms: bool = False, has_bias: bool = False,
                    activation: str = "none", impls: tuple[str, ...] | None = None,
                    sms: int = 132) -> list:
    """``tritonlab inspect`` targets of the decode path for one launch: the split-K kernel as
    a row-major x and an nn.Linear weight (N, K) launch it with the K split an H100 (132 SMs)
    would use, plus the reduction kernel when that split has several slices."""
    k_split = gpu_k_split(M, N, K, sms)
    direct = k_split >= K
    precision = precision_for(dtype, None)
    values = dict(
        M=M, N=N, K=K, K_SPLIT=k_split, eps=1e-5,
        stride_am=K, stride_ak=1, stride_bk=1, stride_bn=K, stride_b2k=1, stride_b2n=K,
        stride_nw=1, stride_bias=1, stride_om=N, stride_on=1,
        # The direct launch passes a (1, 1, 1, 1) dummy workspace: unit strides.
        stride_wa=1 if direct else triton.cdiv(K, k_split) * M * N,
        stride_ws=1 if direct else M * N, stride_wm=1 if direct else N,
        nw_ptr=dtype if rms else None, bias_ptr=dtype if has_bias else None,
        ws_ptr=torch.float32, ss_ptr=torch.float32,
        ACTIVATION=activation, GATED=gated, RMS=rms, HAS_BIAS=has_bias, DIRECT=direct,
        INPUT_PRECISION=precision, USE_INT64=False,
    )
    tuned = _SPLITK_GATED if gated else _SPLITK
    targets = [tuned.compile_target(name, dtype, values, impls=impls)]
    if not direct:
        reduce_values = dict(
            M=M, N=N, K=K, S=triton.cdiv(K, k_split), eps=1e-5,
            stride_wa=values["stride_wa"], stride_ws=M * N, stride_wm=N,
            stride_bias=1, stride_om=N, stride_on=1,
            ws_ptr=torch.float32, ss_ptr=torch.float32,
            bias_ptr=dtype if has_bias else None,
            ACTIVATION=activation, GATED=gated, RMS=rms, HAS_BIAS=has_bias, USE_INT64=False,
            BLOCK_M=_REDUCE_BLOCK_M, BLOCK_N=_REDUCE_BLOCK_N,
        )
        targets.append(CompileTarget(f"{name}_reduce", _splitk_reduce_kernel, dtype,
                                     reduce_values, configs=[{"num_warps": 4}], impls=impls))
    return targets


def launch_splitk(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, *,
                  b2: torch.Tensor | None = None, norm_weight: torch.Tensor | None = None,
                  eps: float = 0.0, bias: torch.Tensor | None = None, activation: str = "none",
                  split_k: int | None = None, precision: str = "ieee") -> dict:
    """Run the decode path on validated operands: out = epilogue(A @ B [, A @ B2]).

    a (M, K); b and b2 (K, N), any strides; norm_weight (K,) folds RMSNorm(eps) into A;
    bias (N,); out (M, N), any strides. ``activation`` is a normalised name; with ``b2`` the
    result is act(A B) * (A B2). M, N >= 1 and K >= 1 (callers handle empty shapes).
    Returns the launch config: path "splitk", the number of K slices and the tile config.
    """
    M, K = a.shape
    N = b.shape[1]
    k_split = choose_k_split(M, N, K, a.device, split_k)
    n_split = triton.cdiv(K, k_split)
    gated, rms, has_bias = b2 is not None, norm_weight is not None, bias is not None
    direct = n_split == 1
    if direct:
        ws = torch.empty((1, 1, 1, 1), dtype=torch.float32, device=a.device)
        ss = ws
    else:
        ws = torch.empty((2 if gated else 1, n_split, M, N), dtype=torch.float32, device=a.device)
        ss = torch.empty((n_split, M), dtype=torch.float32, device=a.device)
    use_int64 = needs_int64(a, b, out, ws, *([b2] if gated else []))
    tuned = _SPLITK_GATED if gated else _SPLITK
    b2_ = b2 if gated else b
    tuned.launch(
        lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), n_split, triton.cdiv(M, meta["BLOCK_M"])),
        a.dtype,
        a, b, b2_, norm_weight, bias, out, ws, ss,
        M, N, K, k_split, float(eps),
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), b2_.stride(0), b2_.stride(1),
        norm_weight.stride(0) if rms else 0, bias.stride(0) if has_bias else 0,
        out.stride(0), out.stride(1),
        ws.stride(0), ws.stride(1), ws.stride(2),
        ACTIVATION=activation, GATED=gated, RMS=rms, HAS_BIAS=has_bias, DIRECT=direct,
        INPUT_PRECISION=precision, USE_INT64=use_int64,
    )
    LAUNCHES["partial"] += 1
    if not direct:
        grid = (triton.cdiv(M, _REDUCE_BLOCK_M), triton.cdiv(N, _REDUCE_BLOCK_N))
        _splitk_reduce_kernel[grid](
            ws, ss, bias, out, M, N, K, n_split, float(eps),
            ws.stride(0), ws.stride(1), ws.stride(2),
            bias.stride(0) if has_bias else 0, out.stride(0), out.stride(1),
            ACTIVATION=activation, GATED=gated, RMS=rms, HAS_BIAS=has_bias,
            USE_INT64=use_int64, BLOCK_M=_REDUCE_BLOCK_M, BLOCK_N=_REDUCE_BLOCK_N,
            num_warps=4,
        )
        LAUNCHES["reduce"] += 1
    return {"path": "splitk", "split_k": n_split, "k_split": k_split, **(tuned.last_config or {})}


LAST = LastConfig()

_TORCH_ACTIVATIONS = {
    "none": lambda x: x, "relu": torch.relu, "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu,
}


def splitk_matmul(a: torch.Tensor, b: torch.Tensor, *, bias: torch.Tensor | None = None,
                  activation: str | None = None, out: torch.Tensor | None = None,
                  split_k: int | None = None, input_precision: str | None = None
                  ) -> torch.Tensor:
    """C = act(A @ B + bias) by split-K, the decode-sized GEMM (M of 1..16).

    a: (M, K); b: (K, N), any strides: pass an nn.Linear weight ``w`` (N, K) as ``w.t()``,
    which is read in place. bias: (N,) or None. activation: None, "relu", "gelu",
    "gelu_tanh" or "silu", applied after the split-K partial sums are reduced. out: (M, N),
    any strides, or None to allocate. split_k: the most K slices to use (the slices are
    rounded to whole K tiles, so fewer may run); None picks from the SM count (at least two
    programs per SM) on CUDA and 2 under the interpreter. input_precision: as in ``matmul``.
    All tensors share one dtype (float16, bfloat16 or float32); accumulation is fp32.
    Inference only, with no backward: with grad mode on and an input requiring grad it
    raises a RuntimeError rather than return an output autograd cannot differentiate.
    """
    act = normalize_activation(activation)
    M, N, K = check_matmul_operands(a, b)
    if bias is not None:
        check_operand("bias", bias, 1)
        check_same(a=a, bias=bias)
        if bias.shape[0] != N:
            raise ValueError(f"bias has shape {tuple(bias.shape)}; expected ({N},)")
    if split_k is not None and (not isinstance(split_k, int) or split_k < 1):
        raise ValueError(f"split_k must be a positive int or None, got {split_k!r}")
    check_no_grad("splitk_matmul", a=a, b=b, bias=bias)
    precision = precision_for(a.dtype, input_precision)
    out, _ = prepare_out(out, a, (M,), N)
    if M == 0 or N == 0:
        return out
    if K == 0:
        if bias is None:
            return out.zero_()
        # No products to reduce: y = act(bias) on every row, with no kernel to launch.
        return out.copy_(_TORCH_ACTIVATIONS[act](bias.float().expand(M, N)))
    LAST.value = launch_splitk(a, b, out, bias=bias, activation=act, split_k=split_k,
                               precision=precision)
    return out


# ----------------------------------------------------------- checks shared by fused launchers

def as_rows(x: object, name: str = "x") -> tuple[torch.Tensor, tuple[int, ...]]:
    """x (..., K) -> (a 2-D (rows, K) view or copy of it, the leading shape). A 2-D x is used
    as is, any strides; leading dimensions are flattened (a copy only where they cannot be
    viewed as one)."""
    check_operand(name, x)
    if x.dim() == 0:
        raise ValueError(f"{name} must have at least 1 dimension (..., K), got a scalar")
    lead = tuple(x.shape[:-1])
    return (x if x.dim() == 2 else x.reshape(-1, x.shape[-1])), lead


def check_weight(name: str, w: object, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """w is an nn.Linear weight (N, K) matching x (rows, K) in K, dtype and device (and in N
    when ``n`` is given)."""
    check_operand(name, w, 2)
    check_same(x=x, **{name: w})
    K = x.shape[1]
    if w.shape[1] != K:
        raise ValueError(f"{name} has shape {tuple(w.shape)} but x has K={K} features; "
                         f"expected ({n if n is not None else 'N'}, {K}) (nn.Linear layout)")
    if n is not None and w.shape[0] != n:
        raise ValueError(f"{name} has shape {tuple(w.shape)}; expected ({n}, {K})")
    return w


def check_norm(norm_weight: object, eps: object, x: torch.Tensor) -> float:
    """norm_weight is (K,) like x's features, same dtype and device; eps a finite float > 0.
    Returns eps as a float."""
    check_operand("norm_weight", norm_weight, 1)
    check_same(x=x, norm_weight=norm_weight)
    K = x.shape[1]
    if norm_weight.shape[0] != K:
        raise ValueError(f"norm_weight has shape {tuple(norm_weight.shape)}; expected ({K},), "
                         f"the number of features of x")
    if K == 0:
        raise ValueError("RMSNorm needs at least one feature; x has K=0")
    return check_eps(eps)


def check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise TypeError(f"eps must be a float, got {type(eps).__name__}")
    if not (eps > 0 and eps < float("inf")):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def prepare_out(out: torch.Tensor | None, x: torch.Tensor, lead: tuple[int, ...], N: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(the (..., N) result tensor, its 2-D (rows, N) view the kernel writes). A given ``out``
    must have shape lead + (N,) and x's dtype and device; a 2-D out may have any strides."""
    shape = (*lead, N)
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    else:
        check_operand("out", out)
        check_same(x=x, out=out)
        if tuple(out.shape) != shape:
            raise ValueError(f"out has shape {tuple(out.shape)}; expected {shape}")
    if out.dim() == 2:
        return out, out
    try:
        return out, out.view(-1, N)
    except RuntimeError as exc:
        raise ValueError("out's leading dimensions must be viewable as one (e.g. contiguous)"
                         ) from exc
