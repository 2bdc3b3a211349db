"""fp8 inference GEMM: out = (scale_a * A) @ (scale_b * B) for e4m3 operands, the contract of
``torch._scaled_mm``, and the per-token quantiser that produces such operands.

Scaling contract (docs/matmul.md, "fp8"): A (M, K) and B (K, N) hold float8_e4m3fn values;
``scale_a`` is one fp32 value (per-tensor) or M values (per-row, shape (M, 1): one per token),
``scale_b`` one value or N values (per-column, shape (1, N): one per output channel of a
weight W (N, K) passed as B = W^T). The result is

    out[m, n] = scale_a[m] * scale_b[n] * sum_k A[m, k] * B[k, n]

accumulated in fp32 (on sm_90 at the fp8 tensor core's reduced internal precision, as
``torch._scaled_mm(..., use_fast_accum=True)``), scaled in the epilogue and stored in
``out_dtype``. The GEMM is the persistent TMA kernel of :mod:`._persistent` (descriptor
loads need K-contiguous rows of 16-byte multiples, so A row-major and B column-major as
``torch._scaled_mm`` requires, or any layout where one dimension is contiguous and the other
stride is a multiple of 16 bytes); there is no tiled fallback: operands it cannot read raise
:class:`~tritonlab.errors.UsageError`.

Quantiser (:func:`quantize_fp8`): per-row scales s[m] = max_k |x[m, k]| / 448 and
q = round_e4m3(x * (448 / max_k |x[m, k]|)), so every row uses the full e4m3 range. Activations
are quantised per call (the cost the ``triton_quant`` impl of op ``fp8_matmul`` times), weights
once (per output channel, the same kernel on W's rows).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritonlab import backend
from tritonlab.errors import UsageError
from tritonlab.kernels._gemm import check_no_grad, dtype_name
from tritonlab.kernels._persistent import descriptor_problem, launch_persistent
from tritonlab.kernels.tuning import LastConfig

__all__ = ["fp8_matmul", "quantize_fp8", "FP8_DTYPE", "FP8_MAX", "AMAX_FLOOR", "FP8_LAST",
           "OUT_DTYPES", "MIN_CAPABILITY", "QUANT_BLOCK_M", "QUANT_BLOCK_K"]

FP8_DTYPE = torch.float8_e4m3fn
# The largest finite e4m3 value (S.1111.110 = 1.75 * 2^8).
FP8_MAX = 448.0
# A row of zeros gets this amax (and so a tiny scale and all-zero codes) instead of 0 / 0.
AMAX_FLOOR = 1e-12
OUT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# fp8 tensor cores exist from compute capability 8.9 (Ada) on.
MIN_CAPABILITY = (8, 9)
QUANT_BLOCK_M, QUANT_BLOCK_K = 16, 256

FP8_LAST = LastConfig()


@triton.jit
def _round_to_e4m3(y):
    """``y`` (fp32, |y| <= 448) rounded to the nearest e4m3 value, ties to even, computed in
    fp32 so that the final cast to float8e4nv is exact.

    Why not just ``y.to(tl.float8e4nv)``: on a GPU that cast rounds correctly, but Triton's
    interpreter rounds ties up and drops the carry when the mantissa rounds over (30.5 becomes
    16), so the CPU tests would check a different quantiser. Here the grid spacing of y's
    binade, ulp = 2^(e - 3) with e = max(exponent(y), -6) (e4m3 keeps 3 mantissa bits; below
    2^-6 its subnormals share that binade's spacing), is built from y's exponent bits, and
    y / ulp (exact: a power of two) is rounded to an integer by adding and subtracting
    1.5 * 2^23, which leaves the fp32 adder's round-to-nearest-even result (on |y|; the
    sign is restored afterwards).
    """
    mag = tl.abs(y)
    e = tl.maximum((mag.to(tl.int32, bitcast=True) >> 23) - 127, -6)
    ulp = ((e - 3 + 127) << 23).to(tl.float32, bitcast=True)
    inv_ulp = ((127 - (e - 3)) << 23).to(tl.float32, bitcast=True)
    t = mag * inv_ulp
    t = (t + 12582912.0) - 12582912.0
    r = t * ulp
    # The sign is put back last, so that a negative value rounding to zero gives -0 as the
    # cast does (x + c - c would give +0).
    return tl.where(y < 0, -r, r)


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, s_ptr,
    M, K,
    stride_xm, stride_xk,
    stride_qm, stride_qk,
    stride_s,
    FP8_MAX: tl.constexpr, AMAX_FLOOR: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Per-row fp8 quantisation of X (M, K): s[m] = amax_m / FP8_MAX and
    Q[m, k] = round_e4m3(X[m, k] * (FP8_MAX / amax_m)), amax_m = max(max_k |X[m, k]|, AMAX_FLOOR).

    x_ptr: X (M, K), fp16 / bf16 / fp32, strides (stride_xm, stride_xk), any layout.
    q_ptr: Q (M, K), float8e4nv, strides (stride_qm, stride_qk).
    s_ptr: s (M,), fp32, stride stride_s: the dequantisation scale (X ~ s[m] * Q[m, :]).
    Grid: (cdiv(M, BLOCK_M),); each program owns BLOCK_M rows and reads them twice (the
    row maximum, then the codes), which for K of a model's width stays in L2 between the
    passes. Math in fp32 with correctly rounded divisions (``div_rn``), the same operations
    as the torch reference, so both give identical codes. Offsets in int64.
    """
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    in_m = rows < M
    rows = rows.to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        mask = in_m[:, None] & (ks[None, :] < K)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk, mask=mask,
                    other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
    amax = tl.maximum(amax, AMAX_FLOOR)
    inv = tl.math.div_rn(tl.full((BLOCK_M,), FP8_MAX, tl.float32), amax)
    tl.store(s_ptr + rows * stride_s,
             tl.math.div_rn(amax, tl.full((BLOCK_M,), FP8_MAX, tl.float32)), mask=in_m)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        mask = in_m[:, None] & (ks[None, :] < K)
        x = tl.load(x_ptr + rows[:, None] * stride_xm + ks[None, :] * stride_xk, mask=mask,
                    other=0.0).to(tl.float32)
        q = _round_to_e4m3(x * inv[:, None])
        tl.store(q_ptr + rows[:, None] * stride_qm + ks[None, :] * stride_qk,
                 q.to(q_ptr.dtype.element_ty), mask=mask)


def _check_device(t: torch.Tensor, what: str) -> None:
    want = backend.current().device
    if t.device.type != want:
        raise UsageError(f"{what} is on {t.device} but the {backend.current().name} backend "
                         f"runs on {want}")
    if t.device.type == "cuda" and torch.cuda.get_device_capability(t.device) < MIN_CAPABILITY:
        cap = torch.cuda.get_device_capability(t.device)
        raise UsageError(f"fp8 needs a GPU of compute capability 8.9 or newer (Ada, Hopper); "
                         f"this one is {cap[0]}.{cap[1]}: use the 16-bit path (matmul/linear)")


def quantize_fp8(x: torch.Tensor, *, q: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) e4m3 quantisation of a 2-D x (M, K) of float16, bfloat16 or
    float32, any strides: returns (q, scale) with q (M, K) float8_e4m3fn and scale (M, 1)
    float32 such that x ~ scale * q, each row scaled to the full e4m3 range (see the module
    docstring). ``q`` (any strides) and ``scale`` (M values viewable as one strided row, e.g.
    an (M, 1) column of a wider buffer) may be given preallocated, to be written.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise UsageError(f"quantize_fp8 takes a 2-D tensor (M, K), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dtype not in OUT_DTYPES:
        raise UsageError(f"quantize_fp8: x has dtype {dtype_name(x.dtype)}; supported: "
                         + ", ".join(dtype_name(d) for d in OUT_DTYPES))
    _check_device(x, "x")
    check_no_grad("quantize_fp8", x=x)
    M, K = x.shape
    if q is None:
        q = torch.empty((M, K), dtype=FP8_DTYPE, device=x.device)
    if scale is None:
        scale = torch.empty((M, 1), dtype=torch.float32, device=x.device)
    if q.shape != (M, K) or q.dtype != FP8_DTYPE:
        raise UsageError(f"q must be ({M}, {K}) float8_e4m3fn, got {tuple(q.shape)} "
                         f"{dtype_name(q.dtype)}")
    if scale.numel() != M or scale.dtype != torch.float32:
        raise UsageError(f"scale must hold {M} float32 values, got {tuple(scale.shape)} "
                         f"{dtype_name(scale.dtype)}")
    # The kernel writes s[m] at m * one stride: a scale whose M values are not one strided
    # row (reshape would copy) would be written in the wrong order, so refuse it.
    try:
        stride_s = scale.view(-1).stride(0) if M > 1 else 1
    except RuntimeError as exc:
        raise UsageError(f"scale of shape {tuple(scale.shape)} and strides "
                         f"{tuple(scale.stride())} is not one strided row of {M} values; "
                         f"pass an (M, 1) or (M,) tensor") from exc
    if M and K:
        _quantize_rows_kernel[(triton.cdiv(M, QUANT_BLOCK_M),)](
            x, q, scale, M, K, x.stride(0), x.stride(1), q.stride(0), q.stride(1),
            stride_s,
            FP8_MAX=FP8_MAX, AMAX_FLOOR=AMAX_FLOOR, BLOCK_M=QUANT_BLOCK_M,
            BLOCK_K=QUANT_BLOCK_K, num_warps=4)
    elif M:
        scale.fill_(AMAX_FLOOR / FP8_MAX)
    return q, scale


def _check_scale(name: str, s: object, per: int, per_shape: tuple[int, int]) -> torch.Tensor:
    """A per-tensor (one value: shape (), (1,) or (1, 1)) or per-row/column (``per_shape``)
    fp32 scale, else UsageError naming the valid shapes."""
    if not isinstance(s, torch.Tensor):
        raise UsageError(f"{name} must be a float32 torch.Tensor, got {type(s).__name__}")
    if s.dtype != torch.float32:
        raise UsageError(f"{name} has dtype {dtype_name(s.dtype)}; scales must be float32")
    if s.numel() != 1 and tuple(s.shape) != per_shape:
        raise UsageError(f"{name} has shape {tuple(s.shape)}; valid: one value ((), (1,) or "
                         f"(1, 1), per-tensor) or {per_shape} (one per "
                         f"{'row of a' if name == 'scale_a' else 'column of b'}, {per} values)")
    return s


def fp8_matmul(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor,
               scale_b: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16, *,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """out = (scale_a * a) @ (scale_b * b) for float8_e4m3fn a (M, K) and b (K, N), the
    contract of ``torch._scaled_mm(a, b, scale_a, scale_b, out_dtype=...)`` (see the module
    docstring): scale_a one float32 value or (M, 1), scale_b one value or (1, N); out_dtype
    bfloat16, float16 or float32. Returns (M, N) in out_dtype, or writes ``out`` (row-major,
    16-byte aligned rows). Inference only (no autograd). Needs a GPU of compute capability
    8.9+ (or the interpreter). UsageError for anything else, naming what is valid.
    """
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.dtype != FP8_DTYPE:
            got = (f"{tuple(t.shape)} {dtype_name(t.dtype)}" if isinstance(t, torch.Tensor)
                   else type(t).__name__)
            raise UsageError(f"fp8_matmul: {name} must be a 2-D float8_e4m3fn tensor, got "
                             f"{got} (quantize with tritonlab.kernels.quantize_fp8)")
    M, K = a.shape
    if b.shape[0] != K:
        raise UsageError(f"fp8_matmul: inner dimensions differ: a is {tuple(a.shape)} and b "
                         f"is {tuple(b.shape)}")
    N = b.shape[1]
    if out_dtype not in OUT_DTYPES:
        raise UsageError(f"fp8_matmul: out_dtype {out_dtype} is not supported; valid: "
                         + ", ".join(dtype_name(d) for d in OUT_DTYPES))
    _check_scale("scale_a", scale_a, M, (M, 1))
    _check_scale("scale_b", scale_b, N, (1, N))
    for name, t in (("a", a), ("b", b), ("scale_a", scale_a), ("scale_b", scale_b)):
        _check_device(t, name)
        if t.device != a.device:
            raise UsageError(f"fp8_matmul: {name} is on {t.device} but a is on {a.device}")
    check_no_grad("fp8_matmul", a=a, b=b, scale_a=scale_a, scale_b=scale_b)
    if out is None:
        out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    elif out.shape != (M, N) or out.dtype != out_dtype or out.device != a.device:
        raise UsageError(f"fp8_matmul: out must be ({M}, {N}) {dtype_name(out_dtype)} on "
                         f"{a.device}, got {tuple(out.shape)} {dtype_name(out.dtype)} on "
                         f"{out.device}")
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()
    problem = (descriptor_problem("a", a) or descriptor_problem("b", b)
               or descriptor_problem("out", out, row_major=True))
    if problem:
        raise UsageError(f"fp8_matmul reads its operands through tensor descriptors (TMA): "
                         f"{problem}. Store a row-major with K a multiple of 16 and b "
                         f"column-major (b = W.t() for a weight W (N, K) with K a multiple of "
                         f"16), as torch._scaled_mm requires")
    FP8_LAST.value = launch_persistent(a, b, out, scale_a=scale_a, scale_b=scale_b)
    return out
