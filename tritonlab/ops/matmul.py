"""matmul: C = A @ B, the forward GEMM (kernels: :mod:`tritonlab.kernels.matmul`, which
dispatches to the persistent TMA kernel of :mod:`tritonlab.kernels._persistent` on
Hopper-class GPUs), against torch.matmul; its ``triton`` impl is what ``matmul`` chooses.
Variant ``matmul_paths`` forces each main loop (``triton_persistent``, ``triton_tiled``), so
a sweep puts both paths side by side on the same shapes."""

from __future__ import annotations

import dataclasses

import torch

from tritonlab.kernels._gemm import precision_for
from tritonlab.kernels._persistent import descriptor_problem, persistent_target
from tritonlab.kernels._splitk import DECODE_MAX_M, splitk_targets
from tritonlab.kernels.matmul import MATMUL_KERNEL, MATMUL_LAST, matmul
from tritonlab.ops.contract import Impl, OpSpec, reduction_tolerance, term_rss
from tritonlab.ops.shapes import KERNELBENCH_GEMMS, LLAMA3_8B_PROJECTIONS, mnk

__all__ = ["MatmulOp", "SPEC", "SPECS", "PATHS_SPEC", "aligned_rows", "descriptor_ready"]

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
        # The square performance targets alone (>= 0.95x cuBLAS on a GPU).
        "square_big": [mnk(4096, 4096, 4096), mnk(8192, 8192, 8192)],
        "kernelbench": [mnk(m, n, k) for (m, n, k) in KERNELBENCH_GEMMS],
    }

    def __init__(self, name: str | None = None, *, paths: bool = False,
                 description: str | None = None):
        self.paths = paths
        super().__init__(name, description=description)

    def implementations(self):
        if self.paths:
            triton_impls = [
                Impl("triton_persistent", "triton", _builder("persistent"),
                     "the persistent TMA GEMM forced at every M (operands stored with "
                     "16-byte aligned rows when theirs are not)",
                     config=lambda mode: MATMUL_LAST()),
                Impl("triton_tiled", "triton", _builder("tiled"),
                     "the tiled GEMM (cp.async loads, one tile per program) forced at every M",
                     config=lambda mode: MATMUL_LAST()),
            ]
        else:
            triton_impls = [
                Impl("triton", "triton", _builder(None),
                     "matmul's own choice: split-K for M <= 16, the persistent TMA kernel on "
                     "Hopper-class GPUs when the operands allow it, else the tiled GEMM",
                     config=lambda mode: MATMUL_LAST()),
            ]
        return (*triton_impls,
                Impl("torch", "baseline", _build_torch, "torch.matmul (cuBLAS on CUDA)"))

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
        constants, as Triton's JIT specialises them), the persistent TMA kernel on the same
        problem (Hopper class only), and (``matmul``) the split-K decode path that
        M <= DECODE_MAX_M takes, at M = 16 with the same row-major B."""
        n = 4096
        tiled_impl, persistent_impl = (("triton_tiled", "triton_persistent") if self.paths
                                       else ("triton", "triton"))
        tiled = MATMUL_KERNEL.compile_target("fwd", dtype, dict(
            M=n, N=n, K=n, stride_am=n, stride_ak=1, stride_bk=n, stride_bn=1, stride_cm=n,
            stride_cn=1, INPUT_PRECISION=precision_for(dtype, None), USE_INT64=False),
            impls=(tiled_impl,))
        persistent = persistent_target("persistent", dtype, n, n, n, impls=(persistent_impl,))
        if self.paths:
            return [tiled, persistent]
        partial, *reduce = splitk_targets("decode", dtype, DECODE_MAX_M, n, n)
        row_major_b = dict(stride_bk=n, stride_bn=1, stride_b2k=n, stride_b2n=1)
        return [tiled, persistent,
                dataclasses.replace(partial, values={**partial.values, **row_major_b}), *reduce]


def aligned_rows(rows: int, cols: int, dtype: torch.dtype, device) -> torch.Tensor:
    """An uninitialised (rows, cols) row-major tensor whose row stride is padded to a
    multiple of 16 bytes (a view of a wider buffer), as a tensor descriptor needs."""
    per_16b = 16 // torch.empty((), dtype=dtype).element_size()
    wide = torch.empty((rows, -(-cols // per_16b) * per_16b), dtype=dtype, device=device)
    return wide[:, :cols]


def descriptor_ready(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when a tensor descriptor can read it, else a copy of its values in
    :func:`aligned_rows` (as a real activation stored with aligned rows would be)."""
    if descriptor_problem("t", t) is None:
        return t
    view = aligned_rows(*t.shape, t.dtype, t.device)
    view.copy_(t)
    return view


def _builder(path):
    """The Impl.build of matmul with ``path`` (None: its own choice); the persistent path
    gets operands and output with 16-byte aligned rows."""
    def build(inputs, mode):
        a, b = inputs["a"], inputs["b"]
        m, n = a.shape[0], b.shape[1]
        if path == "persistent":
            a, b = descriptor_ready(a), descriptor_ready(b)
            out = aligned_rows(m, n, a.dtype, a.device)
        else:
            out = torch.empty((m, n), dtype=a.dtype, device=a.device)
        return lambda: (matmul(a, b, out=out, path=path),)
    return build


def _build_torch(inputs, mode):
    a, b = inputs["a"], inputs["b"]
    out = torch.empty((a.shape[0], b.shape[1]), dtype=a.dtype, device=a.device)
    return lambda: (torch.matmul(a, b, out=out),)


SPEC = MatmulOp()
PATHS_SPEC = MatmulOp("matmul_paths", paths=True,
                      description="C = A @ B with each main loop forced: the persistent TMA "
                                  "GEMM and the tiled cp.async GEMM, side by side")
SPECS = [PATHS_SPEC]
