"""Backend selection: ``cuda`` (kernels compiled for the GPU) or ``interpreter`` (Triton's
interpreter on torch CPU tensors).

Triton reads ``TRITON_INTERPRET`` when a kernel is *decorated*, so the choice must be made
before any module of :mod:`tritonlab.kernels` is imported. :func:`select` does that; the
kernels package calls :func:`current` on import, which selects automatically if nobody did.
Changing the backend after kernels were decorated is refused instead of silently ignored.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from tritonlab.errors import UsageError

BACKENDS = ("cuda", "interpreter")
ENV_VAR = "TRITONLAB_BACKEND"


@dataclass(frozen=True)
class Backend:
    name: str  # "cuda" | "interpreter"
    device: str  # torch device the kernels take: "cuda" or "cpu"
    reason: str  # why this backend was chosen, for manifests and tables

    @property
    def is_gpu(self) -> bool:
        return self.name == "cuda"

    @property
    def label(self) -> str:
        """A short label that every table and report prints beside its numbers."""
        if self.is_gpu:
            return "cuda"
        return "interpreter (CPU; timings are not GPU performance)"


_selected: Backend | None = None


def _cuda_available() -> bool:
    # The interpreter variable may have been exported by the user: respect a GPU anyway only
    # when asked for explicitly (select("cuda")).
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return False
    return bool(torch.cuda.is_available())


def _kernels_imported() -> bool:
    return any(m.startswith("tritonlab.kernels.") for m in sys.modules)


def select(name: str | None = None) -> Backend:
    """Choose the backend: ``name`` if given, else ``$TRITONLAB_BACKEND``, else automatic
    (``cuda`` when torch sees a GPU and ``TRITON_INTERPRET`` is not set, else ``interpreter``).

    Raises :class:`UsageError` for an unknown name, for ``cuda`` without a GPU, and for a
    change of backend after kernels were already decorated with the other one.
    """
    global _selected
    requested = name or os.environ.get(ENV_VAR) or None
    if requested is not None and requested not in BACKENDS:
        raise UsageError(f"unknown backend {requested!r}; choose one of: {', '.join(BACKENDS)}")
    if requested is None:
        if os.environ.get("TRITON_INTERPRET") == "1":
            chosen = Backend("interpreter", "cpu", "TRITON_INTERPRET=1 is set")
        elif _cuda_available():
            chosen = Backend("cuda", "cuda", "torch sees a CUDA GPU")
        else:
            chosen = Backend("interpreter", "cpu", "no CUDA GPU visible to torch")
    elif requested == "cuda":
        if not _cuda_available():
            raise UsageError("backend 'cuda' requested but torch sees no CUDA GPU; "
                             "use --backend interpreter")
        chosen = Backend("cuda", "cuda", "requested")
    else:
        chosen = Backend("interpreter", "cpu", "requested")

    if _selected is not None and _selected.name != chosen.name and _kernels_imported():
        raise UsageError(f"backend is already {_selected.name!r} and kernels are compiled for "
                         f"it; start a new process to use {chosen.name!r}")
    if chosen.name == "interpreter":
        os.environ["TRITON_INTERPRET"] = "1"
    elif os.environ.get("TRITON_INTERPRET") == "1":
        del os.environ["TRITON_INTERPRET"]
    _selected = chosen
    return chosen


def current() -> Backend:
    """The selected backend, selecting automatically on first use."""
    return _selected if _selected is not None else select()
