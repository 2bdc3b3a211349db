"""The training-vs-inference section of a report, from a run's ``contrast.json`` (written by
:mod:`tritonlab.contrast.run`), its ``counters.csv`` and its ``timeline.png``. A layer
contrast (``--model layer``) also gets its three regimes on one roofline of the device and
its memory footprint per regime against the card's capacity."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Mapping
from pathlib import Path

from tritonlab.hw.specs import Ceilings, Peaks
from tritonlab.report.document import Banner, Block, Bullets, Figure, Heading, Para, Table
from tritonlab.report.plots import (
    NoPoints,
    figure_label,
    plot_phase_bars,
    plot_roofline,
    save_figure,
    subplots,
)
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
    # the layer contrast's
    ("tokens_per_s", "tokens/s"), ("compute_pct", "% compute peak"),
    ("achieved_gbps", "GB/s"), ("bandwidth_pct", "% bandwidth peak"),
    ("arithmetic_intensity", "FLOP/B"), ("energy_per_token_j", "J/token"),
    ("footprint_bytes", "footprint B"), ("capacity_pct", "% capacity"),
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
        is_layer = model.get("name") == "layer"
        if is_layer:
            blocks.append(Para(
                f"Decoder layer {model.get('size', '?')} x {model.get('n_layers', '?')} (dim "
                f"{model.get('dim', '?')}, hidden {model.get('hidden', '?')}, "
                f"{_precision(model)}) as training, prefill and decode on the same "
                f"weights; {plan.get('duration_s', '?')} s per measured phase; counters: "
                f"{doc.get('counters', '?')}."))
        elif model or plan:
            blocks.append(Para(
                f"Model {model.get('size', '?')} (dim {model.get('dim', '?')}, hidden "
                f"{model.get('hidden', '?')}, {_precision(model)}); batches "
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
            # Each phase's own dtype: an fp8 contrast mixes fp8 inference with 16-bit
            # training, each against its dtype's peak (rows written before per-phase dtypes
            # ran in the model's).
            blocks.append(Table(["phase", "mode", "impl", "batch", "dtype",
                                 *[h for _, h in cols], "error"],
                                [[p.get("name"), p.get("mode"), p.get("impl"), p.get("batch"),
                                  p.get("dtype") or (model.get("dtype")
                                                     if p.get("mode") != "idle" else None),
                                  *[p.get(k) for k, _ in cols],
                                  p.get("error") or p.get("skipped")]
                                 for p in phases]))
        if phases and is_layer:
            blocks += _layer_figures(run, doc, phases, backend, device, fig_dir)
        elif phases:
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


def _precision(model: Mapping) -> str:
    """The contrast's dtypes in words ("inference fp8 (...), training bfloat16" for an fp8
    run; the one dtype of a run written before per-mode dtypes)."""
    return str(model.get("precision") or model.get("dtype") or "?")


# The footprint's parts, bottom to top, and their colours.
_FOOTPRINT_PARTS = (("weights", "#4c72b0"), ("gradients", "#dd8452"),
                    ("optimizer", "#c44e52"), ("activations", "#8172b3"),
                    ("kv_cache", "#55a868"))


def _layer_figures(run: Run, doc: Mapping, phases: list[Mapping], backend: str, device: str,
                   fig_dir: Path) -> list[Block]:
    """The layer contrast's roofline (one marker per regime) and footprint figures."""
    blocks: list[Block] = []
    measured = [p for p in phases if not p.get("error") and not p.get("skipped")]
    ceilings = Ceilings.from_dict(doc.get("peaks"))
    peaks = None
    if ceilings is not None:
        spec = ceilings.source.startswith("spec")
        peaks = Peaks(device=device, backend=backend, spec=ceilings if spec else None,
                      measured=None if spec else ceilings)
    # plot_roofline's rows: the regime as the op (one colour family per regime, its impls
    # in shades) and a mode whose marker tells the regimes apart (training filled).
    marker_mode = {"train": "fwd_bwd", "prefill": "infer", "decode": "decode"}
    # Each phase's own dtype (the model's for rows written before per-phase dtypes): each
    # dtype has its own compute roof, so an fp8 contrast draws the fp8 and 16-bit roofs.
    dtype = (doc.get("model") or {}).get("dtype")
    rows = [{"op": p.get("mode"), "impl": p.get("impl"), "mode": marker_mode.get(p.get("mode")),
             "dtype": p.get("dtype") or dtype, "shape": p.get("point") or {"batch": p.get("batch")},
             "tflops": p.get("tflops"), "intensity": p.get("arithmetic_intensity"),
             "flops": p.get("flops_per_step")} for p in measured]
    path = fig_dir / f"layer-roofline-{slug(run.label)}.png"
    try:
        plot_roofline(rows, peaks, backend=backend, device=device, path=path,
                      title=f"Decoder layer: train, prefill, decode, run {run.label}")
    except NoPoints as exc:
        blocks.append(Para(f"No layer roofline: {exc}."))
    else:
        blocks.append(Figure(path, figure_caption(run, "the three regimes on one roofline")))
    path = fig_dir / f"layer-footprint-{slug(run.label)}.png"
    try:
        plot_footprint(measured, doc.get("capacity_bytes"), backend=backend, device=device,
                       path=path, title=f"Memory footprint per regime, run {run.label}")
    except NoPoints as exc:
        blocks.append(Para(f"No footprint figure: {exc}."))
    else:
        blocks.append(Figure(path, figure_caption(run, "memory footprint per regime")))
    return blocks


def plot_footprint(phases: list[Mapping], capacity_bytes: int | None, *, backend: str,
                   device: str, path: Path, title: str) -> Path:
    """Stacked bars of each grid point's footprint by part (weights, gradients, optimizer
    state, saved activations, KV cache) in GiB (MiB when all are under 1 GiB), one bar per
    (regime, point) (the lab impl's, where both ran: the parts are the same but for torch
    training's measured activations), with the card's capacity as a line, or a note that
    it is unknown.
    Raises :class:`NoPoints` when no phase has a footprint."""
    bars: dict[str, Mapping] = {}
    for p in sorted(phases, key=lambda p: p.get("impl") != "triton"):
        if isinstance(p.get("footprint"), Mapping):
            label = f"{p.get('mode')} " + str(p["name"]).rsplit("/", 1)[-1]
            bars.setdefault(label, p["footprint"])
    if not bars:
        raise NoPoints(f"no phase with a footprint for {title}")
    largest = max([fp.get("total", 0) for fp in bars.values()] + [capacity_bytes or 0])
    unit, scale = ("GiB", 2**30) if largest >= 2**30 else ("MiB", 2**20)
    fig, ax = subplots(figsize=(max(6.0, 1.1 * len(bars) + 3), 5.0), dpi=110)
    x = range(len(bars))
    bottom = [0.0] * len(bars)
    for part, color in _FOOTPRINT_PARTS:
        heights = [fp.get(part, 0) / scale for fp in bars.values()]
        if any(heights):
            ax.bar(x, heights, bottom=bottom, color=color, label=part, width=0.6)
            bottom = [b + h for b, h in zip(bottom, heights)]
    if capacity_bytes:
        ax.axhline(capacity_bytes / scale, color="firebrick", ls="--", lw=1.4,
                   label=f"capacity {capacity_bytes / scale:.3g} {unit}")
        for i, total in enumerate(bottom):
            ax.annotate(f"{100 * total * scale / capacity_bytes:.2g}%", (i, total),
                        xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    else:
        ax.set_ylim(0, 1.12 * max(bottom))  # room for the note above the bars
        ax.text(0.5, 0.97, "the device's memory capacity is unknown (not a GPU)",
                transform=ax.transAxes, ha="center", va="top", fontsize=9, color="firebrick")
    ax.set_xticks(list(x))
    ax.set_xticklabels(list(bars), rotation=20, ha="right", fontsize=9)
    ax.set_ylabel(unit)
    ax.grid(True, axis="y", color="0.88")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    ax.set_title(f"{title}\n{figure_label(backend, device)}", fontsize=11)
    return save_figure(fig, path)


def counters_summary(path: Path) -> list[Block]:
    """One paragraph on counters.csv: its samples, phases and metrics."""
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
