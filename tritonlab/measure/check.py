"""Correctness against the float64 reference (``tritonlab check``, and the sweep's gate).

Each case draws fresh seeded inputs, poisons every output buffer the implementation can
write with NaN before it runs (an element the kernel forgets to write stays NaN and fails),
and compares each output with the float64 reference by relative Frobenius error and by the
largest elementwise error, against the op's tolerance for that dtype and reduction length.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

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


def compare(out: Outputs, ref: Outputs, tol: Tolerance) -> tuple[bool, float, float, float, str | None]:
    """(correct, rel_fro_err, max_rel_err, max_abs_err, why) over all output tensors: the
    errors are the worst over the tuple; a NaN/Inf where the reference is finite fails."""
    if len(out) != len(ref):
        return False, math.inf, math.inf, math.inf, f"{len(out)} outputs, expected {len(ref)}"
    worst_fro = worst_rel = worst_abs = 0.0
    why = None
    for i, (o, r) in enumerate(zip(out, ref)):
        if tuple(o.shape) != tuple(r.shape):
            return (False, math.inf, math.inf, math.inf,
                    f"output {i} has shape {tuple(o.shape)}, expected {tuple(r.shape)}")
        o64 = o.detach().to(device="cpu", dtype=torch.float64)
        r64 = r.detach().to(device="cpu", dtype=torch.float64)
        if not torch.isfinite(o64).all():
            bad = int((~torch.isfinite(o64)).sum())
            return (False, math.inf, math.inf, math.inf,
                    f"output {i} has {bad} non-finite elements (unwritten or overflow)")
        diff = o64 - r64
        ref_norm = float(r64.norm())
        ref_max = float(r64.abs().max()) if r64.numel() else 0.0
        fro = float(diff.norm()) / ref_norm if ref_norm > 0 else float(diff.norm())
        mabs = float(diff.abs().max()) if diff.numel() else 0.0
        mrel = mabs / ref_max if ref_max > 0 else mabs
        worst_fro, worst_rel, worst_abs = max(worst_fro, fro), max(worst_rel, mrel), max(worst_abs, mabs)
        if fro > tol.rel_fro or mrel > tol.max_rel:
            why = why or (f"output {i}: rel_fro {fro:.2e} (tol {tol.rel_fro:.1e}), "
                          f"max_rel {mrel:.2e} (tol {tol.max_rel:.1e})")
    return why is None, worst_fro, worst_rel, worst_abs, why


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
    result.tol_rel_fro, result.tol_max_rel = tol.rel_fro, tol.max_rel
    start = time.perf_counter()
    try:
        inputs = op.make_inputs(shape, dtype, be.device, seed)
        out = run_poisoned(impl, inputs, mode)
        ref = op.reference(op.make_inputs(shape, dtype, be.device, seed), mode)
    except Exception as exc:  # compile errors (CompilationError, OutOfResources), OOM, bad launch
        result.correct = False
        result.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return result
    finally:
        result.seconds = time.perf_counter() - start
    ok, fro, mrel, mabs, why = compare(out, ref, tol)
    result.correct, result.rel_fro_err, result.max_rel_err, result.max_abs_err = ok, fro, mrel, mabs
    result.error = why
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
