"""Which regime (train, prefill, decode) demands most of each resource: the rules the layer
contrast's verdict (:mod:`tritonlab.contrast.layer_verdict`, on measured phases) and the
prediction's verdict (:mod:`tritonlab.predict.verdict`, on predicted points) share, so that a
measured and a predicted verdict are decided the same way and read the same.

Resources and the row key compared (the highest value over a regime's rows is that regime's
demand):

* compute: the median per-step TFLOP/s, with its 95% interval where it has one;
* bandwidth: the median per-step GB/s of compulsory bytes, with its interval;
* capacity: the footprint in bytes (a formula or a count: exact, no interval);
* power: the average power (no interval);
* energy per token: J per token (no interval).

The winner is the regime with the highest demand; a resource missing in some regime has
none (a regime without the number cannot be ranked). Its confidence is ``clear`` when its
interval lies above the runner-up's, ``overlapping`` when the intervals overlap (the order
may be noise); for values without intervals, ``exact`` for capacity, and a difference within
5% of the larger value (the FFN verdict's power tolerance) is a ``tie``.

The overall answer (``harder``): the regime that wins power; when power is tied or missing,
the one that wins most resources; else a tie.

This module imports nothing heavy (no torch, no kernels), so a prediction can use it.
"""

from __future__ import annotations

from collections.abc import Callable

from tritonlab.output import fmt_num

# (resource, row key of the value, row key of its interval or None, unit)
RESOURCES = (
    ("compute", "step_tflops_median", "step_tflops_ci", "TFLOP/s"),
    ("bandwidth", "step_gbps_median", "step_gbps_ci", "GB/s"),
    ("capacity", "footprint_bytes", None, "bytes"),
    ("power", "avg_power_w", None, "W"),
    ("energy per token", "energy_per_token_j", None, "J/token"),
)
# Within this share of the larger value, two readings without an interval are a tie.
TIE_REL = 0.05


def demand(rows: list[dict], key: str, ci_key: str | None) -> dict | None:
    """The row of ``rows`` with the highest ``key`` (its name, value and interval)."""
    have = [r for r in rows if r.get(key) is not None]
    if not have:
        return None
    best = max(have, key=lambda r: r[key])
    return {"phase": best["name"], "value": best[key],
            "ci": best.get(ci_key) if ci_key else None}


def compare_resource(name: str, key: str, ci_key: str | None, unit: str,
                     by_regime: dict[str, list[dict]]) -> dict:
    """One resource: each regime's demand, the winner and the confidence of the answer."""
    demands = {m: demand(rows, key, ci_key) for m, rows in by_regime.items()}
    have = {m: d for m, d in demands.items() if d is not None}
    out = {"resource": name, "metric": key, "unit": unit, "by_regime": demands}
    if not have:
        return {**out, "winner": None, "confidence": None,
                "reason": f"{key} not measured in any phase"}
    ranked = sorted(have, key=lambda m: have[m]["value"], reverse=True)
    missing = [m for m in by_regime if m not in have]
    if missing:  # a regime without the number cannot lose
        return {**out, "winner": None, "confidence": None,
                "reason": f"{key} not measured in {', '.join(missing)} phases"}
    winner = ranked[0]
    out.update(winner=winner, runner_up=ranked[1] if len(ranked) > 1 else None)
    if len(ranked) == 1:
        out["confidence"] = "only regime measured"
        return out
    a, b = have[winner], have[ranked[1]]
    if ci_key is None and name == "capacity":
        out["confidence"] = "exact" if a["value"] > b["value"] else "tie"
    elif ci_key is None or a["ci"] is None or b["ci"] is None:
        tol = TIE_REL * max(abs(a["value"]), abs(b["value"]))
        out["confidence"] = "tie" if a["value"] - b["value"] <= tol else "no interval"
    else:
        out["confidence"] = "clear" if a["ci"][0] > b["ci"][1] else "overlapping"
    if out["confidence"] == "tie":
        out["winner"] = "tie"
    return out


def rank_regimes(by_regime: dict[str, list[dict]], resources=RESOURCES) -> dict:
    """Every resource of ``resources`` (default :data:`RESOURCES`; a caller may compare one
    by another row key, as a mixed-dtype contrast compares compute as % of each phase's own
    peak) compared across ``by_regime`` (regime -> its rows, each non-empty), and the
    overall answer: ``harder`` (a regime or "tie"), ``decided_by`` (why), ``wins``
    (resources won per regime)."""
    resources = [compare_resource(*res, by_regime) for res in resources]
    decided = [r for r in resources if r["winner"] not in (None, "tie")]
    power = next(r for r in resources if r["resource"] == "power")
    wins = {m: sum(r["winner"] == m for r in decided) for m in by_regime}
    top = sorted(wins, key=wins.get, reverse=True)
    by_count = (f"resources won ({', '.join(f'{wins[m]} {m}' for m in top)}), power "
                + ("tied" if power["winner"] == "tie" else "not measured"))
    if len(by_regime) == 1:
        harder, decided_by = top[0], "the only regime measured"
    elif power["winner"] not in (None, "tie"):
        harder, decided_by = power["winner"], "power"
    elif wins[top[0]] > wins[top[1]]:
        harder, decided_by = top[0], by_count
    else:
        harder, decided_by = "tie", by_count
    return {"resources": resources, "harder": harder, "decided_by": decided_by, "wins": wins}


def value_text(d: dict, unit: str) -> str:
    """A demand as text: value, unit, interval, phase."""
    if unit == "bytes":
        text = f"{d['value'] / 2**20:.4g} MiB"
    else:
        text = f"{fmt_num(d['value'], '.4g')} {unit}"
    if d.get("ci"):
        text += f" [95% CI {fmt_num(d['ci'][0], '.4g')}, {fmt_num(d['ci'][1], '.4g')}]"
    return f"{text} in {d['phase']}"


def resource_lines(resources: list[dict]) -> list[str]:
    """One sentence per resource: the winner, its confidence, each regime's demand."""
    lines = []
    for r in resources:
        if r["winner"] is None:
            lines.append(f"{r['resource']}: not compared ({r['reason']}).")
            continue
        parts = "; ".join(f"{m} {value_text(d, r['unit'])}" for m, d in r["by_regime"].items()
                          if d is not None)
        head = (f"{r['resource']}: tie" if r["winner"] == "tie" else
                f"{r['resource']}: {r['winner']} demands most ({r['confidence']})")
        lines.append(f"{head}: {parts}.")
    return lines


def first_batch_reaching(intensity: Callable[[int], float], ridge: float,
                         limit: int = 1 << 16) -> int | None:
    """The smallest batch whose ``intensity(batch)`` (FLOP per byte of a decode step)
    reaches ``ridge``: from there decode is compute bound. None when no batch up to
    ``limit`` does (the KV reads grow with the batch as the FLOPs do, so the intensity levels
    off, possibly below the ridge). Bisection: the answer is the crossing to within a batch
    or two where the intensity rises only nearly monotonically."""
    if intensity(limit) < ridge:
        return None
    lo, hi = 1, limit
    if intensity(lo) >= ridge:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if intensity(mid) >= ridge:
            hi = mid
        else:
            lo = mid
    return hi
