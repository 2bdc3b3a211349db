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
import torch.nn.functional as F
import triton
import triton.language as tl

from tritonlab.kernels._gemm import (
    LLAMA3_8B_DIM,
    LLAMA3_8B_HIDDEN,
    check_operand,
    check_same,
    compile_baseline,
    gemm_configs,
    mnk,
    needs_int64,
    precision_for,
    tile_offsets,
)
from tritonlab.kernels._splitk import (
    DECODE_MAX_M,
    as_rows,
    check_norm,
    check_weight,
    compile_targets,
    fold_norm,
    fused_epilogue,
    launch_splitk,
    prepare_out,
)
from tritonlab.kernels.tuning import LastConfig, TunedKernel
from tritonlab.ops.contract import Impl, OpSpec, Tolerance, reduction_tolerance

__all__ = ["rmsnorm_linear", "SPEC"]


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


_RMSNORM_LINEAR = TunedKernel(
    _rmsnorm_linear_kernel,
    key=["M", "N", "K", "stride_xm", "stride_xk", "stride_wn", "stride_wk", "INPUT_PRECISION",
         "HAS_BIAS"],
    configs=gemm_configs,
    heuristics={"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0},
)
_LAST = LastConfig()


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
    ``input_precision``: as in ``matmul`` (float32 only). Inference only (no backward).
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
    precision = precision_for(x2.dtype, input_precision)
    out, out2 = prepare_out(out, x2, lead, N)
    M = x2.shape[0]
    if M == 0 or N == 0:
        return out
    if M <= DECODE_MAX_M:
        _LAST.value = launch_splitk(x2, weight.t(), out2, norm_weight=norm_weight, eps=eps,
                                    bias=bias, precision=precision)
        return out
    has_bias = bias is not None
    _RMSNORM_LINEAR.launch(
        lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),),
        x2.dtype,
        x2, norm_weight, weight, bias, out2, M, N, K, eps,
        x2.stride(0), x2.stride(1), norm_weight.stride(0), weight.stride(0), weight.stride(1),
        bias.stride(0) if has_bias else 0, out2.stride(0), out2.stride(1),
        HAS_BIAS=has_bias, INPUT_PRECISION=precision,
        USE_INT64=needs_int64(x2, weight, out2),
    )
    _LAST.tiled(_RMSNORM_LINEAR)
    return out


# ----------------------------------------------------------------------------- the op's SPEC

EPS = 1e-5



PRESETS = {
    # tiny: interpreter-sized and odd; M = 1 and 9 take the decode path, 33 and 64 the tiled.
    "tiny": [mnk(1, 100, 96), mnk(9, 130, 75), mnk(33, 83, 131), mnk(64, 64, 64)],
    "quick": [mnk(1, 14336, 4096), mnk(16, 6144, 4096), mnk(2048, 14336, 4096)],
    # llm: the norm in front of Llama-3-8B's MLP up-projection (4096 -> 14336) and in front of
    # its fused q/k/v projection (4096 -> 4096 + 2 * 1024).
    "llm": [mnk(m, n, LLAMA3_8B_DIM) for n in (LLAMA3_8B_HIDDEN, 6144)
            for m in (1, 2, 4, 8, 16, 128, 512, 2048, 8192)],
}


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def make_inputs(shape, dtype, device, seed):
    """x (M, K) ~ N(0, 1); weight (N, K) ~ N(0, 1/K) as model.init_params draws it; the
    norm weight near 1."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    m, n, k = shape["M"], shape["N"], shape["K"]
    x = torch.randn(m, k, generator=g)
    nw = 1.0 + 0.1 * torch.randn(k, generator=g)
    w = torch.randn(n, k, generator=g) * k**-0.5
    return {name: t.to(device=device, dtype=dtype)
            for name, t in (("x", x), ("norm_weight", nw), ("weight", w))}


def eager_rmsnorm_linear(x, norm_weight, weight, eps=EPS, bias=None):
    """The unfused chain: ``model.rms_norm`` (the block's own definition), then F.linear."""
    from tritonlab.workloads.model import rms_norm

    return F.linear(rms_norm(x, norm_weight, eps), weight, bias)


def reference(inputs, mode):
    x, nw, w = (inputs[k].double() for k in ("x", "norm_weight", "weight"))
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * nw
    return (h @ w.t(),)


def flops(shape, mode):
    """The GEMM (the norm's 3 M K are under 0.1% at model sizes)."""
    return 2 * shape["M"] * shape["N"] * shape["K"]


def rms_norm_chain_bytes(m: int, k: int, dtype: torch.dtype) -> int:
    """DRAM traffic of the eager RMSNorm of ``model.rms_norm`` on an (m, k) x, op by op
    (each reads its inputs and writes its output once; fp32 is 4 bytes, s the dtype's size):
    x.float() s+4 per element (skipped for fp32), pow(2) 4+4, mean 4 per element + 4 per row,
    + eps and rsqrt 4+4 per row each, xf * scale 4+4 per element + 4 per row, .to(dtype) 4+s
    (skipped for fp32), * norm_weight s+s per element + s per feature."""
    s = _size(dtype)
    mk = m * k
    convert = 0 if dtype == torch.float32 else (s + 4) * mk + (4 + s) * mk
    return (convert + 8 * mk + (4 * mk + 4 * m) + 8 * m + 8 * m + (8 * mk + 4 * m)
            + (2 * s * mk + s * k))


def bytes_moved(shape, dtype, mode):
    """Fused: x, the norm weight and W read once, y written once."""
    m, n, k = shape["M"], shape["N"], shape["K"]
    return _size(dtype) * (m * k + k + n * k + m * n)


def unfused_bytes(shape, dtype, mode):
    """Eager chain: the RMSNorm ops (``rms_norm_chain_bytes``) write the normalised x, which
    the GEMM reads back with W before writing y."""
    m, n, k = shape["M"], shape["N"], shape["K"]
    return rms_norm_chain_bytes(m, k, dtype) + _size(dtype) * (m * k + n * k + m * n)


def tolerance(dtype, shape, mode):
    """A K-long dot's bound, doubled for the rounding of x * norm_weight to the operand dtype
    (the eager chain rounds twice too: x * r and then * norm_weight)."""
    tol = reduction_tolerance(dtype, shape["K"], tf32=precision_for(dtype, None) == "tf32")
    return Tolerance(rel_fro=2 * tol.rel_fro, max_rel=2 * tol.max_rel)


def _operands(inputs):
    return inputs["x"], inputs["norm_weight"], inputs["weight"]


def _build_triton(inputs, mode):
    x, nw, w = _operands(inputs)
    out = torch.empty((x.shape[0], w.shape[0]), dtype=x.dtype, device=x.device)

    def run():
        with torch.inference_mode():
            return (rmsnorm_linear(x, nw, w, EPS, out=out),)
    return run


def _chain_builder(chain):
    def build(inputs, mode):
        x, nw, w = _operands(inputs)

        def run():
            with torch.inference_mode():
                return (chain(x, nw, w),)
        return run
    return build


_compiled: list = []


def _build_compiled(inputs, mode):
    if not _compiled:
        _compiled.append(compile_baseline(eager_rmsnorm_linear))
    return _chain_builder(_compiled[0])(inputs, mode)


def _compile_targets(dtype):
    """What ``tritonlab inspect`` compiles: the tiled kernel on a Llama-3-8B prefill (8192
    tokens, 4096 -> 14336), and split-K on the fused q/k/v projection at batch 1 (4096 ->
    6144: three K slices and the reduction with the RMS row scale on an H100)."""
    m, n, k = 8192, LLAMA3_8B_HIDDEN, LLAMA3_8B_DIM
    tiled = _RMSNORM_LINEAR.compile_target("tiled", dtype, dict(
        M=m, N=n, K=k, eps=EPS, stride_xm=k, stride_xk=1, stride_nw=1, stride_wn=k,
        stride_wk=1, stride_bias=1, stride_om=n, stride_on=1, bias_ptr=None, HAS_BIAS=False,
        INPUT_PRECISION=precision_for(dtype, None), USE_INT64=False))
    return [tiled] + compile_targets("decode", dtype, 1, 6144, k, rms=True)


SPEC = OpSpec(
    name="rmsnorm_linear",
    description="RMSNorm(x) W^T with the norm folded into the GEMM (inference)",
    dims=("M", "N", "K"),
    presets=PRESETS,
    impls=(
        Impl("triton", "triton", _build_triton,
             "one Triton kernel: sum of squares in the K loop, row scale in the epilogue; "
             "split-K for M <= 16", config=_LAST),
        Impl("torch", "baseline", _chain_builder(eager_rmsnorm_linear),
             "eager chain: model.rms_norm then F.linear"),
        Impl("torch_compile", "baseline", _build_compiled,
             "torch.compile of the eager chain (dynamic=False)", backends=("cuda",)),
    ),
    modes=("infer",),
    make_inputs=make_inputs,
    reference=reference,
    flops=flops,
    bytes=bytes_moved,
    unfused_bytes=unfused_bytes,
    tolerance=tolerance,
    compile_targets=_compile_targets,
)
