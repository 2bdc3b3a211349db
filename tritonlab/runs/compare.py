"""Comparing two runs (``tritonlab compare BASE NEW``).

Points are paired by (op, impl, mode, dtype, shape). For each pair, ``speedup`` =
base ms / new ms (above 1: the new run is faster) with a bootstrap 95% CI computed from the
two runs' raw samples. A point is a **regression** when it is slower beyond both the
threshold and its noise: speedup < 1 / (1 + threshold) *and* the CI's upper end < 1 (the
slowdown is not explained by the spread of the samples). An **improvement** is the mirror
image. A point that was correct in BASE and fails in NEW is a regression too. Geometric
means of the speedups are given per op and per (op, impl).

Runs measured on different backends or devices, or with different cache/graph settings,
are not comparable; :func:`compare_runs` refuses them unless ``force``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tritonlab.errors import UsageError
from tritonlab.measure.stats import geomean, ratio_of_medians_ci
from tritonlab.output import fmt_num, info, table
from tritonlab.runs.store import RunDir, Warn, format_key, point_key, shape_str

DEFAULT_THRESHOLD = 0.05


@dataclass
class Run:
    path: Path
    manifest: dict
    rows: dict[tuple, dict]  # by point key


def load_run(path: str | Path, warn: Warn = info) -> Run:
    """A run directory's manifest and rows (the last row wins where a point repeats)."""
    run = RunDir.open(path)
    rows: dict[tuple, dict] = {}
    for row in run.rows(warn):
        try:
            key = point_key(row)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise UsageError(f"{run.results_path}: a row lacks op/impl/mode/dtype/shape") from None
        if key in rows:
            warn(f"warning: {run.results_path}: {format_key(key)} appears twice; "
                 f"using the last")
        rows[key] = row
    return Run(run.path, run.manifest(), rows)


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


def _ok(row: Mapping) -> bool:
    return bool(row.get("correct")) and not row.get("error") and bool(row.get("ms"))


def compare_point(b: Mapping, n: Mapping, threshold: float) -> dict:
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


def compare_runs(base: Run, new: Run, threshold: float = DEFAULT_THRESHOLD,
                 force: bool = False) -> dict:
    """Pair the points of two runs; a JSON-ready report whose ``passed`` is False when some
    point regressed. Raises :class:`UsageError` for incomparable runs unless ``force``."""
    if threshold < 0:
        raise UsageError(f"--threshold must be >= 0, got {threshold}")
    why = incompatibilities(base, new)
    if why and not force:
        raise UsageError("runs are not comparable: " + "; ".join(why)
                         + " (pass --force to compare anyway)")
    keys = [k for k in base.rows if k in new.rows]
    points = [compare_point(base.rows[k], new.rows[k], threshold) for k in keys]
    by_op: dict[str, list[float]] = defaultdict(list)
    by_impl: dict[tuple[str, str], list[float]] = defaultdict(list)
    for p in points:
        if p["speedup"] is not None:
            by_op[p["op"]].append(p["speedup"])
            by_impl[(p["op"], p["impl"])].append(p["speedup"])
    regressions = [p for p in points if p["verdict"].startswith("regression")]
    return {
        "base": str(base.path), "new": str(new.path), "threshold": threshold,
        "backend": base.manifest.get("backend"),
        "device": (base.manifest.get("device") or {}).get("name"),
        "forced": bool(why), "incompatibilities": why,
        "points": points,
        "geomean": [{"op": op, "impl": None, "n": len(v), "speedup": geomean(v)}
                    for op, v in sorted(by_op.items())]
                   + [{"op": op, "impl": impl, "n": len(v), "speedup": geomean(v)}
                      for (op, impl), v in sorted(by_impl.items())],
        "regressions": len(regressions),
        "improvements": sum(p["verdict"] == "improvement" for p in points),
        "only_base": [format_key(k) for k in base.rows if k not in new.rows],
        "only_new": [format_key(k) for k in new.rows if k not in base.rows],
        "passed": not regressions,
    }


def report_lines(report: Mapping) -> list[str]:
    """The human form of a :func:`compare_runs` report."""
    rows = []
    for p in report["points"]:
        ci = p.get("speedup_ci")
        rows.append([p["op"], p["impl"], p["mode"], p["dtype"], shape_str(p["shape"]),
                     fmt_num(p["base_ms"], ".4g"), fmt_num(p["new_ms"], ".4g"),
                     fmt_num(p["speedup"], ".3f"),
                     f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-", p["verdict"]])
    lines = [f"base: {report['base']}", f"new:  {report['new']}",
             f"backend: {report['backend']}  device: {report['device']}  "
             f"threshold: {100 * report['threshold']:g}%"]
    lines += [f"warning: {w}" for w in report["incompatibilities"]]
    lines.append(table(rows, ["op", "impl", "mode", "dtype", "shape", "base ms", "new ms",
                              "speedup", "95% CI", "verdict"]))
    geo = [[g["op"], g["impl"] or "(all)", g["n"], fmt_num(g["speedup"], ".3f")]
           for g in report["geomean"]]
    if geo:
        lines.append("")
        lines.append(table(geo, ["op", "impl", "points", "geomean speedup"]))
    for side in ("only_base", "only_new"):
        if report[side]:
            lines.append(f"{len(report[side])} point(s) only in "
                         f"{'BASE' if side == 'only_base' else 'NEW'}: "
                         + "; ".join(report[side][:5]) + (" ..." if len(report[side]) > 5 else ""))
    lines.append(f"{len(report['points'])} paired points: {report['regressions']} "
                 f"regression(s), {report['improvements']} improvement(s)")
    return lines
