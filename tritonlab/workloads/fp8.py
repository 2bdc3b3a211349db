"""The fp8 inference path the serving workloads share (``dtype="fp8"``): weights quantised
once to e4m3 with one scale per output channel, activations quantised per token on every
call, the GEMM with the scales in its epilogue (docs/matmul.md, "fp8").

``impl="triton"``: the lab's ``quantize_fp8`` and ``fp8_matmul`` (persistent TMA kernel);
``impl="torch"``: the same quantisation in torch and ``torch._scaled_mm`` (fast
accumulation, as the kernel's on sm_90). Both produce identical codes, so they differ only in
accumulation order.
"""

from __future__ import annotations

import torch

from tritonlab import backend
from tritonlab.kernels.fp8_matmul import fp8_matmul, quantize_fp8
from tritonlab.ops.fp8_matmul import quantize_reference

__all__ = ["FP8", "Fp8Weight", "compute_dtype", "quantise_weight", "fp8_linear"]

# The dtype name the workloads take for this path.
FP8 = "fp8"


def compute_dtype() -> torch.dtype:
    """The dtype of everything around the fp8 GEMMs (norms, attention, KV cache, residuals)
    and the serving workloads' default: bfloat16 on a GPU, float16 under the interpreter,
    whose bf16 dots are wrong. One definition, so that the workloads and the formulas that
    size them before they are built (the contrast's bytes and footprint) agree."""
    return torch.bfloat16 if backend.current().is_gpu else torch.float16


# (W_q^T (in, out) column-major e4m3, scales (1, out) float32): fp8_matmul's B operand.
Fp8Weight = tuple[torch.Tensor, torch.Tensor]


def quantise_weight(w: torch.Tensor) -> Fp8Weight:
    """An nn.Linear weight (out, in) as fp8_matmul's B operand, one scale per output
    channel (per row of w). Done once at load, with the torch quantiser (its codes are the
    kernel's, bit for bit), for either impl."""
    wq, sw = quantize_reference(w)
    return wq.t(), sw.reshape(1, -1)


def fp8_linear(x: torch.Tensor, weight: Fp8Weight, impl: str) -> torch.Tensor:
    """x (tokens, in) W^T in x's dtype, with x quantised per token and W given by
    :func:`quantise_weight`."""
    b, sb = weight
    if impl == "triton":
        a, sa = quantize_fp8(x)
        return fp8_matmul(a, b, sa, sb, x.dtype)
    a, sa = quantize_reference(x)
    return torch._scaled_mm(a, b, sa, sb, out_dtype=x.dtype, use_fast_accum=True)
