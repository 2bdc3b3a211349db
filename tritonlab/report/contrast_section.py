"""The training-vs-inference section of a report, from a run's ``contrast.json`` (written by
:mod:`tritonlab.contrast.run`), its ``counters.csv`` and its ``timeline.png``."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Mapping
from pathlib import Path

from tritonlab.report.document import Banner, Block, Bullets, Figure, Heading, Para, Table
from tritonlab.report.plots import NoPoints, plot_phase_bars
from tritonlab.report.sections import figure_caption, slug
from tritonlab.report.summary import verdict_lines
from tritonlab.runs.store import Run

_PHASE_COLUMNS = (
    ("steps", "steps"), ("throughput_samples_s", "samples/s"),
    ("latency_p50_ms", "p50 ms"), ("latency_p99_ms", "p99 ms"), ("tflops", "TFLOP/s"),
    ("energy_per_sample_j", "J/sample"), ("avg_power_w", "W avg"), ("p95_power_w", "W p95"),
    ("power_share_pct", "% power limit"), ("sm_clock_mhz", "SM MHz"),
    ("gpm_sm_util_pct", "SM %"), ("gpm_tensor_util_pct", "tensor %"),
    ("gpm_dram_bw_util_pct", "DRAM BW %"), ("gpu_util_pct", "GPU busy %"),
    ("proc_cpu_pct", "CPU %"), ("sys_cpu_pct", "system CPU %"), ("cpu_freq_mhz", "CPU MHz"),
    ("peak_mem_mib", "peak MiB"), ("temp_rise_c", "temp rise C"),
    ("throttled_pct", "% throttled"),
)
_PHASE_PANELS = (
    ("throughput_samples_s", "throughput (samples/s)"),
    ("latency_p50_ms", "latency p50 (ms)"),
    ("avg_power_w", "average power (W)"),
    ("power_share_pct", "power (% of limit)"),
    ("energy_per_sample_j", "energy per sample (J)"),
    ("gpm_sm_util_pct", "SM utilisation (%)"),
    ("gpm_tensor_util_pct", "tensor-pipe utilisation (%)"),
    ("gpm_dram_bw_util_pct", "DRAM bandwidth utilisation (%)"),
    ("gpu_util_pct", "GPU busy (%)"),
    ("proc_cpu_pct", "process CPU (% of a core)"),
    ("peak_mem_mib", "peak memory (MiB)"),
)


def contrast(runs: list[Run], fig_dir: Path) -> list[Block]:
    """The training-vs-inference section from contrast.json (written by
    :mod:`tritonlab.contrast.run`): verdict, phase table, bars, kernel-vs-baseline
    ratios, the counter timeline. Every key is optional."""
    with_contrast = [r for r in runs if r.contrast is not None]
    if not with_contrast:
        return []
    blocks: list[Block] = []
    for run in with_contrast:
        if len(with_contrast) > 1:
            blocks.append(Heading(3, f"Run {run.label}"))
        doc = run.contrast or {}
        backend = str(doc.get("backend") or run.backend)
        device = str(doc.get("device") or run.device)
        if backend != "cuda" or doc.get("counters") not in (None, "nvml"):
            blocks.append(Banner("This contrast was measured with CPU counters (the kernels "
                                 "ran on the CPU): it describes CPU load, NOT GPU behaviour."))
        model, plan = doc.get("model") or {}, doc.get("plan") or {}
        if model or plan:
            blocks.append(Para(
                f"Model {model.get('size', '?')} (dim {model.get('dim', '?')}, hidden "
                f"{model.get('hidden', '?')}, {model.get('dtype', '?')}); batches "
                f"{', '.join(map(str, plan.get('batches') or [])) or '?'}; "
                f"{plan.get('duration_s', '?')} s per measured phase; counters: "
                f"{doc.get('counters', '?')}."))
        verdict = doc.get("verdict") if isinstance(doc.get("verdict"), Mapping) else {}
        if verdict:
            head, _ = verdict_lines(doc)
            blocks.append(Para(f"Verdict: {head}."))
            explanation = [str(x) for x in verdict.get("explanation") or []]
            if explanation:
                blocks.append(Bullets(explanation))
        phases = [p for p in doc.get("phases") or [] if isinstance(p, Mapping)]
        if phases:
            cols = [(k, h) for k, h in _PHASE_COLUMNS if any(p.get(k) is not None for p in phases)]
            blocks.append(Table(["phase", "mode", "impl", "batch", *[h for _, h in cols],
                                 "error"],
                                [[p.get("name"), p.get("mode"), p.get("impl"), p.get("batch"),
                                  *[p.get(k) for k, _ in cols], p.get("error")]
                                 for p in phases]))
            path = fig_dir / f"train-vs-infer-{slug(run.label)}.png"
            try:
                plot_phase_bars(phases, _PHASE_PANELS,
                                         title=f"Training vs inference, run {run.label}",
                                         backend=backend, device=device, path=path)
            except NoPoints as exc:
                blocks.append(Para(f"No training-vs-inference plot: {exc}."))
            else:
                blocks.append(Figure(path, figure_caption(run, "training vs inference")))
        comparison = [c for c in doc.get("impl_comparison") or [] if isinstance(c, Mapping)]
        if comparison:
            blocks.append(Para("The lab's kernels against the baseline in each regime "
                               "(ratios > 1: more throughput, more latency, more energy per "
                               "sample than the baseline):"))
            blocks.append(Table(["mode", "batch", "impl", "baseline", "throughput x",
                                 "p50 latency x", "energy/sample x"],
                                [[c.get("mode"), c.get("batch"), c.get("impl"),
                                  c.get("baseline"), c.get("throughput_ratio"),
                                  c.get("latency_p50_ratio"), c.get("energy_per_sample_ratio")]
                                 for c in comparison]))
        notes = [str(w) for w in doc.get("warnings") or []]
        if notes:
            blocks += [Para("Warnings of the contrast:"), Bullets(notes)]
        if run.timeline_png:
            copy = fig_dir / f"timeline-{slug(run.label)}.png"
            shutil.copyfile(run.timeline_png, copy)
            blocks.append(Figure(copy, figure_caption(run, "counter timeline")))
        if run.counters_csv:
            blocks += counters_summary(run.counters_csv)
    return blocks


def counters_summary(path: Path) -> list[Block]:
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            phases = [rec.get("phase") or "" for rec in reader]
    except (OSError, csv.Error) as exc:
        return [Para(f"counters.csv could not be read: {exc}")]
    metrics = [c for c in columns if c not in ("time", "t", "t_s", "time_s", "time_unix",
                                               "phase")]
    return [Para(f"`counters.csv` (beside the contrast's manifest): {len(phases)} samples over "
                 f"{len(set(phases) - {''})} phases; metrics: {', '.join(metrics) or 'none'}.")]
