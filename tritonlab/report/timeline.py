"""The counters of a run over time: a PNG timeline (power, clocks, utilisation, and
temperature or memory, with the phases shaded) and a Chrome trace-event JSON of the same data
that opens in Perfetto (ui.perfetto.dev) or chrome://tracing.

Both read a finished :class:`tritonlab.hw.counters.Sampler`: its samples, GPM windows
and phases. Trace format: counter events (``"ph": "C"``) on one track per unit (the event's
``args`` hold one series per metric), phases as complete events (``"ph": "X"``) on their own
thread; times in microseconds since the sampler started. The PNG is drawn on a figure of its
own Agg canvas (no pyplot), so no GUI backend is involved.
"""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from tritonlab.hw.counters import GPM_METRICS, Sampler

# Panels of the PNG: (title, unit label, metrics).
NVML_PANELS = (
    ("power", "W", ("power_instant_w", "power_w", "power_limit_w")),
    ("clocks", "MHz", ("sm_clock_mhz", "mem_clock_mhz")),
    ("utilisation", "%", ("gpu_util_pct", "mem_util_pct", "gpm_sm_util_pct",
                          "gpm_tensor_util_pct", "gpm_dram_bw_util_pct")),
    ("temperature", "C", ("temp_c",)),
)
CPU_PANELS = (
    ("package power (RAPL)", "W", ("power_w",)),
    ("CPU frequency", "MHz", ("cpu_freq_mhz",)),
    ("utilisation", "%", ("proc_cpu_pct", "sys_cpu_pct")),
    ("resident memory", "MiB", ("rss_mib",)),
)
PHASE_COLORS = {"idle": "#9e9e9e", "setup": "#d1c4e9", "warmup": "#ffe082",
                "train": "#ef9a9a", "infer": "#90caf9", "cooldown": "#e0f2f1",
                "point": "#c5e1a5"}
TRACK_NAMES = {"W": "power (W)", "J": "energy (J)", "MHz": "clocks (MHz)",
               "%": "utilisation (%)", "MiB": "memory (MiB)", "C": "temperature (C)",
               "bitmask": "throttle reasons (bitmask)"}
_GPM = {m.name for m in GPM_METRICS}


def _series(sampler: Sampler, name: str) -> tuple[list[float], list[float]]:
    """(times, values) of one metric; a GPM value is drawn at the middle of its window."""
    if name in _GPM:
        pts = [((a + b) / 2, v[name]) for a, b, v in sampler.gpm_windows
               if v.get(name) is not None]
    else:
        pts = [(s["t"], s[name]) for s in sampler.samples if s.get(name) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_timeline(sampler: Sampler, path: str | Path, *, title: str = "") -> Path:
    """Write the PNG timeline of a stopped sampler to ``path``; returns the path.

    One panel per group of metrics that has samples, every panel shaded by phase (the colour
    says the kind: train, infer, idle...; the top panel names the measured phases). Groups
    with no samples get one line under the title saying why, not an empty panel."""
    path = Path(path)
    groups = NVML_PANELS if sampler.kind == "nvml" else CPU_PANELS
    series = {name: _series(sampler, name) for _, _, names in groups for name in names}
    panels = [g for g in groups if any(series[n][0] for n in g[2])]
    missing = [f"{panel}: " + "; ".join(sorted({sampler.unavailable.get(n, "no samples")
                                                for n in names}))
               for panel, unit, names in groups if (panel, unit, names) not in panels]
    shown = panels or groups[:1]  # an axis to carry the phases even when nothing was sampled
    fig = Figure(figsize=(12, 1.9 * len(shown) + 1.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(shown), 1, sharex=True, squeeze=False)[:, 0]
    end = max([s["t"] for s in sampler.samples] + [p.end_s or 0.0 for p in sampler.phases]
              + [1e-3])
    for ax, (panel, unit, names) in zip(axes, shown):
        drawn = []
        for name in names:
            ts, vs = series[name]
            if not ts:
                continue
            style = "--" if name == "power_limit_w" else "-"
            marker = "o" if name in _GPM else None
            ax.plot(ts, vs, style, marker=marker, markersize=3, linewidth=1.1, label=name,
                    zorder=3)
            drawn.append(name)
        ax.set_ylabel(f"{panel}\n({unit})", fontsize=9)
        if drawn:
            ax.legend(loc="upper left", fontsize=7, ncols=min(len(drawn), 5), framealpha=0.8)
        ax.grid(alpha=0.3)
        for ph in sampler.phases:
            if ph.end_s is not None:
                ax.axvspan(ph.start_s, ph.end_s, color=PHASE_COLORS.get(ph.kind, "#eeeeee"),
                           alpha=0.45, linewidth=0, zorder=0)
    top = axes[0]
    for ph in sampler.phases:
        if ph.end_s is not None and ph.kind in ("idle", "train", "infer", "point"):
            top.text((ph.start_s + ph.end_s) / 2, 1.02, ph.name,
                     transform=top.get_xaxis_transform(), rotation=45, ha="left", va="bottom",
                     fontsize=7)
    kinds = list(dict.fromkeys(ph.kind for ph in sampler.phases))
    if kinds:
        # below the time axis ("outside"), where it cannot cover a curve or the axis label
        fig.legend(handles=[Patch(color=PHASE_COLORS.get(k, "#eeeeee"), alpha=0.6, label=k)
                            for k in kinds], loc="outside lower center", ncols=len(kinds),
                   fontsize=8, title="phase (shaded)", title_fontsize=8)
    axes[-1].set_xlabel("time since the sampler started (s)")
    axes[-1].set_xlim(0, end)
    heading = title or f"counters ({sampler.kind})"
    if missing:
        heading += "\nnot sampled: " + " · ".join(missing)
    fig.suptitle(heading, fontsize=10)
    fig.savefig(path, dpi=110)
    return path


def trace_events(sampler: Sampler, metadata: dict | None = None) -> dict:
    """The trace-event document (a dict ready for json.dump)."""
    units = {m.name: m.unit for m in sampler.backend.metrics}
    tracks: dict[str, list[str]] = {}
    for name, unit in units.items():
        if name not in _GPM:
            tracks.setdefault(TRACK_NAMES.get(unit, unit), []).append(name)
    pid, counters_tid, phases_tid = 1, 0, 1
    events: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": pid,
         "args": {"name": f"tritonlab counters ({sampler.kind})"}},
        {"name": "thread_name", "ph": "M", "pid": pid, "tid": counters_tid,
         "args": {"name": "counters"}},
        {"name": "thread_name", "ph": "M", "pid": pid, "tid": phases_tid,
         "args": {"name": "phases"}},
    ]
    for s in sampler.samples:
        ts = s["t"] * 1e6
        for track, names in tracks.items():
            args = {n: s[n] for n in names if s.get(n) is not None}
            if args:
                events.append({"name": track, "ph": "C", "ts": ts, "pid": pid,
                               "tid": counters_tid, "args": args})
    # A counter holds its value until the next event: each GPM value starts its window.
    for a, _b, values in sampler.gpm_windows:
        args = {n: v for n, v in values.items() if v is not None}
        if args:
            events.append({"name": "GPM (%)", "ph": "C", "ts": a * 1e6, "pid": pid,
                           "tid": counters_tid, "args": args})
    for ph in sampler.phases:
        if ph.end_s is None:
            continue
        events.append({"name": ph.name, "cat": ph.kind, "ph": "X", "ts": ph.start_s * 1e6,
                       "dur": (ph.end_s - ph.start_s) * 1e6, "pid": pid, "tid": phases_tid,
                       "args": {k: v for k, v in ph.meta.items()
                                if isinstance(v, (str, int, float, bool))}})
    events.sort(key=lambda e: e.get("ts", -1.0))
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"counters": sampler.kind, "interval_ms": sampler.interval_s * 1e3,
                          "origin_unix": sampler.origin_unix, **(metadata or {})}}


def write_trace(sampler: Sampler, path: str | Path, *, metadata: dict | None = None) -> Path:
    """Write trace.json for a stopped sampler; returns the path."""
    path = Path(path)
    path.write_text(json.dumps(trace_events(sampler, metadata), separators=(",", ":")))
    return path
