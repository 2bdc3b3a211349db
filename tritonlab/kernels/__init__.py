"""The lab's kernels: ``@triton.jit`` kernels, their launchers and autograd Functions, one
module per kernel family. Only torch, triton, :mod:`tritonlab.backend` and
:mod:`tritonlab.errors` are imported here; what an op declares about them (presets,
references, formulas, baselines) lives in :mod:`tritonlab.ops`.

Importing this package selects the backend first: Triton reads ``TRITON_INTERPRET`` when a
kernel is decorated, so :func:`tritonlab.backend.current` must run before any kernel module
is imported, which is why the imports below follow it.
"""

from tritonlab import backend as _backend

_backend.current()

from tritonlab.kernels._splitk import splitk_matmul  # noqa: E402
from tritonlab.kernels.attention import attention  # noqa: E402
from tritonlab.kernels.decode_attention import decode_attention  # noqa: E402
from tritonlab.kernels.fp8_matmul import fp8_matmul, quantize_fp8  # noqa: E402
from tritonlab.kernels.gated_mlp import gated_mlp  # noqa: E402
from tritonlab.kernels.linear import Linear, linear  # noqa: E402
from tritonlab.kernels.matmul import matmul  # noqa: E402
from tritonlab.kernels.rmsnorm_linear import rmsnorm_linear  # noqa: E402

__all__ = ["Linear", "linear", "matmul", "splitk_matmul", "gated_mlp", "rmsnorm_linear",
           "attention", "decode_attention", "fp8_matmul", "quantize_fp8"]
