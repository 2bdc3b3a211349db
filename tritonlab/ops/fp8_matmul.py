"""fp8_matmul: out = (s_a * A) @ (s_b * B) with e4m3 A and B, the fp8 inference GEMM (kernels:
:mod:`tritonlab.kernels.fp8_matmul`), against ``torch._scaled_mm``.

The op's dtype is the *output* dtype (bfloat16, float16, float32); the operands are always
float8_e4m3fn. Inputs are what an fp8 inference layer holds: activations x (M, K) in the
output dtype, quantised per token (A, s_a of shape (M, 1)), and a weight W (N, K) quantised
once per output channel (B = W_q^T, column-major, s_b of shape (1, N)). Variant
``fp8_matmul_tensorwise`` uses one scale per tensor instead.

Impls: ``triton`` times the GEMM alone on quantised operands; ``triton_quant`` (row-wise
variant) also quantises x on every call, which is what an fp8 layer pays per forward;
``torch`` is ``torch._scaled_mm``, cuBLASLt's fp8 GEMM with fast accumulation (the same
accumulation as the kernel's on sm_90); ``torch_dequant`` dequantises to the output dtype
and runs torch.matmul (what a GPU without fp8 does). The Triton impls get operands and
output stored with 16-byte aligned rows (copied at build time when a shape's rows are not,
e.g. K = 1), since the kernel reads only what a tensor descriptor can.

The reference is float64 arithmetic on the dequantised operands (s_a A and s_b B), so the
tolerance covers the GEMM's accumulation and output rounding, not the quantisation error
(which belongs to the model, not to the kernel).
"""

from __future__ import annotations

import math

import torch

from tritonlab import backend
from tritonlab.kernels._persistent import persistent_target
from tritonlab.kernels.fp8_matmul import (
    AMAX_FLOOR,
    FP8_DTYPE,
    FP8_LAST,
    FP8_MAX,
    MIN_CAPABILITY,
    QUANT_BLOCK_K,
    QUANT_BLOCK_M,
    _quantize_rows_kernel,
    fp8_matmul,
    quantize_fp8,
)
from tritonlab.kernels.tuning import CompileTarget
from tritonlab.ops.contract import (
    UNIT_ROUNDOFF,
    Impl,
    OpSpec,
    Tolerance,
    term_rss,
)
from tritonlab.ops.matmul import aligned_rows, descriptor_ready
from tritonlab.ops.shapes import LLAMA3_8B_PROJECTIONS, mnk

__all__ = ["Fp8MatmulOp", "SPECS", "quantize_reference"]

# Roundoff of the fp8 accumulation on sm_90: wgmma sums fp8 products at a reduced internal
# precision (about 14 mantissa bits reported; Triton's default max_num_imprecise_acc for fp8 on
# capability 9.0, and cuBLAS's use_fast_accum) instead of fp32. An assumption from published
# reports, not measured here; the interpreter accumulates in fp32.
FP8_FAST_ACC_ROUNDOFF = 2.0**-13


def quantize_reference(x: torch.Tensor, per_row: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The quantiser's contract in torch: (q, scale) with scale = amax / 448 (per row, shape
    (M, 1), or per tensor, shape ()) and q = e4m3(x * (448 / amax)), the same fp32
    operations as ``_quantize_rows_kernel`` (which must match it bit for bit)."""
    xf = x.float()
    amax = (xf.abs().amax(dim=1, keepdim=True) if per_row else xf.abs().amax()).clamp_min(
        AMAX_FLOOR)
    # torch.full_like(amax, 448) / amax, not 448 / amax: torch computes a scalar divided by a
    # tensor as reciprocal-then-multiply, which is off by an ulp for some amax.
    q = (xf * (torch.full_like(amax, FP8_MAX) / amax)).to(FP8_DTYPE)
    return q, amax / FP8_MAX


class Fp8MatmulOp(OpSpec):
    dims = ("M", "N", "K")
    modes = ("infer",)
    presets = {
        # tiny: interpreter-sized; M and N no multiple of the 64 x 64 interpreter tile and
        # tile counts (4, 12) no multiple of its 3 programs; K a multiple of 16 (fp8 rows
        # must be 16-byte multiples for TMA).
        "tiny": [mnk(64, 64, 64), mnk(97, 88, 144), mnk(130, 200, 96), mnk(5, 40, 48)],
        "quick": [mnk(2048, 2048, 2048), mnk(8192, 8192, 4096), mnk(16, 4096, 4096),
                  mnk(4096, 14336, 4096)],
        "square_big": [mnk(4096, 4096, 4096), mnk(8192, 8192, 8192), mnk(8192, 8192, 4096)],
        "llm": [mnk(m, n, k) for m in (1, 16, 2048, 8192, 16384)
                for (k, n) in LLAMA3_8B_PROJECTIONS],
    }

    def __init__(self, name: str, *, per_row: bool, description: str):
        self.per_row = per_row
        super().__init__(name, description=description)

    def implementations(self):
        impls = [
            Impl("triton", "triton", _build(_run_triton, aligned=True),
                 "persistent TMA fp8 GEMM, scales applied in the epilogue",
                 config=lambda mode: FP8_LAST()),
        ]
        if self.per_row:
            impls.append(Impl("triton_quant", "triton", _build(_run_triton_quant, aligned=True),
                              "per-token quantisation of x (Triton kernel) + the fp8 GEMM, "
                              "timed together: an fp8 layer's cost per call",
                              config=lambda mode: FP8_LAST()))
        impls += [
            Impl("torch", "baseline", _build(_run_scaled_mm),
                 "torch._scaled_mm (cuBLASLt fp8, fast accumulation)"),
            Impl("torch_dequant", "baseline", _build(_run_dequant),
                 "dequantise to the output dtype, then torch.matmul"),
        ]
        return impls

    def make_inputs(self, shape, dtype, device, seed):
        """x (M, K) ~ N(0, 1) in ``dtype`` and an nn.Linear weight (N, K) ~ N(0, 1/K),
        quantised by :func:`quantize_reference` (per row, or per tensor for the tensorwise
        variant): a = x_q, b = W_q^T (column-major), scale_a, scale_b (1, N) or ()."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        m, n, k = shape["M"], shape["N"], shape["K"]
        x = torch.randn(m, k, generator=g).to(dtype)
        w = (torch.randn(n, k, generator=g) * k**-0.5).to(dtype)
        a, sa = quantize_reference(x, self.per_row)
        wq, sw = quantize_reference(w, self.per_row)
        sb = sw.reshape(1, n) if self.per_row else sw
        return {"x": x.to(device), "a": a.to(device), "b": wq.to(device).t(),
                "scale_a": sa.to(device), "scale_b": sb.to(device), "out_dtype": dtype}

    def _dequantised(self, inputs):
        a = inputs["a"].double() * inputs["scale_a"].double()
        b = inputs["b"].double() * inputs["scale_b"].double()
        return a, b

    def reference(self, inputs, mode):
        a, b = self._dequantised(inputs)
        return (a @ b,)

    def error_scale(self, inputs, mode):
        return (term_rss(*self._dequantised(inputs)),)

    def flops(self, shape, mode):
        return 2 * shape["M"] * shape["N"] * shape["K"]

    def bytes(self, shape, dtype, mode):
        """fp8 A and B read once, fp32 scales read once, C written once in ``dtype`` (the
        ``triton_quant`` impl's extra x read and A write are not counted: its time shows
        their cost)."""
        m, n, k = shape["M"], shape["N"], shape["K"]
        scales = 4 * (m + n) if self.per_row else 8
        return m * k + k * n + scales + dtype.itemsize * m * n

    def tolerance(self, dtype, shape, mode):
        """Output rounding plus fp32 accumulation (interpreter) or the fp8 tensor core's
        fast accumulation (CUDA, see FP8_FAST_ACC_ROUNDOFF), growing with sqrt(K)."""
        u_acc = (FP8_FAST_ACC_ROUNDOFF if backend.current().is_gpu
                 else UNIT_ROUNDOFF[torch.float32])
        base = UNIT_ROUNDOFF[dtype] + u_acc * math.sqrt(max(shape["K"], 1))
        return (Tolerance(rel_fro=4.0 * base, max_rel=8.0 * base),)

    def shape_error(self, shape):
        if shape["K"] % 16:
            return (f"K = {shape['K']} is no multiple of 16: fp8 rows of K bytes must be "
                    f"16-byte multiples for the tensor descriptors (and torch._scaled_mm)")
        return None

    def compile_targets(self, dtype):
        """The persistent kernel with e4m3 operands on the 8192 x 8192 x 4096 target problem
        (A row-major, B = W^T column-major as torch._scaled_mm takes it), and the quantiser
        on an 8192 x 4096 activation; neither below sm_89, which has no fp8."""
        scales = ("row", "col") if self.per_row else ("tensor", "tensor")
        targets = [persistent_target("fwd", FP8_DTYPE, 8192, 8192, 4096, b_col_major=True,
                                     out_dtype=dtype, scales=scales,
                                     runs_on=lambda cap: tuple(cap) >= MIN_CAPABILITY)]
        if self.per_row:
            targets.append(CompileTarget(
                "quantize", _quantize_rows_kernel, dtype,
                dict(M=8192, K=4096, stride_xm=4096, stride_xk=1, stride_qm=4096, stride_qk=1,
                     stride_s=1, q_ptr=FP8_DTYPE, s_ptr=torch.float32, FP8_MAX=FP8_MAX,
                     AMAX_FLOOR=AMAX_FLOOR, BLOCK_M=QUANT_BLOCK_M, BLOCK_K=QUANT_BLOCK_K),
                configs=lambda cap: [{"num_warps": 4}] if tuple(cap) >= MIN_CAPABILITY else [],
                impls=("triton_quant",)))
        return targets


def _run_triton(inputs, out):
    return fp8_matmul(inputs["a"], inputs["b"], inputs["scale_a"], inputs["scale_b"],
                      inputs["out_dtype"], out=out)


def _run_triton_quant(inputs, out):
    a, sa = quantize_fp8(inputs["x"], q=inputs["_q"], scale=inputs["_s"])
    return fp8_matmul(a, inputs["b"], sa, inputs["scale_b"], inputs["out_dtype"], out=out)


def _run_scaled_mm(inputs, out):
    return torch._scaled_mm(inputs["a"], inputs["b"], inputs["scale_a"], inputs["scale_b"],
                            out_dtype=inputs["out_dtype"], use_fast_accum=True)


def _run_dequant(inputs, out):
    dt = inputs["out_dtype"]
    a = inputs["a"].to(dt) * inputs["scale_a"].to(dt)
    b = inputs["b"].to(dt) * inputs["scale_b"].to(dt)
    return torch.matmul(a, b, out=out)


def _build(fn, aligned: bool = False):
    """An inference Impl.build from ``fn(inputs, out)``; out and the quantiser's buffers are
    allocated here, outside the timed call; ``aligned``: operands, buffers and output with
    16-byte aligned rows (B column-major), as the Triton kernels need."""
    def build(inputs, mode):
        m, k = inputs["a"].shape
        n = inputs["b"].shape[1]
        dev, out_dtype = inputs["a"].device, inputs["out_dtype"]
        if aligned:
            ins = {**inputs, "a": descriptor_ready(inputs["a"]),
                   "b": descriptor_ready(inputs["b"].t()).t(),
                   "_q": aligned_rows(m, k, FP8_DTYPE, dev)}
            out = aligned_rows(m, n, out_dtype, dev)
        else:
            ins = {**inputs, "_q": torch.empty((m, k), dtype=FP8_DTYPE, device=dev)}
            out = torch.empty((m, n), dtype=out_dtype, device=dev)
        ins["_s"] = torch.empty((m, 1), dtype=torch.float32, device=dev)

        def run():
            with torch.inference_mode():
                return (fn(ins, out),)
        return run
    return build


SPECS = [
    Fp8MatmulOp("fp8_matmul", per_row=True,
                description="fp8 e4m3 GEMM, per-token x per-channel scales (torch._scaled_mm "
                            "contract), persistent TMA kernel"),
    Fp8MatmulOp("fp8_matmul_tensorwise", per_row=False,
                description="fp8 e4m3 GEMM with one scale per tensor"),
]
