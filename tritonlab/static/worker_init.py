"""The start-up of a compile worker process: the initializer of the pool that
:mod:`tritonlab.static.workers` compiles in.

A worker compiles kernels, so every ``@triton.jit`` function it sees must be a
``JITFunction``, never the interpreter's ``InterpretedFunction``. Triton decides which when a
function is decorated: its own functions (``tl.cdiv``, ...) when Triton is imported, reading
``TRITON_INTERPRET``; the lab's when their modules are imported, reading Triton's interpret
knob (which follows that variable unless set explicitly). A spawned worker inherits the
parent's environment, where the variable is set under the interpreter backend, and the package
:mod:`tritonlab.static`, imported in the worker before this initializer runs, sets it too when
it selects the backend on a machine without a GPU. So the worker drops the variable, imports
Triton, and sets the knob off for good (an explicit knob wins over the variable) before any
kernel module is imported. This module imports nothing else, so that Triton is first imported
here.
"""

from __future__ import annotations

import os


def init_worker() -> None:
    """Make this process one that compiles (see the module docstring)."""
    os.environ.pop("TRITON_INTERPRET", None)
    # Imported here, not at the top, because the line above must come first (see the module
    # docstring).
    import triton

    triton.knobs.runtime.interpret = False
