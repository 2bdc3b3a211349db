"""Training vs inference on one model: which pushes the hardware harder, and on which resource
(``tritonlab contrast``).

The feed-forward block of :mod:`tritonlab.workloads.model` runs as training
(``TrainingWorkload``: forward, loss, backward, optimizer step, on the lab's linear kernels)
and as inference (``InferenceWorkload``: the fused inference MLP block), with each
implementation (``triton``: the lab's kernels; ``torch``: the baseline), at several batch
sizes (tokens per step), from real time (1) to throughput (thousands). The run is

    idle baseline, then for each mode, batch and impl: warm-up, measured phase, cool-down

while :mod:`tritonlab.hw.counters` samples the device (and, on CUDA, each phase is an NVTX
range ``tritonlab:contrast/<phase>`` for Nsight Systems). A measured phase runs steps back
to back for a fixed duration; each step is synchronised, so its latency is what a caller
waits for. Per phase: throughput, latency p50/p99, FLOP/s, energy per sample and per FLOP,
average and p95 power and its share of the power limit, clocks, utilisation, GPM metrics,
peak memory, temperature rise and time throttled. :func:`verdict` then compares the modes
resource by resource from those numbers (the rule is in its docstring); on the CPU backend it
is about the CPU counters that exist, and says so.

With ``model="layer"`` the same run measures the decoder layer's three regimes over a grid
(:mod:`tritonlab.contrast.layer`: train, prefill, decode; phases named by regime, impl and
grid point), adds to each row tokens/s, compulsory bytes and GB/s, % of the device's peaks,
energy per token and the footprint against the card's memory (a phase that would not fit a
GPU is recorded as skipped), and decides with
:func:`~tritonlab.contrast.layer_verdict.layer_verdict`.

Outputs (docs/design.md, "The run directory"): manifest.json, counters.csv, contrast.json, and a
timeline (timeline.png) and Chrome/Perfetto trace (trace.json) of the counters. contrast.json
and counters.csv are rewritten after every phase, so an interrupted run keeps its finished
phases and ``--resume`` measures only the rest (timeline.png and trace.json then show the
part measured after the last resume; counters.csv holds every part on one time axis).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence

from tritonlab import backend as backend_mod
from tritonlab.contrast import layer as layer_mod
from tritonlab.contrast.decide import impl_comparison, verdict
from tritonlab.contrast.layer_verdict import layer_verdict
from tritonlab.contrast.phases import (
    PhaseRun,
    RangeFactory,
    WorkloadFactory,
    ffn_step,
    lab_workloads,
    measure,
    nvtx_ranges,
    sleep_phase,
)
from tritonlab.contrast.plan import IMPLS, MODES, make_plan, torch_dtype
from tritonlab.contrast.rows import PhaseRow, error_row, phase_row, skipped_row
from tritonlab.errors import UsageError
from tritonlab.hw import counters as counters_mod
from tritonlab.hw import devices, nvml
from tritonlab.output import dumps
from tritonlab.report import timeline as timeline_mod
from tritonlab.runs import store as runstore
from tritonlab.workloads.model import MLPConfig


def run_contrast(out_dir, *, batches: Sequence[int] | None = None,
                 duration_s: float | None = None, model_size: str | None = None,
                 impls: Sequence[str] = IMPLS, modes: Sequence[str] | None = None,
                 dtype: str | None = None, warmup_s: float | None = None,
                 idle_s: float | None = None, cooldown_s: float | None = None,
                 interval_ms: float = 1e3 * counters_mod.DEFAULT_INTERVAL_S,
                 counters: str = "auto", seed: int = 0,
                 progress: Callable[[str], None] | None = None,
                 argv: Sequence[str] | None = None,
                 workloads: WorkloadFactory = lab_workloads,
                 ranges: RangeFactory | None = None, resume: bool = False,
                 part_of: Mapping | None = None, model: str = "layer",
                 grid: Mapping | None = None) -> dict:
    """Run the contrast and write the run directory ``out_dir``; returns contrast.json's
    document. Options left None take the backend's defaults (:data:`DEFAULTS`); bad options
    and an unwritable ``out_dir`` raise UsageError before anything runs. ``counters``:
    ``auto`` (NVML on a GPU, with a warning and the CPU backend when NVML is missing),
    ``nvml`` or ``cpu``. ``workloads(mode, cfg, impl=, dtype=, device=, seed=)`` builds a
    workload (default: the lab's). ``progress`` receives one line per phase of the run.
    ``ranges(name)`` opens a range around each phase (default: NVTX on CUDA, nothing under
    the interpreter). ``part_of``: the job the run is written for (the demo's marker).
    ``modes``: default all of the model's (``train``, ``infer``; or the layer's regimes).
    ``model``: ``layer`` (the default) or ``ffn`` (the feed-forward block, training vs
    inference). ``layer`` is the decoder layer in three regimes
    (:mod:`tritonlab.contrast.layer`); then ``modes`` are its regimes, ``batches`` must be
    None and ``grid`` holds the keyword arguments of
    :func:`~tritonlab.contrast.layer.make_layer_plan` that set the layer count, the grid and
    the caches' capacity; ``workloads`` is not used).

    contrast.json is rewritten (atomically) after every phase, so a crash loses at most the
    phase in progress. Ctrl-C (or SIGTERM / SIGHUP under
    :func:`tritonlab.errors.signals_interrupt`) stops the run: what was measured is saved,
    with ``status: "interrupted"`` in contrast.json and the manifest, and the document is
    returned (its ``verdict`` is None). ``resume`` continues the run in ``out_dir`` (which
    must have been planned with the same options), skipping the phases it holds; the
    directory is locked while this runs.
    """
    be = backend_mod.current()
    ranges = ranges or nvtx_ranges(be.name)
    say = progress or (lambda _msg: None)
    if counters not in ("auto", "nvml", "cpu"):
        raise UsageError(f"unknown counter backend {counters!r}; choose one of: auto, nvml, cpu")
    if counters == "nvml" and not be.is_gpu:
        raise UsageError("NVML counters need the cuda backend: under the interpreter the "
                         "kernels run on the CPU, so use --counters cpu (or auto)")
    if model == "ffn":
        if grid:
            raise UsageError(f"{', '.join(sorted(grid))}: options of --model layer only")
        plan, warnings = make_plan(be.name, batches=batches, duration_s=duration_s,
                                   model_size=model_size, impls=impls,
                                   modes=MODES if modes is None else modes, dtype=dtype,
                                   warmup_s=warmup_s, idle_s=idle_s, cooldown_s=cooldown_s,
                                   interval_ms=interval_ms, seed=seed)
    elif model == "layer":
        if batches:
            raise UsageError("--batch is for --model ffn; the layer's grid is set by "
                             "--train-batch/--train-seq, --prefill-batch/--prompt and "
                             "--decode-batch/--context")
        plan, warnings = layer_mod.make_layer_plan(
            be.name, model_size=model_size, impls=impls,
            modes=layer_mod.REGIMES if modes is None else modes, dtype=dtype,
            duration_s=duration_s, warmup_s=warmup_s, idle_s=idle_s, cooldown_s=cooldown_s,
            interval_ms=interval_ms, seed=seed, **(grid or {}))
    else:
        raise UsageError(f"unknown model {model!r}; valid models: ffn, layer")
    for w in warnings:
        say(f"warning: {w}")
    device_info = devices.describe(be)
    argv = list(argv) if argv is not None else runstore.command_argv()
    if resume:
        run_dir = runstore.RunDir.open_to_resume(out_dir, "contrast")
    else:
        manifest = runstore.build_manifest(kind="contrast", backend=be, device=device_info,
                                           argv=argv, options=plan.to_dict(), part_of=part_of)
        run_dir = runstore.RunDir.create(out_dir, manifest)
    try:
        if resume:
            manifest, before = _reopen(run_dir, plan, be, device_info, argv)
        else:
            before = {"phases": [], "counters_origin_unix": None, "counters_csv": ""}
        return _measure_all(run_dir, manifest, before, plan, warnings, be, device_info,
                            counters, say, workloads, ranges)
    finally:
        run_dir.release()


def _reopen(run_dir: runstore.RunDir, plan, be, device_info: dict, argv: Sequence[str]
            ) -> tuple[dict, dict]:
    """Check that the run can be resumed with ``plan`` here; returns its manifest and what
    it holds already (phases, counter samples and their time origin)."""
    manifest = run_dir.manifest()
    mismatch = []
    if manifest.get("backend") != be.name:
        mismatch.append(f"backend {manifest.get('backend')!r} vs {be.name!r}")
    old_device = (manifest.get("device") or {}).get("name")
    if old_device != device_info.get("name"):
        mismatch.append(f"device {old_device!r} vs {device_info.get('name')!r}")
    planned = manifest.get("options") or {}
    wanted = json.loads(dumps(plan.to_dict()))
    for key in sorted(set(planned) | set(wanted)):
        if planned.get(key) != wanted.get(key):
            mismatch.append(f"{key} {planned.get(key)!r} vs {wanted.get(key)!r}")
    if mismatch:
        raise UsageError(f"cannot resume {run_dir.path}: it was planned differently "
                         f"({'; '.join(mismatch)}); repeat its options")
    doc_path = run_dir.path / runstore.CONTRAST
    doc = {}
    if doc_path.is_file():
        try:
            doc = json.loads(doc_path.read_text())
        except ValueError as exc:
            raise UsageError(f"cannot resume {run_dir.path}: {doc_path} is not valid JSON "
                             f"({exc})") from None
    phases = [p for p in doc.get("phases") or [] if isinstance(p, dict) and p.get("name")]
    csv_text = ""
    if phases and run_dir.counters_path.is_file():
        lines = run_dir.counters_path.read_text().splitlines(keepends=True)
        csv_text = "".join(lines[1:])  # the header is written again
    resumed = list(manifest.get("resumed") or [])
    resumed.append({"time": runstore.now_iso(), "command": list(argv),
                    "phases_kept": len(phases)})
    manifest = run_dir.update_manifest(resumed=resumed, status="running", end_time=None)
    return manifest, {"phases": phases, "counters_csv": csv_text,
                      "counters_origin_unix": doc.get("counters_origin_unix")}


def _measure_all(run_dir: runstore.RunDir, manifest: dict, before: dict, plan, warnings,
                 be, device_info: dict, counters: str, say, workloads, ranges) -> dict:
    """The run itself: the idle baseline, every planned phase (kept ones skipped),
    contrast.json and counters.csv after each, then the timeline, the trace and the final
    document."""
    is_layer = plan.model == "layer"
    cfg = plan.config() if is_layer else MLPConfig.from_size(plan.model_size)
    # The layer contrast's rows hold % of the device's peaks and capacity: a GPU's from the
    # device table (or measured ceilings), none for the CPU unless measured and cached.
    peaks = devices.peaks_for(device_info)
    ceilings = peaks and (peaks.spec or peaks.measured)
    capacity = device_info.get("memory_bytes") if be.is_gpu else None
    skipped = layer_mod.over_capacity(plan, capacity) if is_layer else {}
    # Under the interpreter the kernels run on the CPU: the CPU is what is measured.
    kind = counters if be.is_gpu else "cpu"
    ids = nvml.cuda_device_ids(device_info["index"]) if be.is_gpu else nvml.DeviceIds()

    def warn(message: str) -> None:
        """Keep a sampler warning for contrast.json and show it."""
        warnings.append(message)
        say(message)

    sampler = counters_mod.open_sampler(kind, interval_s=plan.interval_ms / 1e3,
                                        device_uuid=ids.uuid,
                                        device_pci_bus_id=ids.pci_bus_id, warn=warn)
    kept = {p["name"]: p for p in before["phases"]}
    idle_kept = kept.get("idle")
    runs: list[PhaseRun] = []
    idle_phase = None
    interrupted = False
    device_name = device_info.get("name") or "this device"
    planned = plan.phases()
    total = len(planned)

    def document(rows: list[PhaseRow], idle: PhaseRow | None, status: str) -> dict:
        """contrast.json's document from the rows measured so far (and those kept from
        before a resume)."""
        measured = _in_plan_order(plan, {**kept, **{r["name"]: r for r in rows}})
        complete = status == "complete"
        return {
            "schema_version": runstore.SCHEMA_VERSION,
            "kind": "contrast",
            "status": status,
            "run_id": manifest["run_id"],
            "backend": be.name,
            "backend_label": be.label,
            "device": device_name,
            "counters": sampler.kind,
            "counters_info": counter_info,
            "counters_origin_unix": origin_unix,
            "model": {"name": plan.model, "size": plan.model_size, **cfg.to_dict(),
                      "dtype": plan.dtype, "precision": plan.precision(),
                      "dtypes": {m: plan.dtype_of(m) for m in plan.modes},
                      **({"n_layers": plan.n_layers} if is_layer else {})},
            **({"peaks": ceilings.to_dict() if ceilings else None,
                "capacity_bytes": capacity} if is_layer else {}),
            "plan": plan.to_dict(),
            "warnings": warnings,
            "phases": ([idle] if idle else []) + measured,
            "impl_comparison": impl_comparison(measured),
            "verdict": (None if not complete else
                        layer_verdict(measured, plan=plan, counters=sampler.kind,
                                      device=device_name, idle=idle, backend=be.name,
                                      peaks=ceilings) if is_layer else
                        verdict(measured, counters=sampler.kind, device=device_name, idle=idle,
                                backend=be.name)),
            "sampler": {"interval_ms": plan.interval_ms, "overhead": sampler.overhead(),
                        "unavailable": sampler.unavailable,
                        "metrics": {m.name: {"unit": m.unit, "description": m.description}
                                    for m in sampler.backend.metrics}},
        }

    def save_counters() -> None:
        """counters.csv: the samples kept from before a resume, then this process's, on one
        time axis."""
        offset = sampler.origin_unix - origin_unix
        runstore.atomic_write_text(run_dir.counters_path,
                                   _csv_header(sampler) + before["counters_csv"]
                                   + sampler.csv_text(header=False, t_offset_s=offset))

    def checkpoint(idle: PhaseRow | None, status: str = "running") -> dict:
        """contrast.json and counters.csv as they stand, for a crash or a resume."""
        rows = [row_of(r, idle) for r in runs]
        doc = document(rows, idle, status)
        runstore.atomic_write_text(run_dir.path / runstore.CONTRAST, dumps(doc) + "\n")
        save_counters()
        return doc

    def row_of(run: PhaseRun, idle: PhaseRow | None) -> PhaseRow:
        """A phase's row: skipped, failed, or measured (with the layer's metrics), each with
        the dtype its mode runs in."""
        dtype = plan.dtype_of(run.mode)
        if run.skipped:
            return skipped_row(run, dtype)
        if run.error:
            return error_row(run, dtype)
        row = phase_row(sampler, run.phase, run, idle_power(idle), dtype)
        if is_layer:
            row["point"] = run.point
            layer_mod.layer_metrics(row, run.info, run.latencies_s, peaks=ceilings,
                                    capacity_bytes=capacity, dtype=dtype)
        return row

    def builder(ph, index: int):
        """The step builder of a planned phase."""
        if is_layer:
            def build():
                """The layer phase's step, FLOPs and what its row needs."""
                built = layer_mod.build_step(plan, ph, data_seed=plan.seed + index,
                                             device=be.device)
                return built.step, built.flops, {"tokens": built.tokens,
                                                 "bytes": built.bytes,
                                                 "footprint": built.footprint}
            return build
        return lambda: ffn_step(workloads, ph.mode, cfg, impl=ph.impl, batch=ph.batch,
                                data_seed=plan.seed + index, seed=plan.seed,
                                dtype=torch_dtype(plan.dtype_of(ph.mode)),
                                device=be.device)

    with sampler:
        counter_info = sampler.backend.info()
        origin_unix = before["counters_origin_unix"] or sampler.origin_unix
        idle = idle_kept
        try:
            if plan.idle_s > 0 and idle is None:
                say(f"idle baseline ({plan.idle_s:g} s)")
                idle_phase = sleep_phase(sampler, ranges, "idle", "idle", plan.idle_s)
                idle = phase_row(sampler, idle_phase, None, None)
                checkpoint(idle)
            for index, ph in enumerate(planned, 1):
                name = ph.name
                if name in kept:
                    say(f"[{index}/{total}] {name}: already measured")
                    continue
                if name in skipped:
                    say(f"[{index}/{total}] {name}: skipped, {skipped[name]}")
                    runs.append(PhaseRun(name=name, mode=ph.mode, impl=ph.impl,
                                         batch=ph.batch, point=ph.point(),
                                         skipped=skipped[name]))
                    checkpoint(idle)
                    continue
                say(f"[{index}/{total}] {name}: warm-up, {plan.duration_s:g} s measured, "
                    f"{plan.cooldown_s:g} s cool-down")
                run = measure(sampler, ranges, plan, ph, builder(ph, index),
                              backend_name=be.name)
                if run.error:
                    say(f"  failed: {run.error}")
                runs.append(run)
                checkpoint(idle)
        except KeyboardInterrupt:
            interrupted = True
            say(f"interrupted: {len(kept) + len(runs)} of {total} phases are kept; continue "
                f"with --resume --out {run_dir.path}")
    run_dir.update_manifest(counters=counter_info)

    # The rows again from the stopped sampler, with every sample of each window in.
    if idle_phase is not None:
        idle = phase_row(sampler, idle_phase, None, None)
    status = "interrupted" if interrupted else "complete"
    rows = [row_of(run, idle) for run in runs]
    doc = document(rows, idle, status)
    save_counters()
    title = (f"contrast on {device_name} ({be.label}), "
             + (f"{plan.n_layers}-layer decoder {plan.model_size}" if is_layer
                else f"model {plan.model_size}") + f", {plan.precision()}")
    if before["phases"]:
        title += " (the part measured after the last resume)"
    files = {"manifest": runstore.MANIFEST, "counters": runstore.COUNTERS,
             "contrast": runstore.CONTRAST,
             "timeline": timeline_mod.plot_timeline(sampler, run_dir.path / "timeline.png",
                                                    title=title).name,
             "trace": timeline_mod.write_trace(sampler, run_dir.path / "trace.json",
                                               metadata={"run_id": manifest["run_id"],
                                                         "device": device_name,
                                                         "backend": be.name}).name}
    doc["files"] = files
    runstore.atomic_write_text(run_dir.path / runstore.CONTRAST, dumps(doc) + "\n")
    run_dir.update_manifest(status=status, end_time=runstore.now_iso(), files=files)
    doc["out"] = str(run_dir.path)
    return doc


def idle_power(idle: Mapping | None) -> float | None:
    """The idle baseline's average power, or None."""
    return idle.get("avg_power_w") if idle else None


def _csv_header(sampler) -> str:
    """counters.csv's header line for this sampler's metrics."""
    buf = io.StringIO()
    csv.writer(buf).writerow(["t_s", "time_unix", "phase", *sampler.metric_names])
    return buf.getvalue()


def _in_plan_order(plan, rows: Mapping[str, PhaseRow]) -> list[PhaseRow]:
    """The measured phases' rows in the order the plan runs them (a resumed run's rows
    come from two or more processes)."""
    order = [ph.name for ph in plan.phases()]
    return [rows[name] for name in order if name in rows]
