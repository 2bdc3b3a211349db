"""The lab's kernels, one module per op. Importing this package selects the backend first
(Triton reads TRITON_INTERPRET when a kernel is decorated)."""

from tritonlab.harness import backend as _backend

_backend.current()

from tritonlab.kernels.matmul import matmul  # noqa: E402

__all__ = ["matmul"]
