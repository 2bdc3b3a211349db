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
timeline (timeline.png) and Chrome/Perfetto trace (trace.json) of the counters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
                 ranges: RangeFactory | None = None) -> dict:
    """Run the contrast and write the run directory ``out_dir``; returns contrast.json's
    document. Options left None take the backend's defaults (:data:`DEFAULTS`); bad options
    and an unwritable ``out_dir`` raise UsageError before anything runs. ``counters``:
    ``auto`` (NVML on a GPU, with a warning and the CPU backend when NVML is missing),
    ``nvml`` or ``cpu``. ``workloads(mode, cfg, impl=, dtype=, device=, seed=)`` builds a
    workload (default: the lab's). ``progress`` receives one line per phase of the run.
    ``ranges(name)`` opens a range around each phase (default: NVTX on CUDA, nothing under
    the interpreter)."""
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
    manifest = runstore.build_manifest(kind="contrast", backend=be, device=device_info,
                                       argv=argv if argv is not None else runstore.command_argv(),
                                       options=plan.to_dict())
    try:
        run_dir = runstore.RunDir.create(out_dir, manifest)
    except OSError as exc:
        raise UsageError(f"cannot write the run directory {str(out_dir)!r}: "
                         f"{exc.strerror or exc}") from None

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
    runs: list[PhaseRun] = []
    idle_phase = None
    total = len(plan.modes) * len(plan.batches) * len(plan.impls)
    with sampler:
        counter_info = sampler.backend.info()
        if plan.idle_s > 0:
            say(f"idle baseline ({plan.idle_s:g} s)")
            idle_phase = sleep_phase(sampler, ranges, "idle", "idle", plan.idle_s)
        index = 0
        for mode in plan.modes:
            for batch in plan.batches:
                for impl in plan.impls:
                    index += 1
                    say(f"[{index}/{total}] {mode}/{impl}/b{batch}: warm-up, "
                        f"{plan.duration_s:g} s measured, {plan.cooldown_s:g} s cool-down")
                    run = measure(sampler, ranges, workloads, plan, cfg, mode, impl, batch,
                                  index, dtype=torch_dtype, device=be.device,
                                  backend_name=be.name)
                    if run.error:
                        say(f"  failed: {run.error}")
                    runs.append(run)
    run_dir.update_manifest(counters=counter_info)

    idle = phase_row(sampler, idle_phase, None, None) if idle_phase else None
    idle_power = idle.get("avg_power_w") if idle else None
    rows: list[PhaseRow] = [error_row(run) if run.error else
                            phase_row(sampler, run.phase, run, idle_power) for run in runs]
    device_name = device_info.get("name") or "this device"
    doc = {
        "schema_version": runstore.SCHEMA_VERSION,
        "kind": "contrast",
        "run_id": manifest["run_id"],
        "backend": be.name,
        "backend_label": be.label,
        "device": device_name,
        "counters": sampler.kind,
        "counters_info": counter_info,
        "model": {"size": plan.model_size, **cfg.to_dict(), "dtype": plan.dtype},
        "plan": plan.to_dict(),
        "warnings": warnings,
        "phases": ([idle] if idle else []) + rows,
        "impl_comparison": impl_comparison(rows),
        "verdict": verdict(rows, counters=sampler.kind, device=device_name, idle=idle,
                           backend=be.name),
        "sampler": {"interval_ms": plan.interval_ms, "overhead": sampler.overhead(),
                    "unavailable": sampler.unavailable,
                    "metrics": {m.name: {"unit": m.unit, "description": m.description}
                                for m in sampler.backend.metrics}},
    }
    sampler.write_csv(run_dir.counters_path)
    title = f"contrast on {device_name} ({be.label}), model {plan.model_size}, {plan.dtype}"
    files = {"manifest": runstore.MANIFEST, "counters": runstore.COUNTERS,
             "contrast": "contrast.json",
             "timeline": timeline_mod.plot_timeline(sampler, run_dir.path / "timeline.png",
                                                    title=title).name,
             "trace": timeline_mod.write_trace(sampler, run_dir.path / "trace.json",
                                               metadata={"run_id": manifest["run_id"],
                                                         "device": device_name,
                                                         "backend": be.name}).name}
    doc["files"] = files
    (run_dir.path / "contrast.json").write_text(dumps(doc) + "\n")
    run_dir.update_manifest(status="complete", end_time=runstore.now_iso(), files=files)
    doc["out"] = str(run_dir.path)
    return doc
