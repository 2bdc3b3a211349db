"""rmsnorm_linear: y = RMSNorm(x) W^T with the norm folded into the GEMM (kernel:
:mod:`tritonlab.kernels.rmsnorm_linear`), against the eager chain it replaces
(:func:`tritonlab.reference.eager_rmsnorm_linear`) and its torch.compile. Inference only."""

from __future__ import annotations

import torch

from tritonlab.kernels._gemm import precision_for
from tritonlab.kernels._splitk import splitk_targets
from tritonlab.kernels.rmsnorm_linear import (
    RMSNORM_LINEAR_KERNEL,
    RMSNORM_LINEAR_LAST,
    rmsnorm_linear,
)
from tritonlab.ops.contract import (
    Impl,
    OpSpec,
    compile_baseline,
    reduction_tolerance,
    scaled,
    term_rss,
)
from tritonlab.ops.shapes import LLAMA3_8B_DIM, LLAMA3_8B_HIDDEN, mnk
from tritonlab.reference import EPS, eager_rmsnorm_linear, rms_norm

__all__ = ["RMSNormLinearOp", "SPEC", "rms_norm_chain_bytes"]


class RMSNormLinearOp(OpSpec):
    name = "rmsnorm_linear"
    description = "RMSNorm(x) W^T with the norm folded into the GEMM (inference)"
    dims = ("M", "N", "K")
    modes = ("infer",)
    presets = {
        # tiny: interpreter-sized and odd; M = 1 and 9 take the decode path, 33 and 64 the
        # tiled.
        "tiny": [mnk(1, 100, 96), mnk(9, 130, 75), mnk(33, 83, 131), mnk(64, 64, 64)],
        "quick": [mnk(1, 14336, 4096), mnk(16, 6144, 4096), mnk(2048, 14336, 4096)],
        # llm: the norm in front of Llama-3-8B's MLP up-projection (4096 -> 14336) and in
        # front of its fused q/k/v projection (4096 -> 4096 + 2 * 1024).
        "llm": [mnk(m, n, LLAMA3_8B_DIM) for n in (LLAMA3_8B_HIDDEN, 6144)
                for m in (1, 2, 4, 8, 16, 128, 512, 2048, 8192)],
    }

    def implementations(self):
        return (
            Impl("triton", "triton", _build_triton,
                 "one Triton kernel: sum of squares in the K loop, row scale in the epilogue; "
                 "split-K for M <= 16", config=lambda mode: RMSNORM_LINEAR_LAST()),
            Impl("torch", "baseline", _chain_builder(eager_rmsnorm_linear),
                 "eager chain: model.rms_norm then F.linear"),
            Impl("torch_compile", "baseline", _build_compiled,
                 "torch.compile of the eager chain (dynamic=False)", backends=("cuda",)),
        )

    def make_inputs(self, shape, dtype, device, seed):
        """x (M, K) ~ N(0, 1); weight (N, K) ~ N(0, 1/K) as model.init_params draws it; the
        norm weight near 1."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        m, n, k = shape["M"], shape["N"], shape["K"]
        x = torch.randn(m, k, generator=g)
        nw = 1.0 + 0.1 * torch.randn(k, generator=g)
        w = torch.randn(n, k, generator=g) * k**-0.5
        return {name: t.to(device=device, dtype=dtype)
                for name, t in (("x", x), ("norm_weight", nw), ("weight", w))}

    def reference(self, inputs, mode):
        x, nw, w = (inputs[k].double() for k in ("x", "norm_weight", "weight"))
        return (eager_rmsnorm_linear(x, nw, w, EPS),)

    def flops(self, shape, mode):
        """The GEMM (the norm's 3 M K are under 0.1% at model sizes)."""
        return 2 * shape["M"] * shape["N"] * shape["K"]

    def bytes(self, shape, dtype, mode):
        """Fused: x, the norm weight and W read once, y written once."""
        m, n, k = shape["M"], shape["N"], shape["K"]
        return _size(dtype) * (m * k + k + n * k + m * n)

    def unfused_bytes(self, shape, dtype, mode):
        """Eager chain: the RMSNorm ops (``rms_norm_chain_bytes``) write the normalised x,
        which the GEMM reads back with W before writing y."""
        m, n, k = shape["M"], shape["N"], shape["K"]
        return rms_norm_chain_bytes(m, k, dtype) + _size(dtype) * (m * k + n * k + m * n)

    def tolerance(self, dtype, shape, mode):
        """A K-long dot's bound, doubled for the rounding of x * norm_weight to the operand
        dtype (the eager chain rounds twice too: x * r and then * norm_weight)."""
        return (scaled(reduction_tolerance(dtype, shape["K"],
                                           tf32=precision_for(dtype, None) == "tf32"), 2),)

    def error_scale(self, inputs, mode):
        """The root-sum-square of the K products of the normalised x and W each element
        sums."""
        x, nw, w = (inputs[k].double() for k in ("x", "norm_weight", "weight"))
        return (term_rss(rms_norm(x, nw, EPS), w.t()),)

    def compile_targets(self, dtype):
        """The tiled kernel on a Llama-3-8B prefill (8192 tokens, 4096 -> 14336), and split-K
        on the fused q/k/v projection at batch 1 (4096 -> 6144: three K slices and the
        reduction with the RMS row scale on an H100)."""
        m, n, k = 8192, LLAMA3_8B_HIDDEN, LLAMA3_8B_DIM
        tiled = RMSNORM_LINEAR_KERNEL.compile_target("tiled", dtype, dict(
            M=m, N=n, K=k, eps=EPS, stride_xm=k, stride_xk=1, stride_nw=1, stride_wn=k,
            stride_wk=1, stride_bias=1, stride_om=n, stride_on=1, bias_ptr=None,
            HAS_BIAS=False, INPUT_PRECISION=precision_for(dtype, None), USE_INT64=False))
        return [tiled] + splitk_targets("decode", dtype, 1, 6144, k, rms=True)


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


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


def rms_norm_chain_bytes(m: int, k: int, dtype: torch.dtype) -> int:
    """DRAM traffic of the eager RMSNorm (:func:`tritonlab.reference.rms_norm`) on an (m, k)
    x, op by op (each reads its inputs and writes its output once; fp32 is 4 bytes, s the
    dtype's size): x.float() s+4 per element (skipped for fp32), pow(2) 4+4, mean 4 per
    element + 4 per row, + eps and rsqrt 4+4 per row each, xf * scale 4+4 per element + 4 per
    row, .to(dtype) 4+s (skipped for fp32), * norm_weight s+s per element + s per feature."""
    s = _size(dtype)
    mk = m * k
    convert = 0 if dtype == torch.float32 else (s + 4) * mk + (4 + s) * mk
    return (convert + 8 * mk + (4 * mk + 4 * m) + 8 * m + 8 * m + (8 * mk + 4 * m)
            + (2 * s * mk + s * k))


SPEC = RMSNormLinearOp()
