"""Correctness against the float64 reference (``tritonlab check``, and the sweep's gate).

Each case draws fresh seeded inputs, poisons every output buffer the implementation can
write with NaN before it runs (an element the kernel forgets to write stays NaN and fails),
checks each output's shape against the reference's and its dtype against the op's declared
output dtype, and compares it with the float64 reference by relative Frobenius error and by
the largest elementwise error, normalised by the scale of the terms it sums
(``OpSpec.error_scale``), against that output's tolerance (``OpSpec.tolerance``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from tritonlab import backend as backend_mod
from tritonlab.ops.contract import Impl, Inputs, OpSpec, Outputs, Shape, Tolerance, dtype_name


@dataclass
class CaseResult:
    op: str
    impl: str
    mode: str
    dtype: str
    shape: dict
    seed: int
    backend: str
    correct: bool | None  # None: skipped
    rel_fro_err: float | None = None
    max_rel_err: float | None = None
    max_abs_err: float | None = None
    tol_rel_fro: float | None = None
    tol_max_rel: float | None = None
    seconds: float | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Comparison(NamedTuple):
    """What :func:`compare` found. The errors and ``tol`` are those of the output nearest to
    its bound (or furthest past it), so a table row shows the binding output; ``why`` says
    what failed, None when everything passed."""

    correct: bool
    rel_fro_err: float
    max_rel_err: float
    max_abs_err: float
    tol: Tolerance | None
    why: str | None


def per_output(value, n: int, what: str) -> tuple:
    """``value`` for each of ``n`` outputs: a tuple or list must have exactly ``n`` entries,
    anything else applies to all of them."""
    if isinstance(value, (tuple, list)):
        if len(value) != n:
            raise ValueError(f"the op declares {len(value)} {what}(s) for {n} output(s)")
        return tuple(value)
    return (value,) * n


def _failed(why: str) -> Comparison:
    return Comparison(False, math.inf, math.inf, math.inf, None, why)


def compare(out: Outputs, ref: Outputs, tol: Tolerance | Sequence[Tolerance], *,
            scale: Sequence[torch.Tensor | None] | None = None,
            dtypes: torch.dtype | Sequence[torch.dtype] | None = None) -> Comparison:
    """``out`` against ``ref``, output by output: the same count, each a tensor of the
    reference's shape and (when ``dtypes`` is given) of its declared dtype, finite where the
    reference is, and within its tolerance. ``tol``, ``scale`` and ``dtypes`` are per output
    or one for all; the errors of output i are normalised by s = max(|ref_i|, scale_i)
    elementwise (see :class:`Tolerance`)."""
    if len(out) != len(ref):
        return _failed(f"{len(out)} outputs, expected {len(ref)}")
    try:
        tols = per_output(tol, len(ref), "tolerance")
        scales = per_output(scale, len(ref), "error scale")
        kinds = per_output(dtypes, len(ref), "output dtype")
    except ValueError as exc:
        return _failed(str(exc))
    best = None  # (ratio to the bound, fro, mrel, mabs, tol) of the binding output
    why = None
    for i, (o, r, t, sc, kind) in enumerate(zip(out, ref, tols, scales, kinds)):
        if not isinstance(o, torch.Tensor):
            return _failed(f"output {i} is a {type(o).__name__}, not a tensor")
        if tuple(o.shape) != tuple(r.shape):
            return _failed(f"output {i} has shape {tuple(o.shape)}, expected {tuple(r.shape)} "
                           f"(the reference's)")
        if kind is not None and o.dtype != kind:
            return _failed(f"output {i} has dtype {dtype_name(o.dtype)}, expected "
                           f"{dtype_name(kind)} (the op's declared output dtype)")
        o64 = o.detach().to(device="cpu", dtype=torch.float64)
        r64 = r.detach().to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(o64).all():
            bad = int((~torch.isfinite(o64)).sum())
            return _failed(f"output {i} has {bad} non-finite elements (unwritten or overflow)")
        s = r64.abs()
        if sc is not None:
            s = torch.maximum(s, sc.detach().to(device="cpu", dtype=torch.float64).expand_as(s))
        diff = o64 - r64
        s_norm = float(s.norm())
        s_max = float(s.max()) if s.numel() else 0.0
        fro = float(diff.norm()) / s_norm if s_norm > 0 else float(diff.norm())
        mabs = float(diff.abs().max()) if diff.numel() else 0.0
        mrel = mabs / s_max if s_max > 0 else mabs
        ratio = max(fro / t.rel_fro, mrel / t.max_rel)
        if best is None or ratio > best[0]:
            best = (ratio, fro, mrel, mabs, t)
        if fro > t.rel_fro or mrel > t.max_rel:
            why = why or (f"output {i}: rel_fro {fro:.2e} (tol {t.rel_fro:.1e}), "
                          f"max_rel {mrel:.2e} (tol {t.max_rel:.1e})")
    if best is None:
        return Comparison(True, 0.0, 0.0, 0.0, None, None)
    _, fro, mrel, mabs, t = best
    return Comparison(why is None, fro, mrel, mabs, t, why)


def poison(inputs: Inputs) -> None:
    """Fill every floating-point ``out*`` buffer the op's inputs carry with NaN."""
    for name, value in inputs.items():
        if name.startswith("out") and isinstance(value, torch.Tensor) and value.is_floating_point():
            value.fill_(math.nan)


def run_poisoned(impl: Impl, inputs: Inputs, mode: str) -> Outputs:
    """Build ``impl`` for ``mode``, then NaN-fill every output it returns from a first call and
    run it again, so the checked outputs are those a second run wrote into poisoned memory.

    Implementations write into buffers they allocate once in ``build`` (that is what the
    sweep times), so poisoning the buffers returned by a first run catches any element that
    the kernel does not write on its own.
    """
    run = impl.build(inputs, mode)
    first = run()
    with torch.no_grad():
        for t in first:
            if isinstance(t, torch.Tensor) and t.is_floating_point():
                # An infer-mode output made under torch.inference_mode is an inference
                # tensor, writable only inside inference mode.
                with torch.inference_mode(t.is_inference()):
                    t.fill_(math.nan)
    poison(inputs)
    out = run()
    return tuple(t.detach().clone() for t in out)


def check_case(op: OpSpec, impl: Impl, mode: str, dtype: torch.dtype, shape: Shape,
               seed: int) -> CaseResult:
    """Check one (impl, mode, dtype, shape, seed) against the float64 reference."""
    be = backend_mod.current()
    result = CaseResult(op=op.name, impl=impl.name, mode=mode, dtype=dtype_name(dtype),
                        shape=dict(shape), seed=seed, backend=be.name, correct=None)
    reason = impl.supports(mode, dtype, be.name) or skip_reason(op, dtype, be.name)
    if reason:
        result.error = f"skipped: {reason}"
        return result
    tol = op.tolerance(dtype, shape, mode)
    start = time.perf_counter()
    try:
        inputs = op.make_inputs(shape, dtype, be.device, seed)
        out = run_poisoned(impl, inputs, mode)
        ref_inputs = op.make_inputs(shape, dtype, be.device, seed)
        ref = op.reference(ref_inputs, mode)
        scale = op.error_scale(ref_inputs, mode)
    except Exception as exc:  # compile errors (CompilationError, OutOfResources), OOM, bad launch
        result.correct = False
        result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return result
    finally:
        result.seconds = time.perf_counter() - start
    found = compare(out, ref, tol, scale=scale, dtypes=op.output_dtypes(dtype, mode))
    result.correct, result.error = found.correct, found.why
    if found.tol is not None:
        result.rel_fro_err, result.max_rel_err = found.rel_fro_err, found.max_rel_err
        result.max_abs_err = found.max_abs_err
        result.tol_rel_fro, result.tol_max_rel = found.tol.rel_fro, found.tol.max_rel
    return result


def skip_reason(op: OpSpec, dtype: torch.dtype, backend_name: str) -> str | None:
    if dtype not in op.dtypes:
        return f"{op.name} does not support {dtype_name(dtype)}"
    if backend_name == "interpreter" and dtype not in op.dtypes_interpreter:
        return (f"{dtype_name(dtype)} is wrong under the Triton interpreter (its bf16 dot "
                f"returns garbage); checked on a GPU only")
    return None


def default_shapes(op: OpSpec) -> list[Shape]:
    """The shapes `check` uses without --shape: tiny on the interpreter, quick on a GPU."""
    preset = "tiny" if not backend_mod.current().is_gpu else "quick"
    return [dict(s) for s in op.presets.get(preset, next(iter(op.presets.values())))]


def iter_cases(ops: Sequence[OpSpec], dtypes: Sequence[torch.dtype],
               shapes: dict[str, list[Shape]], seeds: int,
               impls: Sequence[str] = (), modes: Sequence[str] = ()) -> Iterator[CaseResult]:
    """Every case of the cross product, in order; ``shapes`` maps op name -> shapes.
    Baselines are checked too: a baseline that disagrees with float64 is worth knowing."""
    for op in ops:
        for impl in op.impls:
            if impls and impl.name not in impls:
                continue
            for mode in (m for m in op.modes if not modes or m in modes):
                for dtype in dtypes:
                    for shape in shapes[op.name]:
                        for seed in range(seeds):
                            yield check_case(op, impl, mode, dtype, shape, seed)
