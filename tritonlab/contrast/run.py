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
from tritonlab.contrast.decide import impl_comparison, verdict
from tritonlab.contrast.phases import (
    PhaseRun,
    RangeFactory,
    WorkloadFactory,
    lab_workloads,
    measure,
    nvtx_ranges,
    sleep_phase,
)
from tritonlab.contrast.plan import IMPLS, MODES, make_plan
from tritonlab.contrast.rows import PhaseRow, error_row, phase_row
from tritonlab.errors import UsageError
from tritonlab.hw import counters as counters_mod
from tritonlab.hw import devices, nvml
from tritonlab.ops.contract import DTYPES
from tritonlab.output import dumps
from tritonlab.report import timeline as timeline_mod
from tritonlab.runs import store as runstore
from tritonlab.workloads.model import MLPConfig


def run_contrast(out_dir, *, batches: Sequence[int] | None = None,
                 duration_s: float | None = None, model_size: str | None = None,
                 impls: Sequence[str] = IMPLS, modes: Sequence[str] = MODES,
                 dtype: str | None = None, warmup_s: float | None = None,
                 idle_s: float | None = None, cooldown_s: float | None = None,
                 interval_ms: float = 1e3 * counters_mod.DEFAULT_INTERVAL_S,
                 counters: str = "auto", seed: int = 0,
                 progress: Callable[[str], None] | None = None,
                 argv: Sequence[str] | None = None,
                 workloads: WorkloadFactory = lab_workloads,
                 ranges: RangeFactory | None = None, resume: bool = False,
                 part_of: Mapping | None = None) -> dict:
    """Run the contrast and write the run directory ``out_dir``; returns contrast.json's
    document. Options left None take the backend's defaults (:data:`DEFAULTS`); bad options
    and an unwritable ``out_dir`` raise UsageError before anything runs. ``counters``:
    ``auto`` (NVML on a GPU, with a warning and the CPU backend when NVML is missing),
    ``nvml`` or ``cpu``. ``workloads(mode, cfg, impl=, dtype=, device=, seed=)`` builds a
    workload (default: the lab's). ``progress`` receives one line per phase of the run.
    ``ranges(name)`` opens a range around each phase (default: NVTX on CUDA, nothing under
    the interpreter). ``part_of``: the job the run is written for (the demo's marker).

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
    plan, warnings = make_plan(be.name, batches=batches, duration_s=duration_s,
                               model_size=model_size, impls=impls, modes=modes, dtype=dtype,
                               warmup_s=warmup_s, idle_s=idle_s, cooldown_s=cooldown_s,
                               interval_ms=interval_ms, seed=seed)
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
    cfg = MLPConfig.from_size(plan.model_size)
    torch_dtype = DTYPES[plan.dtype]
    # Under the interpreter the kernels run on the CPU: the CPU is what is measured.
    kind = counters if be.is_gpu else "cpu"
    ids = nvml.cuda_device_ids(device_info["index"]) if be.is_gpu else nvml.DeviceIds()

    def warn(message: str) -> None:
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
    total = len(plan.modes) * len(plan.batches) * len(plan.impls)

    def document(rows: list[PhaseRow], idle: PhaseRow | None, status: str) -> dict:
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
            "model": {"size": plan.model_size, **cfg.to_dict(), "dtype": plan.dtype},
            "plan": plan.to_dict(),
            "warnings": warnings,
            "phases": ([idle] if idle else []) + measured,
            "impl_comparison": impl_comparison(measured),
            "verdict": verdict(measured, counters=sampler.kind, device=device_name, idle=idle,
                               backend=be.name) if complete else None,
            "sampler": {"interval_ms": plan.interval_ms, "overhead": sampler.overhead(),
                        "unavailable": sampler.unavailable,
                        "metrics": {m.name: {"unit": m.unit, "description": m.description}
                                    for m in sampler.backend.metrics}},
        }

    def save_counters() -> None:
        offset = sampler.origin_unix - origin_unix
        runstore.atomic_write_text(run_dir.counters_path,
                                   _csv_header(sampler) + before["counters_csv"]
                                   + sampler.csv_text(header=False, t_offset_s=offset))

    def checkpoint(idle: PhaseRow | None, status: str = "running") -> dict:
        """contrast.json and counters.csv as they stand, for a crash or a resume."""
        rows = [error_row(r) if r.error else phase_row(sampler, r.phase, r, idle_power(idle))
                for r in runs]
        doc = document(rows, idle, status)
        runstore.atomic_write_text(run_dir.path / runstore.CONTRAST, dumps(doc) + "\n")
        save_counters()
        return doc

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
            index = 0
            for mode in plan.modes:
                for batch in plan.batches:
                    for impl in plan.impls:
                        index += 1
                        name = f"{mode}/{impl}/b{batch}"
                        if name in kept:
                            say(f"[{index}/{total}] {name}: already measured")
                            continue
                        say(f"[{index}/{total}] {mode}/{impl}/b{batch}: warm-up, "
                            f"{plan.duration_s:g} s measured, {plan.cooldown_s:g} s cool-down")
                        run = measure(sampler, ranges, workloads, plan, cfg, mode, impl, batch,
                                      index, dtype=torch_dtype, device=be.device,
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
    rows = [error_row(run) if run.error else phase_row(sampler, run.phase, run, idle_power(idle))
            for run in runs]
    doc = document(rows, idle, status)
    save_counters()
    title = f"contrast on {device_name} ({be.label}), model {plan.model_size}, {plan.dtype}"
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
    return idle.get("avg_power_w") if idle else None


def _csv_header(sampler) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(["t_s", "time_unix", "phase", *sampler.metric_names])
    return buf.getvalue()


def _in_plan_order(plan, rows: Mapping[str, PhaseRow]) -> list[PhaseRow]:
    """The measured phases' rows in the order the plan runs them (a resumed run's rows
    come from two or more processes)."""
    order = [f"{m}/{i}/b{b}" for m in plan.modes for b in plan.batches for i in plan.impls]
    return [rows[name] for name in order if name in rows]
