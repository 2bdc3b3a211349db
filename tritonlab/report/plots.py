"""The report's figures: the roofline, the speedup per shape, the training-vs-inference bars.

Figures are built with matplotlib's object API (a ``Figure`` on its own Agg canvas), never
through pyplot: no GUI backend is selected, no global pyplot state is touched, and plotting
works without a display.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from tritonlab.errors import UsageError
from tritonlab.hw.devices import Peaks
from tritonlab.report.roofline import compute_key, finite, intensity_of, ridge


class NoPoints(UsageError):
    """A plot was asked for with nothing to put on it (no successful, measured point)."""


TRAINING_MODES = ("fwd", "bwd", "fwd_bwd")
INFERENCE_MODES = ("infer",)
MODE_MARKERS = {"fwd": "^", "bwd": "v", "fwd_bwd": "D", "infer": "o"}
MODE_LABELS = {"fwd": "training fwd", "bwd": "training bwd", "fwd_bwd": "training fwd+bwd",
               "infer": "inference"}
_SOURCE_STYLE = {"spec": "-", "measured": "--"}


def figure_label(backend: str, device: str) -> str:
    """The line every figure carries: backend and device, and for the interpreter the warning
    that its times are not GPU performance."""
    if backend == "cuda":
        return f"backend cuda · {device}"
    return f"backend {backend} (CPU) · {device} · NOT GPU performance"


def shape_label(shape) -> str:
    if isinstance(shape, Mapping):
        return "x".join(str(v) for v in shape.values())
    return str(shape)


def subplots(*args, figsize: tuple[float, float], dpi: int = 110, **kw):
    """A figure on its own Agg canvas and its axes (what ``pyplot.subplots`` returns)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*args, **kw)


def plottable(rows) -> list[dict]:
    """Rows that can be a roofline point: no error, TFLOP/s and intensity known and positive;
    one per (op, impl, mode, dtype, shape), the last one winning (a resumed run may repeat)."""
    points: dict[tuple, dict] = {}
    for row in rows:
        intensity = intensity_of(row)
        tflops = row.get("tflops")
        if row.get("error") is not None or intensity is None or not finite(tflops) or tflops <= 0:
            continue
        key = (row.get("op"), row.get("impl"), row.get("mode"), row.get("dtype"),
               shape_label(row.get("shape")))
        points[key] = {**row, "intensity": intensity}
    return list(points.values())


def _colors(keys):
    cmap = matplotlib.colormaps["tab10" if len(keys) <= 10 else "tab20"]
    return {k: cmap(i % cmap.N) for i, k in enumerate(keys)}


def _family_colors(series: list[tuple]) -> dict[tuple, tuple]:
    """One hue per op (``series`` are (op, impl, ...) tuples), its impls in shades from dark
    to light, so the points of one op read as a family."""
    cmap = matplotlib.colormaps["tab10"]
    ops = list(dict.fromkeys(s[0] for s in series))
    out = {}
    for i, op in enumerate(ops):
        members = [s for s in series if s[0] == op]
        base = to_rgb(cmap(i % cmap.N))
        for j, s in enumerate(members):
            mix = 0.55 * j / max(len(members) - 1, 1)  # up to 55% toward white
            out[s] = tuple(c + (1 - c) * mix for c in base)
    return out


def _draw_ceilings(ax, peaks: Peaks | None, keys: list[str], xmin: float,
                   xmax: float) -> tuple[list[float], list[str]]:
    """Memory roof and one compute roof per dtype key, per source (spec solid, measured
    dashed), each ridge marked with a diamond; returns the roof values drawn (for the y range)
    and one text line per roof (for the ceilings box)."""
    drawn: list[float] = []
    text: list[str] = []
    if peaks is None:
        return drawn, text
    for source in ("spec", "measured"):
        ceilings = peaks.source(source)
        if ceilings is None or not ceilings.bandwidth_gbps:
            continue
        bw = ceilings.bandwidth_gbps
        by_peak: dict[float, list[str]] = {}
        for key in keys:
            peak = ceilings.peak(key)
            if peak:
                by_peak.setdefault(peak, []).append(key)
        if not by_peak:
            continue
        top_ridge = max(ridge(p, bw) for p in by_peak)
        x_mem = [xmin, max(top_ridge, xmin)]
        ax.plot(x_mem, [x * bw / 1e3 for x in x_mem], color="0.2", lw=1.6,
                ls=_SOURCE_STYLE[source], zorder=1)
        text.append(f"{source}: memory {bw:,.0f} GB/s")
        for peak, names in sorted(by_peak.items(), reverse=True):
            r = ridge(peak, bw)
            ax.plot([r, xmax], [peak, peak], color="0.2", lw=1.6, ls=_SOURCE_STYLE[source],
                    zorder=1)
            ax.plot([r], [peak], marker="D", color="0.2", ms=5, zorder=2)
            text.append(f"{source}: {'/'.join(names)} {peak:,.4g} TFLOP/s, "
                        f"ridge {r:,.3g} FLOP/B")
            drawn.append(peak)
    return drawn, text


def _bar_label(v: float) -> str:
    """A speedup as a bar's caption: "1/480x" below 0.5, "0.83x" or "2.4x" otherwise."""
    return f"1/{1 / v:,.0f}x" if v < 0.5 else f"{v:.2g}x"


def _label_ops(ax, fig, points, series_of, colors) -> list:
    """Name the op beside its points, in the op's colour, wherever the name overprints no
    marker, no other name and nothing outside the axes; a name that fits nowhere is left
    out (the legend and the tables name every point anyway). Each op is named once at its
    largest point before any op is named a second time, at its other shapes. Returns the
    names placed (matplotlib annotations)."""
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed = []
    pad = 2.0
    taken = []  # boxes (x0, y0, x1, y1) in pixels: markers and names placed so far
    for p in points:
        at = [p["intensity"]] + ([p["unfused_intensity"]]
                                 if finite(p.get("unfused_intensity")) else [])
        for intensity in at:  # the point and its unfused cross
            x, y = ax.transData.transform((intensity, p["tflops"]))
            taken.append((x - 7, y - 7, x + 7, y + 7))
    for t in ax.texts:  # the ceilings box and any notice drawn on the axes
        b = t.get_window_extent(renderer)
        taken.append((b.x0, b.y0, b.x1, b.y1))
    anchors: dict[tuple, dict] = {}  # (op, shape) -> the lab kernel's point, else any
    for p in sorted(points, key=lambda p: p.get("kind", "triton") != "triton"):
        anchors.setdefault((p["op"], shape_label(p.get("shape"))), p)
    by_op: dict[str, list[dict]] = {}
    for p in anchors.values():
        by_op.setdefault(p["op"], []).append(p)
    rounds = [sorted(ps, key=lambda p: -(p.get("flops") or 0)) for ps in by_op.values()]
    queue = [ps[i] for i in range(max(map(len, rounds))) for ps in rounds if i < len(ps)]
    # clear of the anchor's own marker (9 pt, about 7 px in radius at 110 dpi): beside it,
    # above or below, then diagonally, then one marker further out
    offsets = [(d * dx, d * dy, ha, va) for d in (11, 24) for dx, dy, ha, va in
               ((1, 0, "left", "center"), (-1, 0, "right", "center"),
                (0, 1, "center", "bottom"), (0, -1, "center", "top"),
                (1, 1, "left", "bottom"), (1, -1, "left", "top"),
                (-1, 1, "right", "bottom"), (-1, -1, "right", "top"))]
    for p in queue:
        for dx, dy, ha, va in offsets:
            text = ax.annotate(p["op"], (p["intensity"], p["tflops"]), xytext=(dx, dy),
                               textcoords="offset pixels", ha=ha, va=va, fontsize=8,
                               color=colors[series_of(p)], fontweight="bold", zorder=6,
                               # legible over a roof or a dotted fusion line
                               bbox={"boxstyle": "square,pad=0.1", "fc": "white",
                                     "ec": "none", "alpha": 0.8})
            b = text.get_window_extent(renderer)
            box = (b.x0 - pad, b.y0 - pad, b.x1 + pad, b.y1 + pad)
            inside = (b.x0 >= frame.x0 and b.x1 <= frame.x1 and b.y0 >= frame.y0
                      and b.y1 <= frame.y1)
            if inside and not any(box[0] < t[2] and t[0] < box[2] and box[1] < t[3]
                                  and t[1] < box[3] for t in taken):
                taken.append(box)
                placed.append(text)
                break
            text.remove()
    return placed


def plot_roofline(rows, peaks: Peaks | None, *, backend: str, device: str, path,
                  title: str = "Roofline") -> Path:
    """A log-log roofline of ``rows`` (results rows) against ``peaks``, saved as PNG.

    One point per (op, impl, mode, dtype, shape): colour = op/impl (and dtype when there are
    several, since each dtype has its own compute roof), marker = mode, filled =
    training (fwd, bwd, fwd_bwd), hollow = inference (infer). A row with ``unfused_intensity``
    (an op with a fused path) is drawn a second time, as a grey cross at that intensity, and
    linked to its fused point: the distance is the traffic fusion saves. Raises
    :class:`NoPoints` when no row is plottable.
    """
    points = plottable(rows)
    if not points:
        raise NoPoints(f"no successful measured point to plot for {title} ({device})")
    keys = sorted({compute_key(p) for p in points})
    xs = [p["intensity"] for p in points]
    xs += [p["unfused_intensity"] for p in points if finite(p.get("unfused_intensity"))]
    ys = [p["tflops"] for p in points]
    for source in ("spec", "measured"):
        ceilings = peaks.source(source) if peaks else None
        for key in keys:
            r = ceilings.ridge(key) if ceilings else None
            if r:
                xs.append(r)
    xmin, xmax = min(xs) / 4, max(xs) * 4

    fig, ax = subplots(figsize=(11, 6.5), dpi=110)
    ax.set_xscale("log")
    ax.set_yscale("log")
    roofs, roof_text = _draw_ceilings(ax, peaks, keys, xmin, xmax)

    several_dtypes = len({p.get("dtype") for p in points}) > 1
    p_kind = {(p["op"], p["impl"]): ("a" if p.get("kind", "triton") == "triton" else "b")
              for p in points}

    def series_of(p):  # each dtype has its own roof: tell dtypes apart when there are several
        return (p["op"], p["impl"], p.get("dtype")) if several_dtypes else (p["op"], p["impl"])

    # within an op the lab's kernels first (darkest), baselines after
    series = sorted({series_of(p) for p in points},
                    key=lambda s: (str(s[0]), p_kind.get(s[:2], "z"), tuple(map(str, s[1:]))))
    colors = _family_colors(series)
    for p in points:
        color = colors[series_of(p)]
        mode = p.get("mode")
        training = mode in TRAINING_MODES
        if finite(p.get("unfused_intensity")):
            ax.plot([p["unfused_intensity"], p["intensity"]], [p["tflops"], p["tflops"]],
                    color=color, lw=1, ls=":", zorder=2)
            ax.plot([p["unfused_intensity"]], [p["tflops"]], marker="x", color="0.45", ms=7,
                    mew=1.5, zorder=3)
        ax.plot([p["intensity"]], [p["tflops"]], marker=MODE_MARKERS.get(mode, "s"), ms=9,
                mew=1.8, color=color, mfc=color if training else "white", zorder=4)
    ymin = min(ys) / 4
    ymax = max(ys + roofs) * 3
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    ax.grid(True, which="major", color="0.85", lw=0.8)
    ax.grid(True, which="minor", color="0.93", lw=0.5)
    ax.set_xlabel("arithmetic intensity (FLOP/byte of compulsory DRAM traffic)", fontsize=11)
    ax.set_ylabel("achieved throughput (TFLOP/s)", fontsize=11)
    ax.set_title(f"{title}\n{figure_label(backend, device)}", fontsize=12)

    impl_handles = [Line2D([], [], color=colors[s], marker="s", ls="", ms=9,
                           label=" · ".join(map(str, s))) for s in series]
    modes = sorted({p.get("mode") for p in points}, key=lambda m: list(MODE_MARKERS).index(m)
                   if m in MODE_MARKERS else 99)
    mode_handles = [Line2D([], [], color="0.3", marker=MODE_MARKERS.get(m, "s"), ls="", ms=9,
                           mfc="0.3" if m in TRAINING_MODES else "white",
                           label=MODE_LABELS.get(m, str(m))) for m in modes]
    extra = []
    if peaks is not None:
        extra += [Line2D([], [], color="0.2", ls=_SOURCE_STYLE[s], label=f"{s} ceiling")
                  for s in ("spec", "measured") if peaks.source(s) is not None]
    if any(finite(p.get("unfused_intensity")) for p in points):
        extra.append(Line2D([], [], color="0.45", marker="x", ls=":", ms=7,
                            label="same work at unfused traffic"))
    ax.legend(handles=impl_handles, title="op · impl" + (" · dtype" if several_dtypes else ""),
              loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, title_fontsize=9,
              ncol=1 if len(impl_handles) <= 24 else 2)
    # a figure legend (an axes keeps one legend in its tight bounding box)
    fig.legend(handles=mode_handles + extra, title="filled = training, hollow = inference",
               loc="upper center", bbox_to_anchor=(0.5, -0.11), bbox_transform=ax.transAxes,
               fontsize=9, title_fontsize=9, ncol=min(4, len(mode_handles + extra)))
    if roof_text:
        ax.text(0.01, 0.98, "ceilings (diamond = ridge point)\n" + "\n".join(roof_text),
                transform=ax.transAxes, ha="left", va="top", fontsize=8.5, family="monospace",
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
    if peaks is None:
        ax.text(0.5, 0.97, "no ceilings known for this device: run `tritonlab device "
                "--measure` to measure them", transform=ax.transAxes, ha="center", va="top",
                fontsize=9, color="firebrick")
    _label_ops(ax, fig, points, series_of, colors)
    return save_figure(fig, path)


_SPEEDUP_TICKS = ([2.0**e for e in range(-14, -1)] + [0.35, 0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0,
                                                      3.0, 4.0] + [2.0**e for e in range(3, 13)])


def _ratio_label(v: float) -> str:
    if v < 1 and (1 / v).is_integer() and 1 / v > 2:
        return f"1/{1 / v:.0f}x"
    return f"{v:.2g}x"


def plot_speedups(rows, *, op: str, backend: str, device: str, path) -> Path:
    """Speedup of each implementation over each baseline (``row["speedup"]``: baseline ->
    baseline time / impl time) as bars grouped by shape, one bar per (impl, baseline, mode,
    dtype); shapes ordered by FLOPs. Each bar grows from parity (1x), up when the impl is
    faster and down when slower, and carries its value, so the figure reads without the axis.
    Raises :class:`NoPoints` when no row has a speedup."""
    bars: dict[tuple, dict[str, float]] = {}
    order: dict[str, float] = {}
    for row in rows:
        if row.get("op") != op or row.get("error") is not None:
            continue
        for base, ratio in (row.get("speedup") or {}).items():
            if base == row.get("impl") or not finite(ratio) or ratio <= 0:
                continue
            label = shape_label(row.get("shape"))
            order[label] = min(order.get(label, math.inf), row.get("flops") or 0)
            key = (row.get("impl"), base, row.get("mode"), row.get("dtype"))
            bars.setdefault(key, {})[label] = ratio
    if not bars:
        raise NoPoints(f"no speedup to plot for {op} ({device}): no impl was timed beside a "
                       f"baseline")
    shapes = sorted(order, key=lambda s: (order[s], s))
    modes = list(MODE_MARKERS)
    series = sorted(bars, key=lambda k: (str(k[0]), str(k[1]),
                                         modes.index(k[2]) if k[2] in modes else 99,
                                         str(k[3])))
    colors = _colors(series)
    width = 0.8 / len(series)
    fig, ax = subplots(figsize=(min(4.0 + 0.55 * len(shapes) * len(series), 12.0), 4.6),
                        dpi=110)
    ax.set_yscale("log", base=2)
    ax.axhline(1.0, color="0.25", lw=1.2, zorder=3)
    values = [1.0]
    several_dtypes = len({k[3] for k in series}) > 1
    for i, key in enumerate(series):
        impl, base, mode, dtype = key
        offset = (i - (len(series) - 1) / 2) * width
        label = f"{impl} vs {base} · {MODE_LABELS.get(mode, mode)}"
        if several_dtypes:
            label += f" · {dtype}"
        for j, shape in enumerate(shapes):
            v = bars[key].get(shape)
            if v is None:
                continue
            values.append(v)
            # a bar from 1x to v: downward (negative height) when slower than the baseline
            ax.bar(j + offset, v - 1.0, bottom=1.0, width=width * 0.9, color=colors[key],
                   hatch=None if mode in TRAINING_MODES else "//", edgecolor="white",
                   lw=0.5, label=label, zorder=2)
            label = None  # one legend entry per series
            ax.annotate(_bar_label(v), (j + offset, v), xytext=(0, 2 if v >= 1 else -2),
                        textcoords="offset points", ha="center",
                        va="bottom" if v >= 1 else "top", fontsize=7, color="0.2")
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels(shapes, fontsize=9)
    ax.set_xlim(-0.5, len(shapes) - 0.5)
    # room for the value labels beyond the longest bar in each direction
    lo, hi = min(values) / 6, max(values) * 6
    ax.set_ylim(lo, hi)
    fine = [t for t in _SPEEDUP_TICKS if lo <= t <= hi]
    # a wide range gets powers of four only, or its labels would overprint each other
    ticks = fine if hi / lo <= 8 else [t for t in fine if math.log2(t).is_integer()]
    if len(ticks) > 9:
        ticks = [t for t in ticks if math.log2(t) % 2 == 0]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: _ratio_label(v)))
    ax.grid(True, axis="y", color="0.88", zorder=0)
    ax.set_xlabel("shape (op dimensions, ordered by FLOPs)", fontsize=10)
    ax.set_ylabel("speedup (baseline time / impl time)", fontsize=10)
    ax.set_title(f"{op}: speedup per shape (bar up = faster than the baseline)\n"
                 f"{figure_label(backend, device)}", fontsize=11)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8.5,
              ncol=min(2, len(series)), frameon=False,
              title="hatched = inference" if any(k[2] not in TRAINING_MODES for k in series)
              else None, title_fontsize=8.5)
    return save_figure(fig, path)


# Training reds, inference blues; the lab's kernels (triton) dark, the others light.
_PHASE_COLORS = {"train": ("#c62828", "#ef9a9a"), "infer": ("#1565c0", "#90caf9")}


def plot_phase_bars(phases, metrics, *, title: str, backend: str, device: str, path) -> Path:
    """Training-vs-inference bars from a contrast's phase rows (dicts with ``mode``, ``impl``,
    ``batch`` and metric values): one panel per metric of ``metrics`` (a sequence of (key,
    panel title with unit)) that some phase has, batch on x, one bar per (mode, impl); reds
    for training, blues for inference. A panel whose values span more than 30x is drawn on a
    log scale. A missing value is marked "n/a", never drawn as 0. Raises :class:`NoPoints`
    when no phase has any of the metrics."""
    measured = [p for p in phases if p.get("mode") in _PHASE_COLORS and not p.get("error")]
    panels = [(k, t) for k, t in metrics if any(finite(p.get(k)) for p in measured)]
    if not panels:
        raise NoPoints(f"no phase values to plot for {title}")
    series = sorted({(p["mode"], str(p.get("impl"))) for p in measured},
                    key=lambda s: (list(_PHASE_COLORS).index(s[0]), s[1] != "triton", s[1]))
    impls = sorted({s[1] for s in series}, key=lambda i: (i != "triton", i))
    batches = sorted({p.get("batch") for p in measured}, key=lambda b: (b is None, b or 0))
    value = {(p["mode"], str(p.get("impl")), p.get("batch")): p for p in measured}
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = subplots(nrows, cols, figsize=(4.6 * cols + 0.5, 3.4 * nrows + 1.2),
                             dpi=110, squeeze=False)
    width = 0.8 / len(series)
    for ax, (key, panel_title) in zip(axes.flat, panels):
        vals = [p[key] for p in measured if finite(p.get(key)) and p[key] > 0]
        if vals and max(vals) / min(vals) > 30:
            ax.set_yscale("log")
        for i, (mode, impl) in enumerate(series):
            shade = _PHASE_COLORS[mode][min(impls.index(impl), 1)]
            for j, batch in enumerate(batches):
                v = value.get((mode, impl, batch), {}).get(key)
                x = j + (i - (len(series) - 1) / 2) * width
                if finite(v) and (v > 0 or ax.get_yscale() == "linear"):
                    ax.bar(x, v, width=width * 0.92, color=shade)
                else:
                    ax.annotate("n/a", (x, 0), xycoords=("data", "axes fraction"),
                                xytext=(0, 3), textcoords="offset points", ha="center",
                                fontsize=7, color="0.4")
        ax.set_xticks(range(len(batches)))
        ax.set_xticklabels([str(b) for b in batches], fontsize=9)
        ax.set_xlabel("batch (tokens per step)", fontsize=9)
        ax.set_title(panel_title, fontsize=10)
        ax.grid(True, axis="y", color="0.88")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles = [Patch(color=_PHASE_COLORS[m][min(impls.index(i), 1)],
                     label=f"{'training' if m == 'train' else 'inference'} · {i}")
               for m, i in series]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9,
               bbox_to_anchor=(0.5, -0.01))
    fig.suptitle(f"{title}\n{figure_label(backend, device)}", fontsize=12)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its directory created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", bbox_inches="tight")
    return path
