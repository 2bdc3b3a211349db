"""Comparing two runs (``tritonlab compare BASE NEW``).

Points are paired by (op, impl, mode, dtype, shape). For each pair, ``speedup`` =
base ms / new ms (above 1: the new run is faster) with a bootstrap 95% CI computed from the
two runs' raw samples. A point is a **regression** when it is slower beyond both the
threshold and its noise: speedup < 1 / (1 + threshold) *and* the CI's upper end < 1 (the
slowdown is not explained by the spread of the samples). An **improvement** is the mirror
image. A point that was correct in BASE and fails in NEW is a regression too. Geometric
means of the speedups are given per op and per (op, impl).

A comparison that compared nothing does not pass: no paired points (disjoint runs, or
contrast runs, which hold no sweep points), or paired points none of which was measured in
both runs, give ``passed`` False with the ``reason``. A run whose manifest does not say
``complete`` (still running, interrupted, or killed) is named in ``incomplete``: its missing
points may be missing for that reason.

Runs measured on different backends or devices, or with different cache/graph settings,
are not comparable; :func:`compare_runs` refuses them unless ``force``. Runs measured on
several GPU models (cluster sweeps, docs/cluster.md) are compared model by model: a point
pairs with the same point on the same model, each compared point names its ``device``, and
the geometric means are given per model too (``by_device``); models that only one run has
are listed in ``only_devices``.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping

from tritonlab.errors import UsageError
from tritonlab.measure.stats import ratio_of_medians_ci
from tritonlab.output import fmt_num, table
from tritonlab.runs.records import ResultRow, shape_str
from tritonlab.runs.store import Run

DEFAULT_THRESHOLD = 0.05


def _setting(manifest: Mapping, name: str):
    timer = manifest.get("timer") or {}
    options = manifest.get("options") or {}
    return timer.get(name, options.get(name))


def incompatibilities(base: Run, new: Run) -> list[str]:
    """Why two runs' timings cannot be compared (empty when they can)."""
    out = []
    for what, get in (("backend", lambda m: m.get("backend")),
                      ("device", lambda m: (m.get("device") or {}).get("name")),
                      ("cache", lambda m: _setting(m, "cache")),
                      ("graph", lambda m: bool(_setting(m, "graph")))):
        b, n = get(base.manifest), get(new.manifest)
        if b != n:
            out.append(f"{what} differs: {b!r} in {base.path} vs {n!r} in {new.path}")
    return out


def _ok(row: ResultRow) -> bool:
    return bool(row.get("correct")) and not row.get("error") and bool(row.get("ms"))


def compare_point(b: ResultRow, n: ResultRow, threshold: float) -> dict:
    """The comparison of one paired point (see the module docstring)."""
    out = {"op": b["op"], "impl": b["impl"], "mode": b["mode"], "dtype": b["dtype"],
           "shape": b["shape"], "base_ms": b.get("ms"), "new_ms": n.get("ms"),
           "speedup": None, "speedup_ci": None, "verdict": "same"}
    if not _ok(b) and not _ok(n):
        out["verdict"] = "failed in both"
        return out
    if not _ok(n):
        out["verdict"] = "regression (now fails)"
        out["new_error"] = n.get("error") or "incorrect"
        return out
    if not _ok(b):
        out["verdict"] = "fixed"
        return out
    speedup = b["ms"] / n["ms"]
    ci = None
    if len(b.get("samples_ms") or []) >= 2 and len(n.get("samples_ms") or []) >= 2:
        ci = ratio_of_medians_ci(b["samples_ms"], n["samples_ms"])
    out["speedup"], out["speedup_ci"] = speedup, list(ci) if ci else None
    if speedup < 1.0 / (1.0 + threshold) and (ci is None or ci[1] < 1.0):
        out["verdict"] = "regression"
    elif speedup > 1.0 + threshold and (ci is None or ci[0] > 1.0):
        out["verdict"] = "improvement"
    elif abs(speedup - 1.0) > threshold:
        out["verdict"] = "within noise"
    return out


def _pairs(base: Run, new: Run, force: bool) -> tuple[list[tuple[Run, Run]], list[str], list[str]]:
    """The (base, new) pairs to compare: the runs themselves, or for runs measured on several
    GPU models each model both have (by :meth:`~tritonlab.runs.store.Run.by_device`); the
    incompatibilities; and the models only one side has."""
    if len(base.models) <= 1 and len(new.models) <= 1:
        return [(base, new)], incompatibilities(base, new), []
    b_views = {v.model or v.device: v for v in base.by_device()}
    n_views = {v.model or v.device: v for v in new.by_device()}
    shared = [m for m in b_views if m in n_views]
    only = [f"{m} only in {side}" for side, views, other in
            (("BASE", b_views, n_views), ("NEW", n_views, b_views))
            for m in views if m not in other]
    why = [w for w in incompatibilities(base, new) if not w.startswith("device differs")]
    if not shared:
        why.append(f"no device model in common: {' + '.join(b_views)} in {base.path} vs "
                   f"{' + '.join(n_views)} in {new.path}")
        if force:  # compared across models, as --force compares two single-device runs
            return [(base, new)], why, only
    return [(b_views[m], n_views[m]) for m in shared], why, only


def compare_runs(base: Run, new: Run, threshold: float = DEFAULT_THRESHOLD,
                 force: bool = False) -> dict:
    """Pair the points of two runs; a JSON-ready report whose ``passed`` is False when some
    point regressed. Raises :class:`UsageError` for incomparable runs unless ``force``."""
    if threshold < 0:
        raise UsageError(f"--threshold must be >= 0, got {threshold}")
    pairs, why, only_devices = _pairs(base, new, force)
    if why and not force:
        raise UsageError("runs are not comparable: " + "; ".join(why)
                         + " (pass --force to compare anyway)")
    points = []
    for b, n in pairs:
        for k in (k for k in b.points if k in n.points):
            point = compare_point(b.points[k], n.points[k], threshold)
            points.append({**point, "device": b.points[k].get("device") or b.device})
    grouped = len(pairs) > 1 or bool(only_devices)
    regressions = [p for p in points if p["verdict"].startswith("regression")]
    timed = sum(p["speedup"] is not None for p in points)
    reason = None
    if not points:
        reason = "nothing compared: no point is in both runs" + _kinds_note(base, new)
    elif not timed and not regressions:
        reason = (f"nothing compared: none of the {len(points)} paired point(s) was measured "
                  f"correctly in both runs")
    return {
        "base": str(base.path), "new": str(new.path), "threshold": threshold,
        "backend": base.manifest.get("backend"),
        "device": (base.manifest.get("device") or {}).get("name"),
        "forced": bool(why), "incompatibilities": why,
        "points": points,
        "geomean": speedup_geomeans(points),
        "by_device": [{"device": b.model or b.device,
                       "geomean": speedup_geomeans(p for p in points
                                                   if p["device"] == (b.model or b.device))}
                      for b, _ in pairs] if grouped else [],
        "only_devices": only_devices,
        "regressions": len(regressions),
        "improvements": sum(p["verdict"] == "improvement" for p in points),
        "only_base": [str(k) for b, n in pairs for k in b.points if k not in n.points],
        "only_new": [str(k) for b, n in pairs for k in n.points if k not in b.points],
        "compared": timed,
        "incomplete": [note for note in (_incomplete("BASE", base), _incomplete("NEW", new))
                       if note],
        "reason": reason,
        "passed": not regressions and reason is None,
    }


def _kinds_note(base: Run, new: Run) -> str:
    """Why two runs share no point, where their kinds explain it."""
    kinds = {side: run.manifest.get("kind") for side, run in (("BASE", base), ("NEW", new))}
    others = [f"{side} is a {kind} run" for side, kind in kinds.items()
              if kind and kind != "sweep"]
    if others:
        return f" ({'; '.join(others)}: compare pairs sweep points)"
    empty = [side for side, run in (("BASE", base), ("NEW", new)) if not run.points]
    if empty:
        return f" ({' and '.join(empty)} {'has' if len(empty) == 1 else 'have'} no points)"
    return ""


def _incomplete(side: str, run: Run) -> str | None:
    """A note when ``run``'s manifest does not say it completed."""
    status = run.manifest.get("status")
    if status == "complete":
        return None
    return (f"{side} run {run.path} is incomplete (status: {status or 'unknown'}); points "
            f"missing from it may not have been measured")


def speedup_geomeans(points: Iterable[Mapping]) -> list[dict]:
    """Geometric means of the points' speedups per op (``impl`` None), then per (op, impl).

    Only finite, positive speedups count (a point that failed on either side has none); a
    group with none is left out rather than given a mean of nothing.
    """
    by_op: dict[str, list[float]] = defaultdict(list)
    by_impl: dict[tuple[str, str], list[float]] = defaultdict(list)
    for p in points:
        s = p.get("speedup")
        if isinstance(s, (int, float)) and math.isfinite(s) and s > 0:
            by_op[p["op"]].append(s)
            by_impl[(p["op"], p["impl"])].append(s)
    groups = [((op, None), v) for op, v in sorted(by_op.items())]
    groups += sorted(by_impl.items())
    return [{"op": op, "impl": impl, "n": len(v), "speedup": statistics.geometric_mean(v)}
            for (op, impl), v in groups]


def report_lines(report: Mapping) -> list[str]:
    """The human form of a :func:`compare_runs` report."""
    grouped = bool(report.get("by_device"))
    rows = []
    for p in report["points"]:
        ci = p.get("speedup_ci")
        rows.append([*([p["device"]] if grouped else []),
                     p["op"], p["impl"], p["mode"], p["dtype"], shape_str(p["shape"]),
                     fmt_num(p["base_ms"], ".4g"), fmt_num(p["new_ms"], ".4g"),
                     fmt_num(p["speedup"], ".3f"),
                     f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-", p["verdict"]])
    lines = [f"base: {report['base']}", f"new:  {report['new']}",
             f"backend: {report['backend']}  device: {report['device']}  "
             f"threshold: {100 * report['threshold']:g}%"]
    lines += [f"warning: {w}" for w in report["incompatibilities"]]
    lines += [f"warning: {w}" for w in report["incomplete"]]
    lines.append(table(rows, [*(["device"] if grouped else []), "op", "impl", "mode", "dtype",
                              "shape", "base ms", "new ms", "speedup", "95% CI", "verdict"]))
    geo = [[g["op"], g["impl"] or "(all)", g["n"], fmt_num(g["speedup"], ".3f")]
           for g in report["geomean"]]
    if geo:
        lines.append("")
        lines.append(table(geo, ["op", "impl", "points", "geomean speedup"]))
    side = [[d["device"], g["op"], g["impl"] or "(all)", g["n"], fmt_num(g["speedup"], ".3f")]
            for d in report.get("by_device") or [] for g in d["geomean"]]
    if side:
        lines.append("")
        lines.append("per GPU model, side by side:")
        lines.append(table(side, ["device", "op", "impl", "points", "geomean speedup"]))
    for note in report.get("only_devices") or []:
        lines.append(f"not compared: {note}")
    for side in ("only_base", "only_new"):
        if report[side]:
            lines.append(f"{len(report[side])} point(s) only in "
                         f"{'BASE' if side == 'only_base' else 'NEW'}: "
                         + "; ".join(report[side][:5]) + (" ..." if len(report[side]) > 5 else ""))
    lines.append(f"{len(report['points'])} paired points, {report['compared']} timed in both: "
                 f"{report['regressions']} regression(s), {report['improvements']} "
                 f"improvement(s)")
    if report["reason"]:
        lines.append(f"not passed: {report['reason']}")
    return lines
