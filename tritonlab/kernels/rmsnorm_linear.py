"""rmsnorm_linear: RMSNorm folded into the matmul that follows it,

    y = RMSNorm(x) W^T (+ bias),   RMSNorm(x) = x / sqrt(mean(x^2) + eps) * norm_weight,

in one kernel that never writes the normalised x. The 1/rms factor is per row, so it commutes
with the matmul: (r x g) W^T = r ((x g) W^T). The K loop that feeds tl.dot also accumulates
each row's sum of squares (the x tile is already in registers), each x tile is multiplied by
its norm-weight tile as it is loaded, and the epilogue multiplies the accumulator by
rsqrt(sum / K + eps) before the bias.

Why the norm weight multiplies the x tile rather than a pre-scaled W' = W diag(g): W' would
cost a full extra pass over the N x K weight (read and write) on every call, which at decode
sizes triples the traffic of the whole op; it only pays when done once at model load, and
then the caller owns a second copy of every weight. Multiplying the x tile costs one multiply
per x element per column tile, on a tile that the sum of squares already holds in registers.

Decode-sized M (<= 16 rows) goes to the split-K kernel of :mod:`._splitk`, which sums the
partial sums of squares of its K slices in the reduction.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritonlab.kernels._gemm import (
    check_no_grad,
    check_operand,
    check_same,
    gemm_configs,
    needs_int64,
    precision_for,
    tile_offsets,
)
from tritonlab.kernels._splitk import (
    DECODE_MAX_M,
    as_rows,
    check_norm,
    check_weight,
    fold_norm,
    fused_epilogue,
    launch_splitk,
    prepare_out,
)
from tritonlab.kernels.tuning import LastConfig, TunedKernel

__all__ = ["rmsnorm_linear", "RMSNORM_LINEAR_KERNEL", "RMSNORM_LINEAR_LAST"]


@triton.jit
def _rmsnorm_linear_kernel(
    x_ptr, nw_ptr, w_ptr, bias_ptr, out_ptr,
    M, N, K, eps,
    stride_xm, stride_xk,
    stride_nw,
    stride_wn, stride_wk,
    stride_bias,
    stride_om, stride_on,
    HAS_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr, EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Y = (RMSNorm(X) * nw) W^T (+ bias), one BLOCK_M x BLOCK_N tile of Y per program.

    x_ptr: X (M, K), strides (stride_xm, stride_xk). nw_ptr: norm weight (K,), stride
    stride_nw. w_ptr: W (N, K) in nn.Linear layout, strides (stride_wn, stride_wk), read in
    place as (K, N) tiles. bias_ptr: (N,), stride stride_bias (HAS_BIAS only). out_ptr: Y
    (M, N), written once. eps: the RMSNorm epsilon. EVEN_K: K % BLOCK_K == 0 (no K masks).
    Grid: (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N),), tiles ordered by ``grouped_tile``.
    The dot and the per-row sum of squares accumulate in fp32 over one K loop; the row scale
    rsqrt(sum / K + eps) is applied to the accumulator before the bias. Out-of-range
    rows/columns wrap (% M, % N) and are never stored.
    """
    pid = tl.program_id(0)
    offs_m, offs_n, rows, cols, offs_k = tile_offsets(pid, M, N, BLOCK_M, BLOCK_N, BLOCK_K,
                                                      GROUP_M, USE_INT64)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + cols[None, :] * stride_wn
    nw_ptrs = nw_ptr + offs_k * stride_nw

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            x = tl.load(x_ptrs)
            nw = tl.load(nw_ptrs)
            w = tl.load(w_ptrs)
        else:
            k_left = K - k * BLOCK_K
            x = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            nw = tl.load(nw_ptrs, mask=offs_k < k_left, other=0.0)
            w = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        x, ss = fold_norm(x, nw, ss)
        acc = tl.dot(x, w, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        nw_ptrs += BLOCK_K * stride_nw
        w_ptrs += BLOCK_K * stride_wk

    y = fused_epilogue(acc, acc, ss, bias_ptr, offs_n, N, K, eps, stride_bias,
                       "none", False, True, HAS_BIAS)
    out_rows = offs_m
    out_cols = offs_n
    if USE_INT64:
        out_rows = out_rows.to(tl.int64)
        out_cols = out_cols.to(tl.int64)
    out_ptrs = out_ptr + out_rows[:, None] * stride_om + out_cols[None, :] * stride_on
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)


# The tiled kernel and the config of rmsnorm_linear's last call (tiled or split-K), public for
# the op declaration (compile targets, Impl.config).
RMSNORM_LINEAR_KERNEL = TunedKernel(
    _rmsnorm_linear_kernel,
    key=["M", "N", "K", "stride_xm", "stride_xk", "stride_wn", "stride_wk", "INPUT_PRECISION",
         "HAS_BIAS"],
    configs=gemm_configs,
    heuristics={"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0},
)
RMSNORM_LINEAR_LAST = LastConfig()


def rmsnorm_linear(x: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor,
                   eps: float = 1e-5, *, bias: torch.Tensor | None = None,
                   out: torch.Tensor | None = None, input_precision: str | None = None
                   ) -> torch.Tensor:
    """RMSNorm(x) W^T (+ bias) in one kernel: RMSNorm(x) = x / sqrt(mean(x^2) + eps) *
    norm_weight over the last dimension; the normalised x is never written to memory.

    x: (..., K); norm_weight: (K,); weight: (N, K) (nn.Linear layout); bias: (N,) or None;
    eps: finite, > 0; out: (..., N) or None. Every tensor has x's dtype (float16, bfloat16 or
    float32) and device; any strides. Returns (..., N) in x's dtype; fp32 accumulation of both
    the dot and the sum of squares. M <= 16 rows run the split-K decode kernel.
    ``input_precision``: as in ``matmul`` (float32 only). Inference only, with no backward:
    with grad mode on and an input requiring grad it raises a RuntimeError rather than
    return an output autograd cannot differentiate.
    """
    x2, lead = as_rows(x)
    check_weight("weight", weight, x2)
    N, K = weight.shape
    eps = check_norm(norm_weight, eps, x2)
    if bias is not None:
        check_operand("bias", bias, 1)
        check_same(x=x2, bias=bias)
        if bias.shape[0] != N:
            raise ValueError(f"bias has shape {tuple(bias.shape)}; expected ({N},)")
    check_no_grad("rmsnorm_linear", x=x, norm_weight=norm_weight, weight=weight, bias=bias)
    precision = precision_for(x2.dtype, input_precision)
    out, out2 = prepare_out(out, x2, lead, N)
    M = x2.shape[0]
    if M == 0 or N == 0:
        return out
    if M <= DECODE_MAX_M:
        RMSNORM_LINEAR_LAST.value = launch_splitk(x2, weight.t(), out2,
                                                  norm_weight=norm_weight, eps=eps, bias=bias,
                                                  precision=precision)
        return out
    has_bias = bias is not None
    RMSNORM_LINEAR_KERNEL.launch(
        lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),),
        x2.dtype,
        x2, norm_weight, weight, bias, out2, M, N, K, eps,
        x2.stride(0), x2.stride(1), norm_weight.stride(0), weight.stride(0), weight.stride(1),
        bias.stride(0) if has_bias else 0, out2.stride(0), out2.stride(1),
        HAS_BIAS=has_bias, INPUT_PRECISION=precision,
        USE_INT64=needs_int64(x2, weight, out2),
    )
    RMSNORM_LINEAR_LAST.tiled(RMSNORM_LINEAR_KERNEL)
    return out

