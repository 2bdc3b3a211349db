"""decode_matmul: the decode-sized GEMM y = x W^T (M = 1..16 token rows against an nn.Linear
weight (N, K)), measured on its own.

The kernel is the split-K kernel of :mod:`tritonlab.kernels._splitk` (``splitk_matmul``),
which ``matmul`` and the fused inference ops pick automatically for M <= 16. This op exists
so the sweep can put it next to the tiled GEMM forced on the same shapes (``triton_tiled``:
what small M got before) and torch. At these sizes the weight is almost all the traffic
(about M FLOP per byte in 16-bit), so the number to read is GB/s against the device's memory
bandwidth.
"""

from __future__ import annotations

import torch

from tritonlab.kernels._gemm import precision_for
from tritonlab.kernels._splitk import LAST, splitk_matmul, splitk_targets
from tritonlab.kernels.matmul import MATMUL_KERNEL, matmul
from tritonlab.ops.contract import Impl, OpSpec, reduction_tolerance, term_rss
from tritonlab.ops.shapes import LLAMA3_8B_PROJECTIONS, mnk

__all__ = ["DecodeMatmulOp", "SPEC"]

class DecodeMatmulOp(OpSpec):
    name = "decode_matmul"
    description = "decode-sized y = x W^T (M = 1..16), split-K over the SMs"
    dims = ("M", "N", "K")
    modes = ("infer",)
    presets = {
        # tiny: interpreter-sized and odd (K not a multiple of the K tile, N not of BLOCK_N).
        "tiny": [mnk(1, 130, 75), mnk(4, 96, 257), mnk(7, 64, 64), mnk(16, 200, 128)],
        "quick": [mnk(1, 4096, 4096), mnk(16, 4096, 4096), mnk(1, 14336, 4096),
                  mnk(1, 1024, 4096)],
        "llm": [mnk(m, n, k) for (k, n) in LLAMA3_8B_PROJECTIONS for m in (1, 2, 4, 8, 16)],
    }

    def implementations(self):
        return (
            Impl("triton", "triton",
                 _builder(lambda x, w, out: splitk_matmul(x, w.t(), out=out)),
                 "split-K Triton GEMM: S K-slices chosen from the SM count, then a reduction",
                 config=lambda mode: LAST()),
            Impl("triton_tiled", "triton",
                 _builder(lambda x, w, out: matmul(x, w.t(), out=out, path="tiled")),
                 "the tiled Triton GEMM forced at decode sizes (one program per output tile)",
                 config=lambda mode: MATMUL_KERNEL.last_config),
            Impl("torch", "baseline",
                 _builder(lambda x, w, out: torch.matmul(x, w.t(), out=out)),
                 "torch.matmul (cuBLAS GEMV/GEMM on CUDA)"),
        )

    def make_inputs(self, shape, dtype, device, seed):
        """x (M, K) ~ N(0, 1) and an nn.Linear weight (N, K) ~ N(0, 1/K): unit-scale
        outputs."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        m, n, k = shape["M"], shape["N"], shape["K"]
        x = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
        w = (torch.randn(n, k, generator=g) * k**-0.5).to(device=device, dtype=dtype)
        return {"x": x, "weight": w}

    def reference(self, inputs, mode):
        return (inputs["x"].double() @ inputs["weight"].double().t(),)

    def flops(self, shape, mode):
        return 2 * shape["M"] * shape["N"] * shape["K"]

    def bytes(self, shape, dtype, mode):
        """x and W read once, y written once (the split-K workspace, 2 * S * M * N * 4 bytes,
        is not compulsory traffic and is not counted)."""
        s = torch.empty((), dtype=dtype).element_size()
        m, n, k = shape["M"], shape["N"], shape["K"]
        return s * (m * k + n * k + m * n)

    def tolerance(self, dtype, shape, mode):
        return (reduction_tolerance(dtype, shape["K"], tf32=precision_for(dtype, None) == "tf32"),)

    def error_scale(self, inputs, mode):
        return (term_rss(inputs["x"].double(), inputs["weight"].double().t()),)

    def compile_targets(self, dtype):
        """Split-K on a batch-1 attention projection (4096 x 4096: 4 slices and the reduction
        on an H100) and on the MLP up-projection (14336 x 4096: one slice, epilogue in
        place). The tiled kernel is ``matmul``'s."""
        return (splitk_targets("splitk", dtype, 1, 4096, 4096, impls=("triton",))
                + splitk_targets("splitk_direct", dtype, 1, 14336, 4096, impls=("triton",)))


def _builder(fn):
    """An inference Impl.build from ``fn(x, weight, out)``."""
    def build(inputs, mode):
        x, w = inputs["x"], inputs["weight"]
        out = torch.empty((x.shape[0], w.shape[0]), dtype=x.dtype, device=x.device)

        def run():
            with torch.inference_mode():
                return (fn(x, w, out),)
        return run
    return build


SPEC = DecodeMatmulOp()
