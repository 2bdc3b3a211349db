"""Sweeps: every point (op, mode, dtype, shape) x implementation, checked, then timed.

For each point, every implementation is first checked against the float64 reference
(:func:`tritonlab.measure.check.check_case`, fresh seeded inputs, NaN-poisoned outputs); an
incorrect one is recorded (``correct: false`` and why) and never timed. The correct ones are
then built on one shared set of inputs and timed *interleaved* by one
:class:`~tritonlab.measure.timing.Timer`, so the Triton kernel and its baselines see the same
data, clocks and temperature; each Triton row gets ``speedup`` = baseline ms / its ms for
every baseline of the point. The rows of a point are appended to ``results.jsonl`` (and
flushed) as soon as the point is done, so a crash or Ctrl-C loses at most the point being
measured, and ``--resume`` skips every (op, impl, mode, dtype, shape) already there.

Rows are :class:`~tritonlab.runs.records.ResultRow` records (plain dicts, the JSON on disk).
On CUDA each implementation's timed calls run inside an NVTX range named
:meth:`Point.range_name <tritonlab.runs.records.Point.range_name>`
(``tritonlab:matmul/triton/fwd/float16/4096x4096x4096``), so a ``nsys profile`` capture of a
sweep shows which point each kernel belongs to.

Extension point: :data:`POINT_HOOKS` (or ``hooks=`` of :func:`run_sweep`) holds callables
``hook(op, impl, row, run) -> dict | None`` called for every row before it is written, with
the row so far and the built callable (None when the implementation was not timed); the
dict they return is merged into the row. A hook that raises is recorded in the row's
``hook_errors`` and the sweep goes on. On a GPU, :func:`sweep` adds the hooks of
:mod:`tritonlab.runs.point_hooks` (static compile facts and a counter summary per point).

Every row records where it was measured (``node``, ``gpu_name``, ``gpu_uuid``). A sweep on a
Ray cluster (:mod:`tritonlab.runs.cluster`) runs the same per-point code
(:meth:`_Sweeper.point_rows`) in its workers through :class:`WorkerSweep`, and writes the
same run directory.
"""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tritonlab import backend as backend_mod
from tritonlab.errors import UsageError
from tritonlab.hw import devices
from tritonlab.kernels.tuning import TUNING_LOG
from tritonlab.measure import check
from tritonlab.measure.timing import Measurement, Timer, default_rule, make_timer
from tritonlab.ops import registry
from tritonlab.ops.contract import DTYPES, Impl, OpSpec, Shape, dtype_name
from tritonlab.output import fmt_num, info, table
from tritonlab.report import roofline
from tritonlab.runs.point_hooks import gpu_point_hooks
from tritonlab.runs.records import Point, PointKey, ResultRow, blank_row, point_key, shape_str
from tritonlab.runs.store import RunDir, build_manifest, now_iso

PointHook = Callable[[OpSpec, Impl, ResultRow, Callable[[], object] | None], Mapping | None]
POINT_HOOKS: list[PointHook] = []


@dataclass
class SweepOptions:
    """How points are timed: ``cache`` cold/warm (None: the backend's default), CUDA
    ``graph`` replay, ``budget_s`` per implementation and point (None: the backend's
    default), and the ``seed`` of the inputs."""

    cache: str | None = None
    graph: bool = False
    budget_s: float | None = None
    seed: int = 0

    def to_dict(self) -> dict:
        return {"cache": self.cache, "graph": self.graph, "budget_s": self.budget_s,
                "seed": self.seed}


@dataclass
class SweepResult:
    run_dir: Path
    manifest: dict
    rows: list[ResultRow]  # every row of the run directory, after this invocation
    new_rows: int
    points_total: int
    points_done_before: int  # skipped because --resume found them complete
    interrupted: bool
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[ResultRow]:
        return [r for r in self.rows if r.get("error")]


# --------------------------------------------------------------------------------- planning

def plan(ops: Sequence[OpSpec], shapes: Mapping[str, Sequence[Shape]],
         dtypes: Mapping[str, Sequence[torch.dtype]], modes: Sequence[str] = (),
         impls: Sequence[str] = (), backend_name: str | None = None
         ) -> tuple[list[Point], list[str]]:
    """The points to measure, ordered op > shape > dtype > mode (so an autotuned kernel's
    modes of one shape follow each other), and notes on the combinations left out."""
    backend_name = backend_name or backend_mod.current().name
    points: list[Point] = []
    notes: dict[str, None] = {}
    for op in ops:
        op_modes = [m for m in op.modes if not modes or m in modes]
        if modes and not op_modes:
            notes[f"{op.name}: has none of the modes {', '.join(modes)} "
                  f"(modes: {', '.join(op.modes)})"] = None
        chosen = [i for i in op.impls if not impls or i.name in impls]
        for shape in shapes[op.name]:
            for dtype in dtypes[op.name]:
                why = check.skip_reason(op, dtype, backend_name)
                if why:
                    notes[f"{op.name}: skipped {dtype_name(dtype)}: {why}"] = None
                    continue
                for mode in op_modes:
                    runnable = []
                    for impl in chosen:
                        reason = impl.supports(mode, dtype, backend_name)
                        if reason:
                            notes[f"{op.name}: skipped: {reason}"] = None
                        else:
                            runnable.append(impl)
                    if runnable:
                        points.append(Point(op, mode, dtype, dict(shape), tuple(runnable)))
    return points, list(notes)


def plan_from_args(op_names: Sequence[str], preset: str | None, shape_texts: Sequence[str],
                   dtype_names: Sequence[str], mode_names: Sequence[str],
                   impl_names: Sequence[str], backend_name: str | None = None
                   ) -> tuple[list[Point], list[str], dict]:
    """Parse the CLI's choices (raising :class:`UsageError` with the valid ones) into points.

    Defaults: the ``tiny`` preset on the interpreter and ``quick`` on a GPU (an op without
    it uses its first preset); the dtypes the backend computes correctly. ``backend_name``:
    the backend that measures (a cluster's, which may not be this process's). Returns the
    points, notes and a JSON-ready description of the selection for the manifest.
    """
    be = backend_mod.current()
    if backend_name is not None and backend_name != be.name:
        be = backend_mod.Backend(backend_name, "cuda" if backend_name == "cuda" else "cpu",
                                 "the cluster's workers")
    ops = registry.resolve_ops(op_names)
    if preset and shape_texts:
        raise UsageError("give --preset or --shape, not both")
    for m in mode_names:
        registry.parse_mode(m)
    known_impls = {i.name for op in ops for i in op.impls}
    unknown = [n for n in impl_names if n not in known_impls]
    if unknown:
        raise UsageError(f"unknown impl {', '.join(map(repr, unknown))} for "
                         f"{', '.join(op.name for op in ops)}; valid impls: "
                         f"{', '.join(sorted(known_impls))}")
    notes: list[str] = []
    shapes: dict[str, list[Shape]] = {}
    if shape_texts:
        for op in ops:
            shapes[op.name] = [registry.parse_shape(s, op) for s in shape_texts]
    else:
        name = preset or ("quick" if be.is_gpu else "tiny")
        for op in ops:
            if name in op.presets:
                shapes[op.name] = registry.parse_preset(name, op)
            elif preset is None:
                shapes[op.name] = [dict(s) for s in next(iter(op.presets.values()))]
            else:
                notes.append(f"{op.name}: no preset {preset!r} (presets: "
                             f"{', '.join(op.presets)}); op skipped")
        if not shapes:
            registry.parse_preset(preset, ops[0])  # raises, naming the valid presets
    ops = [op for op in ops if op.name in shapes]
    if dtype_names:
        chosen = [registry.parse_dtype(d) for d in dtype_names]
        dtypes = {op.name: chosen for op in ops}
    else:
        dtypes = {op.name: list(op.dtypes if be.is_gpu else op.dtypes_interpreter) for op in ops}
    points, more = plan(ops, shapes, dtypes, mode_names, impl_names, be.name)
    notes += more
    if not points:
        raise UsageError("nothing to measure: " + ("; ".join(notes) or "empty selection"))
    selection = {"ops": [op.name for op in ops], "preset": preset,
                 "shapes": {n: [shape_str(s) for s in v] for n, v in shapes.items()},
                 "dtypes": {n: [dtype_name(d) for d in v] for n, v in dtypes.items()},
                 "modes": list(mode_names), "impls": list(impl_names), "points": len(points)}
    return points, notes, selection


# ------------------------------------------------------------------------------ measuring

def _tuning_log() -> list[dict]:
    return TUNING_LOG


def _activity() -> int:
    """Grows whenever a Triton autotuner benchmarks or torch.compile compiles a graph."""
    n = len(_tuning_log())
    dynamo = sys.modules.get("torch._dynamo.utils")
    if dynamo is not None:
        try:
            n += int(dynamo.counters["stats"]["unique_graphs"])
        except (AttributeError, KeyError, TypeError):
            pass
    return n


def describe_error(exc: BaseException) -> str:
    """One line saying why a point failed, with OOM and compile errors named as such."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in first.lower():
        return f"OOM: {first}"
    if "CompilationError" in type(exc).__name__ or type(exc).__module__.startswith("triton"):
        return f"compile error: {type(exc).__name__}: {first}"
    return f"{type(exc).__name__}: {first}"


def _free_memory(error: str | None) -> None:
    if error and error.startswith("OOM") and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _current_peaks(be):
    """This device's roofline peaks (:func:`tritonlab.hw.devices.current_peaks`), or
    None where none are known (rows then keep null roofline fields)."""
    try:
        return devices.current_peaks(be)
    except Exception as exc:  # an unknown device must not stop the sweep
        info(f"warning: no roofline peaks for this device ({describe_error(exc)})")
        return None


def gpu_uuid(device: Mapping) -> str | None:
    """The device's UUID as NVML and ``nvidia-smi -L`` write it (``GPU-...``; torch leaves
    the prefix off), or None for the CPU."""
    uuid = device.get("uuid") if device.get("kind", "cuda") == "cuda" else None
    if not uuid:
        return None
    uuid = str(uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


class _Sweeper:
    """Measures points one by one (see the module docstring), on the device ``device``
    describes (:func:`tritonlab.hw.devices.describe`) in this process's host."""

    def __init__(self, be, timer: Timer, options: SweepOptions, device: Mapping,
                 hooks: Sequence[PointHook]):
        self.be = be
        self.timer = timer
        self.rule = default_rule(be.name, options.budget_s)
        self.options = options
        self.device_name = device["name"]
        self.node = platform.node()
        self.gpu_uuid = gpu_uuid(device)
        self.hooks = list(hooks)
        self.peaks = _current_peaks(be)
        self.tuned: dict[tuple, dict] = {}

    def base_row(self, point: Point, impl: Impl) -> ResultRow:
        return blank_row(point, impl, backend=self.be.name, device=self.device_name,
                         seed=self.options.seed, timer=self.timer.name, cache=self.timer.cache,
                         node=self.node, gpu_uuid=self.gpu_uuid)

    def point_rows(self, point: Point, impls: Sequence[Impl]) -> list[ResultRow]:
        """The finished rows of ``impls`` at ``point`` (all of the point is measured, so the
        speedups have their baselines): what a sweep appends, locally or from a cluster
        worker."""
        rows, runs = self.measure(point)
        out = [self.finish_row(point, impl, rows[impl.name], runs.get(impl.name))
               for impl in impls]
        del runs  # the timed callables hold the point's tensors: free them before the next
        return out

    def _check(self, point: Point, impl: Impl, row: ResultRow) -> bool:
        log = _tuning_log()
        start = len(log)
        try:
            res = check.check_case(point.op, impl, point.mode, point.dtype, point.shape,
                                   self.options.seed)
        except Exception as exc:  # compile errors and the like that check_case passes on
            row.update(correct=False, error=describe_error(exc))
            _free_memory(row["error"])
            return False
        row.update(correct=res.correct, max_rel_err=res.max_rel_err,
                   rel_fro_err=res.rel_fro_err)
        if not res.correct:
            error = res.error or "incorrect"
            # Errors were measured: the outputs disagree with the reference (else the run
            # itself failed and check_case's message says how).
            if res.max_rel_err is not None:
                error = f"mismatch: {error}"
            elif "out of memory" in error.lower():
                error = f"OOM: {error}"
            row["error"] = error
            _free_memory(row["error"])
        tuned = self.tuned.setdefault(
            (point.op.name, impl.name, dtype_name(point.dtype), shape_str(point.shape)), {})
        for entry in log[start:]:
            tuned[entry["kernel"]] = {"config": entry["config"], "timings": entry["timings"]}
        return bool(res.correct)

    def _time(self, point: Point, runs: dict[str, Callable[[], object]],
              rows: dict[str, ResultRow]) -> dict[str, Measurement]:
        ranges = {impl.name: point.range_name(impl) for impl in point.impls}
        try:
            return self.timer.measure(runs, self.rule, _activity, ranges=ranges)
        except Exception:
            # Find out which implementation failed by timing each on its own.
            out = {}
            for name, run in runs.items():
                try:
                    out.update(self.timer.measure({name: run}, self.rule, _activity,
                                                  ranges=ranges))
                except Exception as exc:  # OOM, launch failure: recorded on its row
                    rows[name]["error"] = describe_error(exc)
                    _free_memory(rows[name]["error"])
            return out

    def measure(self, point: Point) -> tuple[dict[str, ResultRow], dict[str, Callable]]:
        """All rows of one point (by impl name) and the callables that were timed."""
        rows = {impl.name: self.base_row(point, impl) for impl in point.impls}
        clocks_start = self.timer.clocks()
        correct = [impl for impl in point.impls if self._check(point, impl, rows[impl.name])]
        runs: dict[str, Callable] = {}
        if correct:
            try:
                inputs = point.op.make_inputs(point.shape, point.dtype, self.be.device,
                                              self.options.seed)
            except Exception as exc:  # OOM allocating the inputs
                for impl in correct:
                    rows[impl.name]["error"] = describe_error(exc)
                _free_memory(describe_error(exc))
                correct = []
            for impl in correct:
                try:
                    runs[impl.name] = impl.build(inputs, point.mode)
                except Exception as exc:
                    rows[impl.name]["error"] = describe_error(exc)
            timings = self._time(point, runs, rows) if runs else {}
            for impl in correct:
                if impl.name in timings:
                    self._fill_timing(rows[impl.name], timings[impl.name], impl, point)
        clocks_end = self.timer.clocks()
        self._fill_speedups(point, rows)
        stamp = now_iso()
        slow = [c["slowdown"] for c in (clocks_start, clocks_end)
                if c and c.get("slowdown") is not None]
        for row in rows.values():
            row.update(clocks_start=clocks_start, clocks_end=clocks_end,
                       throttled=any(slow) if slow else None, time=stamp)
            if self.peaks is not None:
                try:
                    roofline.annotate_row(row, self.peaks)
                except Exception as exc:  # a roofline bug must not lose the measurement
                    row.setdefault("hook_errors", {})["roofline"] = describe_error(exc)
        return rows, runs

    def _fill_timing(self, row: ResultRow, m: Measurement, impl: Impl, point: Point) -> None:
        s = m.summary
        seconds = s.median * 1e-3
        row.update(
            ms=s.median, ms_ci=list(s.ci) if s.ci else None, iqr_ms=s.iqr,
            rel_ci=s.rel_ci, samples_ms=m.samples_ms, n_samples=s.n,
            stop_reason=m.stop_reason, calls_per_round=m.reps, host_ms=m.host_median_ms,
            launch_bound=m.launch_bound,
            tflops=row["flops"] / seconds / 1e12 if seconds > 0 else None,
            gbps=row["bytes"] / seconds / 1e9 if seconds > 0 else None,
            timer=m.timer, cache=m.cache, graph=m.graph, graph_error=m.graph_error,
            warmup_calls=m.warmup_calls, settled=m.settled,
        )
        if impl.config is not None:
            try:
                row["config"] = impl.config(point.mode)
            except Exception as exc:  # a config reader bug must not lose the timing
                row.setdefault("hook_errors", {})["config"] = describe_error(exc)
        tuned = self.tuned.get((point.op.name, impl.name, dtype_name(point.dtype),
                                shape_str(point.shape)))
        row["autotune_timings"] = tuned or None

    @staticmethod
    def _fill_speedups(point: Point, rows: dict[str, ResultRow]) -> None:
        base_ms = {i.name: rows[i.name]["ms"] for i in point.impls
                   if i.kind == "baseline" and rows[i.name]["ms"]}
        for impl in point.impls:
            row = rows[impl.name]
            if impl.kind == "triton" and row["ms"] and base_ms:
                row["speedup"] = {name: ms / row["ms"] for name, ms in base_ms.items()}

    def finish_row(self, point: Point, impl: Impl, row: ResultRow, run) -> ResultRow:
        for hook in self.hooks:
            try:
                extra = hook(point.op, impl, row, run)
            except Exception as exc:  # a hook's failure is recorded, the sweep goes on
                name = getattr(hook, "__name__", type(hook).__name__)
                row.setdefault("hook_errors", {})[name] = describe_error(exc)
                continue
            if extra:
                row.update(extra)
        return row


# -------------------------------------------------------- points measured in other processes

PointSpec = tuple  # (op name, or the OpSpec itself; mode; dtype name; shape; impl names)


def point_spec(point: Point) -> PointSpec:
    """``point`` as another process rebuilds it (:func:`point_from_spec`): an op of the
    registry by name, so that the worker's own import of it (decorated for the worker's
    backend) is the one measured; any other op (a caller's own OpSpec) by value."""
    op = point.op
    named = registry.discover().get(op.name) is op
    return (op.name if named else op, point.mode, dtype_name(point.dtype), dict(point.shape),
            tuple(impl.name for impl in point.impls))


def point_from_spec(spec: PointSpec) -> Point:
    op, mode, dtype, shape, impls = spec
    op = registry.discover()[op] if isinstance(op, str) else op
    return Point(op, mode, DTYPES[dtype], dict(shape),
                 tuple(op.impl(name) for name in impls))


def failed_row(point: Point, impl: Impl, *, backend: str, device: str, timer: Mapping,
               seed: int, error: str) -> ResultRow:
    """The row of ``impl`` at a point that was never measured (its cluster worker died),
    saying why; where it would have run is unknown beyond the device model."""
    row = blank_row(point, impl, backend=backend, device=device, seed=seed,
                    timer=timer.get("timer") or "unknown", cache=timer.get("cache") or "unknown")
    row.update(error=error, time=now_iso())
    return row


class WorkerSweep:
    """The sweep's per-point code (:meth:`_Sweeper.point_rows`, the same as a local sweep's)
    in a worker process of a cluster sweep, on the backend the process selected before it
    imported this module. The GPU hooks' counter samples go to a temporary directory and
    are handed back by :meth:`close`: the worker's host may not see the run directory."""

    def __init__(self, options: SweepOptions, hooks: Sequence[PointHook]):
        be = backend_mod.current()
        self.timer = make_timer(be.name, cache=options.cache, graph=options.graph)
        device = {**devices.describe(be), "clocks_at_start": self.timer.clocks()}
        self._tmp = Path(tempfile.mkdtemp(prefix="tritonlab-worker-"))
        self._hooks = gpu_point_hooks(self._tmp)
        gpu_hooks = self._hooks.__enter__()
        self.sweeper = _Sweeper(be, self.timer, options, device, [*hooks, *gpu_hooks])
        peaks = self.sweeper.peaks
        self.identity = {"node": self.sweeper.node, "gpu_name": device["name"],
                         "gpu_uuid": self.sweeper.gpu_uuid, "backend": be.name,
                         "device": device, "timer": self.timer.describe(),
                         "peaks": peaks.to_dict() if peaks is not None else None}

    def measure(self, spec: PointSpec, impl_names: Sequence[str]) -> list[ResultRow]:
        """The rows of ``impl_names`` at the point ``spec`` describes."""
        point = point_from_spec(spec)
        return self.sweeper.point_rows(point, [point.op.impl(n) for n in impl_names])

    def close(self) -> str | None:
        """End the hooks; the counter samples (``counters.csv`` text) or None."""
        try:
            self._hooks.__exit__(None, None, None)
            csv = self._tmp / "counters.csv"
            return csv.read_text() if csv.is_file() else None
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)


# ------------------------------------------------------------------------------- running

ProgressFn = Callable[[int, int, str, str], None]


def open_run(out: Path, *, resume: bool, be, argv: Sequence[str], selection: Mapping,
             options: SweepOptions, timer: Timer, part_of: Mapping | None = None) -> RunDir:
    """Create the run directory, or reopen it for ``resume`` after checking that a sweep
    wrote it and measured it the same way (backend, device, cache, graph). Either way it is
    locked by this process until ``release()``; ``part_of``: the job the run belongs to
    (the demo's marker)."""
    device = {**devices.describe(be), "clocks_at_start": timer.clocks()}
    return open_run_for(out, resume=resume, be=be, device=device, timer=timer.describe(),
                        models=[device["name"]], argv=argv, selection=selection,
                        options=options, part_of=part_of)


def open_run_for(out: Path, *, resume: bool, be, device: Mapping, timer: Mapping,
                 models: Sequence[str], argv: Sequence[str], selection: Mapping,
                 options: SweepOptions, part_of: Mapping | None = None,
                 extra: Mapping | None = None) -> RunDir:
    """:func:`open_run` for devices described elsewhere (a cluster's workers): ``device``
    and ``timer`` as the manifest records them, ``models`` the device models that measure,
    ``extra`` more fields of a new run's manifest. A run is resumed only by devices of models
    it already has (a local resume of a cluster run completes the points of its own
    model)."""
    if not resume:
        manifest = build_manifest(kind="sweep", backend=be, device=dict(device),
                                  argv=argv, options={**selection, **options.to_dict()},
                                  timer=timer, part_of=part_of)
        return RunDir.create(out, {**manifest, **(extra or {})})
    run = RunDir.open_to_resume(out, "sweep")
    try:
        _prepare_resume(run, be.name, models, timer.get("cache"), argv, options)
    except BaseException:
        run.release()
        raise
    return run


def run_models(manifest: Mapping) -> list[str]:
    """The device models a run was measured on: a cluster run's (``cluster.models``), else
    its one device."""
    models = (manifest.get("cluster") or {}).get("models")
    return list(models) if models else [(manifest.get("device") or {}).get("name")]


def _prepare_resume(run: RunDir, backend_name: str, models: Sequence[str], cache: str | None,
                    argv: Sequence[str], options: SweepOptions) -> None:
    out = run.path
    manifest = run.manifest()
    old_opts = manifest.get("options", {})
    mismatch = []
    if manifest.get("backend") != backend_name:
        mismatch.append(f"backend {manifest.get('backend')!r} vs {backend_name!r}")
    had = run_models(manifest)
    new = [m for m in models if m not in had]
    if new:
        mismatch.append(f"device {' + '.join(map(str, had))!r} vs {' + '.join(new)!r}")
    if (manifest.get("timer") or {}).get("cache") != cache:
        mismatch.append(f"cache {(manifest.get('timer') or {}).get('cache')!r} vs "
                        f"{cache!r}")
    if bool(old_opts.get("graph")) != bool(options.graph):
        mismatch.append(f"graph {bool(old_opts.get('graph'))} vs {bool(options.graph)}")
    if mismatch:
        raise UsageError(f"cannot resume {out}: it was measured differently "
                         f"({'; '.join(mismatch)})")
    run.repair()
    resumed = list(manifest.get("resumed") or [])
    resumed.append({"time": now_iso(), "command": list(argv)})
    run.update_manifest(resumed=resumed, status="running", end_time=None)


def run_sweep(points: Sequence[Point], run: RunDir, timer: Timer, options: SweepOptions,
              *, hooks: Sequence[PointHook] | None = None,
              progress: ProgressFn | None = None, notes: Sequence[str] = ()) -> SweepResult:
    """Measure every point not yet in ``run`` and append its rows. Ctrl-C stops after
    keeping every finished point (``interrupted`` is then True)."""
    be = backend_mod.current()
    new_rows = before = 0
    interrupted = False
    try:
        manifest = run.manifest()
        # A cluster run resumed here names its cluster's devices: measure as this one.
        device = devices.describe(be) if manifest.get("cluster") else manifest["device"]
        sweeper = _Sweeper(be, timer, options, device, POINT_HOOKS if hooks is None else hooks)
        if sweeper.peaks is not None:
            if manifest.get("cluster"):
                run.update_manifest(peaks_by_device={**(manifest.get("peaks_by_device") or {}),
                                                     device["name"]: sweeper.peaks.to_dict()})
            else:
                run.update_manifest(peaks=sweeper.peaks.to_dict())
        # A cluster run resumed here holds rows of other models too: only this device's count.
        done: set[PointKey] = {point_key(r) for r in run.rows()
                               if r.get("device", sweeper.device_name) == sweeper.device_name}
        for i, point in enumerate(points):
            missing = [impl for impl in point.impls if point.key(impl) not in done]
            if not missing:
                before += 1
                if progress:
                    progress(i + 1, len(points), point.label, "already measured")
                continue
            if progress:
                progress(i, len(points), point.label, "measuring")
            out = sweeper.point_rows(point, missing)
            run.append(out)
            done.update(point.key(impl) for impl in missing)
            new_rows += len(out)
            if progress:
                bad = [r for r in out if r.get("error")]
                progress(i + 1, len(points), point.label,
                         f"{len(bad)} failed" if bad else "ok")
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        # Cut short by an error: the run is not complete, and --resume finishes it from the
        # rows already written.
        interrupted = True
        raise
    finally:
        manifest = run.update_manifest(status="interrupted" if interrupted else "complete",
                                       end_time=now_iso())
    return SweepResult(run_dir=run.path, manifest=manifest, rows=run.rows(),
                       new_rows=new_rows, points_total=len(points), points_done_before=before,
                       interrupted=interrupted, notes=list(notes))


def sweep(points: Sequence[Point], out: Path, *, resume: bool, options: SweepOptions,
          argv: Sequence[str], selection: Mapping, hooks: Sequence[PointHook] | None = None,
          progress: ProgressFn | None = None, notes: Sequence[str] = (),
          part_of: Mapping | None = None) -> SweepResult:
    """Open (or resume) the run directory ``out``, locked while this runs, and measure
    ``points`` into it. ``part_of``: the job the run is written for (the demo's marker)."""
    be = backend_mod.current()
    if options.graph and not be.is_gpu:
        raise UsageError("--graph needs the cuda backend (CUDA graphs)")
    timer = make_timer(be.name, cache=options.cache, graph=options.graph)
    # Record what was used, not what was left to the defaults.
    options = SweepOptions(cache=timer.cache, graph=options.graph,
                           budget_s=default_rule(be.name, options.budget_s).budget_s,
                           seed=options.seed)
    run = open_run(Path(out), resume=resume, be=be, argv=argv, selection=selection,
                   options=options, timer=timer, part_of=part_of)
    try:
        with gpu_point_hooks(run.path) as gpu_hooks:
            all_hooks = [*(POINT_HOOKS if hooks is None else hooks), *gpu_hooks]
            return run_sweep(points, run, timer, options, hooks=all_hooks, progress=progress,
                             notes=notes)
    except KeyboardInterrupt:  # while the hooks were set up, before run_sweep took over
        run.update_manifest(status="interrupted", end_time=now_iso())
        raise
    finally:
        run.release()


# ------------------------------------------------------------------------------- printing

def summary_table(rows: Sequence[Mapping]) -> str:
    """One line per row: time with its CI, throughput, speedups and status; the device
    first when the rows come from several (a cluster sweep over several GPU models)."""
    several = len({r.get("device") for r in rows}) > 1
    lines = []
    for r in rows:
        ci = r.get("ms_ci")
        pm = (f"+-{100 * max(r['ms'] - ci[0], ci[1] - r['ms']) / r['ms']:.1f}%"
              if r.get("ms") and ci else "")
        speed = ", ".join(f"{k} {v:.2f}x" for k, v in (r.get("speedup") or {}).items())
        status = ("ok" if r.get("correct") and not r.get("error") else
                  (r.get("error") or "FAIL"))
        if r.get("launch_bound"):
            status += " (launch-bound)"
        lines.append([*([r.get("device")] if several else []),
                      r["op"], r["impl"], r["mode"], r["dtype"], shape_str(r["shape"]),
                      fmt_num(r.get("ms"), ".4g"), pm, fmt_num(r.get("tflops"), ".3g"),
                      fmt_num(r.get("gbps"), ".3g"), speed, status[:60]])
    return table(lines, [*(["device"] if several else []), "op", "impl", "mode", "dtype",
                         "shape", "ms", "ci", "TFLOP/s", "GB/s", "speedup", "status"])
