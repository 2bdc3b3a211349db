"""matmul: C = A @ B, the forward GEMM (kernel: :mod:`tritonlab.kernels.matmul`), against
torch.matmul."""

from __future__ import annotations

import dataclasses

import torch

from tritonlab.kernels._gemm import precision_for
from tritonlab.kernels._splitk import DECODE_MAX_M, splitk_targets
from tritonlab.kernels.matmul import MATMUL_KERNEL, MATMUL_LAST, matmul
from tritonlab.ops.contract import Impl, OpSpec, reduction_tolerance, term_rss
from tritonlab.ops.shapes import LLAMA3_8B_PROJECTIONS, mnk

__all__ = ["MatmulOp", "SPEC"]

class MatmulOp(OpSpec):
    name = "matmul"
    description = "C = A @ B (forward GEMM), fp32 accumulation, any layout"
    dims = ("M", "N", "K")
    modes = ("fwd", "infer")
    presets = {
        # tiny: interpreter-sized, odd on purpose so every edge mask is exercised.
        "tiny": [mnk(64, 64, 64), mnk(97, 83, 131), mnk(1, 130, 75), mnk(128, 192, 96)],
        "quick": [mnk(512, 512, 512), mnk(2048, 2048, 2048), mnk(4096, 4096, 4096),
                  mnk(16, 4096, 4096), mnk(4096, 14336, 4096)],
        "square": [mnk(s, s, s) for s in (256, 512, 1024, 2048, 3072, 4096, 6144, 8192)],
        # llm: Llama-3-8B projections (K -> N) at decode (M = 1..16) and prefill (2048..16384).
        "llm": [mnk(m, n, k) for m in (1, 16, 2048, 8192, 16384) for (k, n) in LLAMA3_8B_PROJECTIONS],
    }

    def implementations(self):
        return (
            Impl("triton", "triton", _build_triton,
                 "tiled Triton GEMM, grouped ordering, autotuned",
                 config=lambda mode: MATMUL_LAST()),
            Impl("torch", "baseline", _build_torch, "torch.matmul (cuBLAS on CUDA)"),
        )

    def make_inputs(self, shape, dtype, device, seed):
        """A (M, K) and B (K, N) with N(0, 1) entries scaled by K^-1/4 each, so C has
        unit-scale entries like the activations of a real layer."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        m, n, k = shape["M"], shape["N"], shape["K"]
        scale = k ** -0.25
        a = (torch.randn(m, k, generator=g) * scale).to(device=device, dtype=dtype)
        b = (torch.randn(k, n, generator=g) * scale).to(device=device, dtype=dtype)
        return {"a": a, "b": b}

    def reference(self, inputs, mode):
        return (inputs["a"].double() @ inputs["b"].double(),)

    def flops(self, shape, mode):
        return 2 * shape["M"] * shape["N"] * shape["K"]

    def bytes(self, shape, dtype, mode):
        s = torch.empty((), dtype=dtype).element_size()
        m, n, k = shape["M"], shape["N"], shape["K"]
        return s * (m * k + k * n + m * n)

    def tolerance(self, dtype, shape, mode):
        return (reduction_tolerance(dtype, shape["K"], tf32=precision_for(dtype, None) == "tf32"),)

    def error_scale(self, inputs, mode):
        return (term_rss(inputs["a"].double(), inputs["b"].double()),)

    def compile_targets(self, dtype):
        """The tiled kernel as launched on a row-major 4096^3 problem (unit strides become
        constants, as Triton's JIT specialises them), and the split-K decode path that
        M <= DECODE_MAX_M takes, at M = 16 with the same row-major B."""
        n = 4096
        tiled = MATMUL_KERNEL.compile_target("fwd", dtype, dict(
            M=n, N=n, K=n, stride_am=n, stride_ak=1, stride_bk=n, stride_bn=1, stride_cm=n,
            stride_cn=1, INPUT_PRECISION=precision_for(dtype, None), USE_INT64=False))
        partial, *reduce = splitk_targets("decode", dtype, DECODE_MAX_M, n, n)
        row_major_b = dict(stride_bk=n, stride_bn=1, stride_b2k=n, stride_b2n=1)
        return [tiled, dataclasses.replace(partial, values={**partial.values, **row_major_b}),
                *reduce]


def _build_triton(inputs, mode):
    a, b = inputs["a"], inputs["b"]
    out = torch.empty((a.shape[0], b.shape[1]), dtype=a.dtype, device=a.device)
    return lambda: (matmul(a, b, out=out),)

def _build_torch(inputs, mode):
    a, b = inputs["a"], inputs["b"]
    out = torch.empty((a.shape[0], b.shape[1]), dtype=a.dtype, device=a.device)
    return lambda: (torch.matmul(a, b, out=out),)


SPEC = MatmulOp()
