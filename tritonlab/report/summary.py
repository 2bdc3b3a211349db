"""What a report opens on: the training-vs-inference verdict per resource, the headline
figure of each op (the lab's Triton kernel against its best baseline) and the regime table
of the contrast; and the two-line reading that leads each op's section.

Everything here is computed from the run data, so a new op, baseline or resource shows up
without a change here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tritonlab.measure.stats import CONFIDENCE, RESAMPLES, bootstrap_medians
from tritonlab.report.document import Banner, Block, Box, Bullets, Heading, Para, Table
from tritonlab.report.plots import shape_label
from tritonlab.runs.store import Run

MODE_NAMES = {"train": "training", "infer": "inference", "tie": "neither mode"}


def num(value: float) -> str:
    """A ratio or measurement as a reader takes it in: 3 significant digits, whole numbers
    from 1000 up (a clock of 1996 MHz, not 2e+03)."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


@dataclass
class Point:
    """One Triton point against its fastest baseline at the same (mode, dtype, shape)."""

    label: str  # "infer float16 1x130x75"
    shape: str
    mode: str
    baseline: str
    speedup: float  # baseline time / Triton time: above 1 the kernel is faster
    triton_ms: list[float]
    baseline_ms: list[float]


@dataclass
class Headline:
    """An op's Triton kernels against their best baselines over a run's points."""

    op: str
    run: Run
    points: list[Point]
    geomean: float
    ci: tuple[float, float] | None  # bootstrap interval of the geometric mean

    @property
    def baseline(self) -> str:
        names = {p.baseline for p in self.points}
        return names.pop() if len(names) == 1 else "best baseline"

    @property
    def weakest(self) -> Point:
        return min(self.points, key=lambda p: p.speedup)

    @property
    def strongest(self) -> Point:
        return max(self.points, key=lambda p: p.speedup)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _points(rows: list[Mapping]) -> list[Point]:
    by_key = {(r.get("impl"), r.get("mode"), r.get("dtype"), shape_label(r.get("shape"))): r
              for r in rows if r.get("error") is None}
    points = []
    for r in rows:
        if r.get("kind") != "triton" or r.get("error") is not None:
            continue
        speed = {b: s for b, s in (r.get("speedup") or {}).items() if _positive(s)}
        if not speed:
            continue
        # The fastest baseline is the one the kernel beats by the least.
        best = min(speed, key=speed.get)
        shape = shape_label(r.get("shape"))
        base = by_key.get((best, r.get("mode"), r.get("dtype"), shape)) or {}
        points.append(Point(f"{r.get('mode')} {r.get('dtype')} {shape}", shape,
                            str(r.get("mode")), best, speed[best],
                            list(r.get("samples_ms") or []), list(base.get("samples_ms") or [])))
    return points


def geomean_ci(points: list[Point], confidence: float = CONFIDENCE,
               resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """Bootstrap interval of the geometric mean of the points' speedups: each resample
    draws every point's two sample sets again (independently, as
    :func:`tritonlab.measure.stats.ratio_of_medians_ci` does for one point) and takes the
    geometric mean of the resampled ratios of medians. None when a point has fewer than 2
    samples on either side, since its spread is then unknown."""
    if not points or any(len(p.triton_ms) < 2 or len(p.baseline_ms) < 2 for p in points):
        return None
    rng = np.random.default_rng(seed)
    logs = np.zeros(resamples)
    for p in points:
        tri = bootstrap_medians(np.asarray(p.triton_ms, float), resamples, rng)
        base = bootstrap_medians(np.asarray(p.baseline_ms, float), resamples, rng)
        if (tri <= 0).any() or (base <= 0).any():
            return None
        logs += np.log(base / tri)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.exp(np.quantile(logs / len(points), [alpha, 1.0 - alpha]))
    return float(lo), float(hi)


def headlines(runs: list[Run]) -> list[Headline]:
    """Per run and op (in the run's order), the Triton kernels against their best baseline;
    ops without a Triton point that has a baseline are left out."""
    out = []
    for run in runs:
        ops = list(dict.fromkeys(r.get("op") for r in run.rows if r.get("op")))
        for op in ops:
            points = _points([r for r in run.rows if r.get("op") == op])
            if points:
                geo = math.exp(sum(math.log(p.speedup) for p in points) / len(points))
                out.append(Headline(str(op), run, points, geo, geomean_ci(points)))
    return out


def _ci_text(ci: tuple[float, float] | None) -> str:
    return f"{num(ci[0])}-{num(ci[1])}" if ci else "-"


def _scope(run: Run) -> str:
    options = run.manifest.get("options")
    preset = options.get("preset") if isinstance(options, Mapping) else None
    return f" on {preset} shapes" if preset else ""


def reading(h: Headline) -> list[str]:
    """The two lines that lead an op's section, e.g. ``matmul: 0.93x torch geomean over 4
    points on tiny shapes`` and where the kernel is weakest and strongest."""
    ci = f" (95% interval {_ci_text(h.ci)})" if h.ci else ""
    caveat = "" if h.run.is_gpu else "; interpreter on CPU, NOT GPU performance"
    first = (f"{h.op}: {num(h.geomean)}x {h.baseline} geomean over {len(h.points)} "
             f"point(s){_scope(h.run)}{ci}{caveat}.")
    weak, strong = h.weakest, h.strongest
    second = f"Weakest at {weak.label} ({num(weak.speedup)}x {weak.baseline})"
    if strong is not weak:
        second += f"; strongest at {strong.label} ({num(strong.speedup)}x {strong.baseline})"
    return [first, second + "."]


def verdict_lines(doc: Mapping) -> tuple[str, list[str]]:
    """The contrast's verdict as its head line and one sentence per resource."""
    verdict = doc.get("verdict") if isinstance(doc.get("verdict"), Mapping) else {}
    harder = verdict.get("harder")
    head = f"{MODE_NAMES.get(harder, harder)} pushes harder" if harder else "undecided"
    if verdict.get("decided_by"):
        head += f" (decided by {verdict['decided_by']})"
    sentences = []
    for res in verdict.get("resources") or []:
        if not isinstance(res, Mapping):
            continue
        name, winner = res.get("resource", "?"), res.get("winner")
        if winner is None:
            sentences.append(f"{name}: not compared ({res.get('reason', 'not measured')}).")
            continue
        unit = f" {res['unit']}" if res.get("unit") else ""
        sides = []
        for mode in ("train", "infer"):
            side = res.get(mode) if isinstance(res.get(mode), Mapping) else {}
            value = side.get("value")
            if isinstance(value, (int, float)) and math.isfinite(value):
                sides.append(f"{num(value)}{unit} in {MODE_NAMES[mode]} "
                             f"({side.get('phase', '?')})")
        who = "tie" if winner == "tie" else f"{MODE_NAMES.get(winner, winner)} harder"
        sentences.append(f"{name}: {who}" + (f", {' vs '.join(sides)}" if sides else "") + ".")
    if not sentences:
        sentences = [str(x) for x in verdict.get("explanation") or []]
    return head, sentences


def measured_how(run: Run) -> str:
    """How a contrast was measured, said plainly: on a GPU with its counters, or on the CPU
    (which is not GPU performance)."""
    doc = run.contrast or {}
    backend = str(doc.get("backend") or run.backend)
    device = str(doc.get("device") or run.device)
    if backend == "cuda" and doc.get("counters") in (None, "nvml"):
        return f"Measured on {device} (backend cuda, NVML counters)."
    return (f"Measured with CPU counters on {device} (backend {backend}): CPU load, "
            f"NOT GPU performance.")


def regime_rows(doc: Mapping) -> list[list]:
    """A few rows of the contrast's kernel-vs-baseline table: per mode its smallest and
    largest batch (the decode-like and the throughput regime)."""
    rows = [c for c in doc.get("impl_comparison") or [] if isinstance(c, Mapping)]
    picked = []
    for mode in dict.fromkeys(c.get("mode") for c in rows):
        mine = sorted((c for c in rows if c.get("mode") == mode),
                      key=lambda c: c.get("batch") or 0)
        picked += [mine[0]] + ([mine[-1]] if len(mine) > 1 else [])
    return [[MODE_NAMES.get(c.get("mode"), c.get("mode")), c.get("batch"),
             f"{c.get('impl')} / {c.get('baseline')}", c.get("throughput_ratio"),
             c.get("latency_p50_ratio"), c.get("energy_per_sample_ratio")] for c in picked]


def _run_date(run: Run) -> str:
    m = run.manifest
    return str(m.get("start_time") or m.get("end_time") or "date unknown")


def summary(runs: list[Run], links: list[Block]) -> list[Block]:
    """The summary box (``id="summary"``): the verdict (``id="verdict"``), the headline
    figures, the regime table, device, backend and date of each run, and ``links`` (to the
    sections), sized to fit one screen."""
    blocks: list[Block] = [Heading(1, "tritonlab report")]
    blocks += [Para("; ".join(f"`{r.label}`: {r.device}, backend {r.backend}, {_run_date(r)}"
                              for r in runs) + ".")]
    interp = [r.label for r in runs if not r.is_gpu]
    if interp:
        blocks.append(Banner(f"{', '.join(interp)} ran on the Triton interpreter on a CPU: "
                             f"the times show that the kernels run and are correct; they are "
                             f"NOT GPU performance."))
    verdict: list[Block] = []
    for run in (r for r in runs if r.contrast is not None):
        head, sentences = verdict_lines(run.contrast or {})
        verdict += [Heading(2, f"Training vs inference: {head}"),
                    Para(measured_how(run)), Bullets(sentences)]
        regimes = regime_rows(run.contrast or {})
        if regimes:
            verdict.append(Table(["mode", "batch", "kernel / baseline", "throughput x",
                                  "p50 latency x", "energy/sample x"], regimes))
    if not verdict:
        verdict = [Heading(2, "Training vs inference"),
                   Para("No contrast in these runs: `tritonlab contrast` measures it.")]
    heads = headlines(runs)
    several = len({id(h.run) for h in heads}) > 1
    figures: list[Block] = [Heading(2, "Triton kernels against their best baseline")]
    if heads:
        figures.append(Table(
            ["op", *(["run"] if several else []), "baseline", "points", "geomean x",
             "95% interval", "weakest"],
            [[h.op, *([h.run.label] if several else []), h.baseline, len(h.points),
              h.geomean, _ci_text(h.ci), f"{h.weakest.shape} {h.weakest.mode}"]
             for h in heads]))
        figures.append(Para("x = baseline time / kernel time: above 1 the kernel is faster."
                            + ("" if all(h.run.is_gpu for h in heads)
                               else " Interpreter runs: NOT GPU performance.")))
    else:
        figures.append(Para("No Triton point with a baseline to compare against."))
    blocks.append(Box("at-a-glance", [Box("verdict", verdict), Box("headline", figures)],
                      columns=True))
    return [Box("summary", blocks + links)]
