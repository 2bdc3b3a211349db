"""The op contract (docs/design.md, "The op contract").

Each module under :mod:`tritonlab.ops` declares one :class:`OpSpec` instance named ``SPEC``
(or a list named ``SPECS``). The registry, the checker, the sweep, the reports and the tests
read only this interface, so adding an op means adding one module and its tests.

An op is a subclass of :class:`OpSpec`. Its class attributes say what it is: ``name``,
``description``, ``dims`` (dimension names, e.g. ``("M", "N", "K")``), ``modes``, ``presets``
(preset name -> shapes, each a dict over ``dims``), ``dtypes``, ``dtypes_interpreter`` (the
dtypes the interpreter computes correctly; its bf16 dots are wrong) and ``tags``. Variants of
one op are instances with constructor arguments (``LinearOp("linear_relu",
activation="relu", ...)``). Its methods are the formulas:

* ``implementations()``: the :class:`Impl` tuple (the Triton kernels and the baselines),
  stored as ``self.impls`` and validated when the op is constructed.
* ``make_inputs(shape, dtype, device, seed)``: fresh random inputs of realistic scale.
* ``reference(inputs, mode)``: the outputs of ``mode`` computed in float64.
* ``flops(shape, mode)`` and ``bytes(shape, dtype, mode)``: the work and the compulsory DRAM
  traffic of a mode (each input read once, each output written once).
* ``unfused_bytes(shape, dtype, mode)``: the traffic of the unfused baseline chain, for fused
  ops; None otherwise (``fused`` tells which an op is).
* ``tolerance(dtype, shape, mode)``: the :class:`Tolerance` of each output against
  ``reference`` (a tuple aligned with the outputs; one Tolerance applies to all), each from
  that output's own reduction length.
* ``error_scale(inputs, mode)``: per output, the magnitude its error is measured against
  (see :class:`Tolerance`); None for the output's own magnitude.
* ``output_dtypes(dtype, mode)``: the dtype of each output (default: the input dtype).
* ``compile_targets(dtype)``: the kernels and launches ``tritonlab inspect`` compiles
  (:class:`tritonlab.kernels.tuning.CompileTarget`); empty by default.
* ``shape_error(shape)``: why a shape the user typed is invalid for the op, or None.

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
``tritonlab check`` and the sweep compare against. ``Impl.config(mode)`` (Triton impls)
returns the launch/autotune config the last run of ``mode`` used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
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
    """Bounds on one output's error against the float64 reference.

    ``rel_fro``: ||out - ref||_F / ||s||_F. ``max_rel``: max|out - ref| / max(s) (the
    largest elementwise error, normalised by the output's scale so that it stays meaningful
    where an element of ref is near zero). ``s`` is elementwise max(|ref|, scale), where
    ``scale`` is what :meth:`OpSpec.error_scale` gives for the output (typically
    :func:`term_rss`): a sum whose terms cancel is small, but its rounding error is as large
    as that of a sum of the same terms that do not, so dividing by |ref| alone would fail
    correct code wherever a reduction happens to land near zero.
    """

    rel_fro: float
    max_rel: float


UNIT_ROUNDOFF = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8, torch.float32: 2.0**-24}
TF32_ROUNDOFF = 2.0**-11


def reduction_tolerance(dtype: torch.dtype, k: int, *, tf32: bool = False) -> Tolerance:
    """Tolerance of a length-``k`` dot product accumulated in fp32, stored in ``dtype``,
    relative to the scale of its terms (:func:`term_rss`, or |ref| where that is larger).

    Two sources of error: rounding the result to ``dtype`` (one unit roundoff u_out) and the
    fp32 (or TF32-input) accumulation, whose error grows like sqrt(k) for random data. A
    factor 4 (Frobenius) and 8 (worst element) keeps the bound tight but free of flakes.
    """
    u_out = UNIT_ROUNDOFF[dtype]
    u_acc = TF32_ROUNDOFF if (dtype == torch.float32 and tf32) else UNIT_ROUNDOFF[torch.float32]
    base = u_out + u_acc * math.sqrt(max(k, 1))
    return Tolerance(rel_fro=4.0 * base, max_rel=8.0 * base)


def term_rss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise sqrt(sum_k a[i, k]^2 b[k, j]^2): the root-sum-square of the products that
    each element of ``a @ b`` sums. It is the size that sum has when the products' signs are
    random, and the size its accumulated rounding error scales with whatever the signs (a
    sum that cancels to near zero has the same rounding error), so it is the scale
    :func:`reduction_tolerance` is measured against."""
    return ((a * a) @ (b * b)).sqrt()


def scaled(tol: Tolerance, factor: float) -> Tolerance:
    """``tol`` with both bounds multiplied by ``factor``."""
    return Tolerance(rel_fro=factor * tol.rel_fro, max_rel=factor * tol.max_rel)


@dataclass(frozen=True)
class Impl:
    """One implementation of an op.

    ``kind`` is ``"triton"`` for the lab's kernels and ``"baseline"`` for what they are
    compared with. ``build(inputs, mode) -> run`` is described in the module docstring.
    ``config(mode)`` (Triton impls) returns the launch/autotune config used by the last run
    of ``mode``, or None. ``backends`` lists where it can run (torch.compile, for instance,
    is not useful under the interpreter).
    """

    name: str
    kind: str
    build: Callable[[Inputs, str], Callable[[], Outputs]]
    description: str = ""
    modes: tuple[str, ...] | None = None
    dtypes: tuple[torch.dtype, ...] | None = None
    backends: tuple[str, ...] = ("cuda", "interpreter")
    config: Callable[[str], dict | None] | None = None

    def supports(self, mode: str, dtype: torch.dtype, backend: str) -> str | None:
        """None if this impl runs (mode, dtype) on ``backend``, else the reason it does not."""
        if self.modes is not None and mode not in self.modes:
            return f"{self.name} has no {mode} mode (modes: {', '.join(self.modes)})"
        if self.dtypes is not None and dtype not in self.dtypes:
            return f"{self.name} does not support {dtype_name(dtype)}"
        if backend not in self.backends:
            return f"{self.name} does not run on the {backend} backend"
        return None


def compile_baseline(fn: Callable) -> Callable:
    """``torch.compile(fn, dynamic=False)`` for a baseline impl: specialised per shape, as a
    user benchmarking fixed shapes would. Every sweep point is one more specialisation of the
    same code object, and past dynamo's recompile limit (8 by default) torch.compile silently
    runs eager, so the limits are raised first."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 1024))
    if hasattr(cfg, "accumulated_recompile_limit"):
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 4096)
    return torch.compile(fn, dynamic=False)


def autograd_builder(forward: Callable[..., torch.Tensor], names: Sequence[str]
                     ) -> Callable[[Inputs, str], Callable[[], Outputs]]:
    """An ``Impl.build`` for a differentiable op from ``forward(*operands) -> y``, where the
    operands are ``inputs[name]`` for each of ``names`` (None for a name the inputs lack)
    and ``inputs["grad"]`` is the output gradient. fwd returns (y,); bwd runs the backward
    of a forward done at build time (retain_graph, so run() repeats); fwd_bwd returns y and
    the gradients; infer runs the forward under torch.inference_mode. The training modes use
    autograd leaves sharing the inputs' storage (and strides)."""
    def build(inputs: Inputs, mode: str) -> Callable[[], Outputs]:
        ops = [inputs.get(name) for name in names]
        if mode != "infer":
            ops = [t.detach().requires_grad_() if t is not None else None for t in ops]
        leaves = tuple(t for t in ops if t is not None)
        grad = inputs["grad"]
        if mode == "infer":
            def run():
                with torch.inference_mode():
                    return (forward(*ops),)
        elif mode == "fwd":
            def run():
                return (forward(*ops),)
        elif mode == "bwd":
            y = forward(*ops)

            def run():
                return torch.autograd.grad(y, leaves, grad, retain_graph=True)
        else:
            def run():
                y = forward(*ops)
                return (y, *torch.autograd.grad(y, leaves, grad))
        return run
    return build


class OpSpec:
    """What one op declares; see the module docstring for the attributes and the methods.

    A subclass sets the class attributes and defines the formulas. ``OpSpec(name,
    description=...)`` overrides the class's name and description, for variants.
    """

    name: str
    description: str
    dims: tuple[str, ...]
    modes: tuple[str, ...]
    presets: Mapping[str, Sequence[Shape]]
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)
    dtypes_interpreter: tuple[torch.dtype, ...] = (torch.float16, torch.float32)
    tags: Mapping[str, str] = MappingProxyType({})

    def __init__(self, name: str | None = None, *, description: str | None = None) -> None:
        if name is not None:
            self.name = name
        if description is not None:
            self.description = description
        self.impls: tuple[Impl, ...] = tuple(self.implementations())
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

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # ----------------------------------------------------------------- what an op defines

    def implementations(self) -> Sequence[Impl]:
        raise NotImplementedError(f"{type(self).__name__} defines no implementations()")

    def make_inputs(self, shape: Shape, dtype: torch.dtype, device: str, seed: int) -> Inputs:
        raise NotImplementedError(f"{type(self).__name__} defines no make_inputs()")

    def reference(self, inputs: Inputs, mode: str) -> Outputs:
        raise NotImplementedError(f"{type(self).__name__} defines no reference()")

    def flops(self, shape: Shape, mode: str) -> int:
        raise NotImplementedError(f"{type(self).__name__} defines no flops()")

    def bytes(self, shape: Shape, dtype: torch.dtype, mode: str) -> int:
        raise NotImplementedError(f"{type(self).__name__} defines no bytes()")

    def unfused_bytes(self, shape: Shape, dtype: torch.dtype, mode: str) -> int | None:
        """The unfused baseline chain's traffic; None for an op that fuses nothing."""
        return None

    def tolerance(self, dtype: torch.dtype, shape: Shape,
                  mode: str) -> Tolerance | tuple[Tolerance, ...]:
        """One :class:`Tolerance` per output of ``mode``, in the order ``reference`` returns
        them, each from that output's own reduction length; a single Tolerance applies to
        every output."""
        raise NotImplementedError(f"{type(self).__name__} defines no tolerance()")

    def error_scale(self, inputs: Inputs, mode: str) -> tuple[torch.Tensor | None, ...] | None:
        """Per output of ``mode``, a float64 tensor (broadcastable to the output's shape) of
        the magnitude its error is measured against, from the same ``inputs`` as
        ``reference``: the root-sum-square of the terms each element sums
        (:func:`term_rss`), carried through any elementwise function that follows. The
        checker takes the elementwise max with |ref|. None, for the whole tuple or one
        output: |ref| alone (right for outputs whose reductions cannot cancel)."""
        return None

    def output_dtypes(self, dtype: torch.dtype,
                      mode: str) -> torch.dtype | tuple[torch.dtype, ...]:
        """The dtype of each output of ``mode`` for inputs of ``dtype`` (a single dtype
        applies to every output): the input dtype unless an op declares otherwise. The
        checker fails an output of another dtype."""
        return dtype

    def compile_targets(self, dtype: torch.dtype) -> list:
        """What ``tritonlab inspect`` compiles (see :mod:`tritonlab.static`)."""
        return []

    def shape_error(self, shape: Shape) -> str | None:
        """Why ``shape`` is not a valid problem for this op (e.g. heads that do not divide),
        or None. The CLI refuses such a shape with exit 2 before anything runs."""
        return None

    # ------------------------------------------------------------------- derived

    @property
    def fused(self) -> bool:
        """Whether the op replaces an unfused chain (it defines ``unfused_bytes``)."""
        return type(self).unfused_bytes is not OpSpec.unfused_bytes

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
            "fused": self.fused,
        }
