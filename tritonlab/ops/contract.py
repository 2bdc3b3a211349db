"""The op contract (DESIGN.md "The op contract").

Each module under :mod:`tritonlab.kernels` declares one :class:`OpSpec` named ``SPEC`` (or a
list named ``SPECS``). The registry, the checker, the sweep, the reports and the tests read
only this structure, so adding an op means adding one module and its tests.

How an implementation runs a mode
---------------------------------
``Impl.build(inputs, mode)`` receives the tensors from ``OpSpec.make_inputs`` and returns a
zero-argument callable ``run`` that performs exactly the work being measured and returns the
outputs as a tuple of tensors:

* ``fwd``: the training forward (autograd state is recorded); returns the forward outputs.
* ``bwd``: the forward is done inside ``build`` (not measured); ``run`` does the backward from
  the saved state and the op's output gradient and returns the gradients.
* ``fwd_bwd``: forward and backward; returns forward outputs followed by the gradients.
* ``infer``: the inference path under ``torch.inference_mode``; returns the outputs.

``OpSpec.reference(inputs, mode)`` returns the same tuple computed in float64, which is what
``tritonlab check`` and the sweep compare against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

MODES = ("fwd", "bwd", "fwd_bwd", "infer")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}

Shape = Mapping[str, int]
Inputs = dict[str, Any]
Outputs = tuple[torch.Tensor, ...]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Tolerance:
    """Bounds on the error against the float64 reference.

    ``rel_fro``: ||out - ref||_F / ||ref||_F. ``max_rel``: max|out - ref| / max|ref| (the
    largest elementwise error, normalised by the output's scale so that it stays meaningful
    where an element of ref is near zero).
    """

    rel_fro: float
    max_rel: float


UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}
TF32_ROUNDOFF = 2.0**-11


def reduction_tolerance(dtype: torch.dtype, k: int, *, tf32: bool = False) -> Tolerance:
    """Tolerance of a length-``k`` dot product accumulated in fp32, stored in ``dtype``.

    Two sources of error: rounding the result to ``dtype`` (one unit roundoff u_out) and the
    fp32 (or TF32-input) accumulation, whose error grows like sqrt(k) for random data. A
    factor 4 (Frobenius) and 8 (worst element) keeps the bound tight but free of flakes.
    """
    u_out = UNIT_ROUNDOFF[dtype]
    u_acc = TF32_ROUNDOFF if (dtype == torch.float32 and tf32) else UNIT_ROUNDOFF[torch.float32]
    base = u_out + u_acc * math.sqrt(max(k, 1))
    return Tolerance(rel_fro=4.0 * base, max_rel=8.0 * base)


@dataclass(frozen=True)
class Impl:
    """One implementation of an op.

    ``kind`` is ``"triton"`` for the lab's kernels and ``"baseline"`` for what they are
    compared with. ``build(inputs, mode) -> run`` is described in the module docstring.
    ``config`` (Triton impls) returns the launch/autotune config used by the last call, or
    None. ``backends`` lists where it can run (torch.compile, for instance, is not useful under
    the interpreter).
    """

    name: str
    kind: str
    build: Callable[[Inputs, str], Callable[[], Outputs]]
    description: str = ""
    modes: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    backends: tuple[str, ...] = ("cuda", "interpreter")
    config: Callable[[], dict | None] | None = None

    def supports(self, mode: str, dtype: torch.dtype, backend: str) -> str | None:
        """None if this impl runs (mode, dtype) on ``backend``, else the reason it does not."""
        if self.modes is not None and mode not in self.modes:
            return f"{self.name} has no {mode} mode (modes: {', '.join(self.modes)})"
        if self.dtypes is not None and dtype not in self.dtypes:
            return f"{self.name} does not support {dtype_name(dtype)}"
        if backend not in self.backends:
            return f"{self.name} does not run on the {backend} backend"
        return None


@dataclass(frozen=True)
class OpSpec:
    """What one op declares. See the module docstring for the meaning of the callables.

    ``presets`` maps a preset name (``tiny`` for the interpreter, ``quick``, ``square``,
    ``llm``) to a list of shapes; a shape maps each name of ``dims`` to an int.
    ``flops(shape, mode)`` and ``bytes(shape, dtype, mode)`` give the work and the compulsory
    DRAM traffic of a mode (each input read once, each output written once); fused ops also
    give ``unfused_bytes``, the traffic of the unfused baseline chain. ``tolerance(dtype,
    shape, mode)`` bounds the error against ``reference``. ``dtypes_interpreter`` lists the
    dtypes whose results the interpreter computes correctly (bf16 dots are wrong there).
    ``compile_targets(dtype)`` lists the kernels and launch configs that ``tritonlab inspect``
    compiles (see :mod:`tritonlab.static.driver`).
    """

    name: str
    description: str
    dims: tuple[str, ...]
    presets: Mapping[str, Sequence[Shape]]
    impls: tuple[Impl, ...]
    modes: tuple[str, ...]
    make_inputs: Callable[[Shape, torch.dtype, str, int], Inputs]
    reference: Callable[[Inputs, str], Outputs]
    flops: Callable[[Shape, str], int]
    bytes: Callable[[Shape, torch.dtype, str], int]
    tolerance: Callable[[torch.dtype, Shape, str], Tolerance]
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)
    dtypes_interpreter: tuple[torch.dtype, ...] = (torch.float16, torch.float32)
    unfused_bytes: Callable[[Shape, torch.dtype, str], int] | None = None
    compile_targets: Callable[[torch.dtype], list] | None = None
    tags: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.modes) - set(MODES)
        if unknown:
            raise ValueError(f"{self.name}: unknown modes {sorted(unknown)}; valid: {MODES}")
        names = [i.name for i in self.impls]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate impl names {names}")
        for preset, shapes in self.presets.items():
            for s in shapes:
                if tuple(s) != self.dims:
                    raise ValueError(f"{self.name}: preset {preset} shape {dict(s)} does not "
                                     f"have the dims {self.dims}")

    def impl(self, name: str) -> Impl:
        for i in self.impls:
            if i.name == name:
                return i
        raise KeyError(name)

    @property
    def triton_impls(self) -> tuple[Impl, ...]:
        return tuple(i for i in self.impls if i.kind == "triton")

    @property
    def baselines(self) -> tuple[Impl, ...]:
        return tuple(i for i in self.impls if i.kind == "baseline")

    def format_shape(self, shape: Shape) -> str:
        return "x".join(str(shape[d]) for d in self.dims)

    def summary(self) -> dict:
        """A JSON-ready description (what ``tritonlab list --json`` prints)."""
        return {
            "name": self.name,
            "description": self.description,
            "dims": list(self.dims),
            "modes": list(self.modes),
            "dtypes": [dtype_name(d) for d in self.dtypes],
            "dtypes_interpreter": [dtype_name(d) for d in self.dtypes_interpreter],
            "impls": [
                {"name": i.name, "kind": i.kind, "description": i.description,
                 "modes": list(i.modes or self.modes), "backends": list(i.backends)}
                for i in self.impls
            ],
            "presets": {p: [self.format_shape(s) for s in shapes]
                        for p, shapes in self.presets.items()},
            "fused": self.unfused_bytes is not None,
        }
