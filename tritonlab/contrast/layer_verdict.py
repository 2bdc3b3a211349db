"""The verdict of a layer contrast (``tritonlab contrast --model layer``): for each resource,
which of the regimes measured (train, prefill, decode) demands most of it, with the
confidence of that answer, and where the answer flips along the decode batch axis.

Resources and the row key compared (the highest value over a regime's phases is that
regime's demand):

* compute: the median per-step TFLOP/s, with its bootstrap 95% interval
  (:func:`tritonlab.measure.stats.median_ci` over the steps' rates);
* bandwidth: the median per-step GB/s of compulsory bytes, with its interval;
* capacity: the footprint in bytes (a formula or a count: exact, no interval);
* power: the average power over the phase (one reading per phase: no interval);
* energy per token: J per token (no interval, as power).

The winner is the regime with the highest demand; a resource not measured in every regime
has none (a regime without the number cannot be ranked). Its confidence is ``clear`` when its
interval lies above the runner-up's, ``overlapping`` when the intervals overlap (the order
may be noise); for resources without intervals, ``exact`` for capacity, and a difference
within 5% of the larger value (the FFN verdict's power tolerance) is a ``tie``.
"""

from __future__ import annotations

from tritonlab.contrast.decide import counters_label
from tritonlab.contrast.layer import decode_flip_batch, ridge_point
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


def _demand(rows: list[dict], key: str, ci_key: str | None) -> dict | None:
    """The phase of ``rows`` with the highest ``key`` (its name, value and interval)."""
    have = [r for r in rows if r.get(key) is not None]
    if not have:
        return None
    best = max(have, key=lambda r: r[key])
    return {"phase": best["name"], "value": best[key],
            "ci": best.get(ci_key) if ci_key else None}


def _compare(name: str, key: str, ci_key: str | None, unit: str,
             by_regime: dict[str, list[dict]]) -> dict:
    """One resource: each regime's demand, the winner and the confidence of the answer."""
    demands = {m: _demand(rows, key, ci_key) for m, rows in by_regime.items()}
    have = {m: d for m, d in demands.items() if d is not None}
    out = {"resource": name, "metric": key, "unit": unit, "by_regime": demands}
    if not have:
        return {**out, "winner": None, "confidence": None,
                "reason": f"{key} not measured in any phase"}
    ranked = sorted(have, key=lambda m: have[m]["value"], reverse=True)
    missing = [m for m in by_regime if m not in have]
    if missing:  # a regime that was not measured cannot lose
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


def _value(d: dict, unit: str) -> str:
    """A demand as text: value, unit, interval, phase."""
    if unit == "bytes":
        text = f"{d['value'] / 2**20:.4g} MiB"
    else:
        text = f"{fmt_num(d['value'], '.4g')} {unit}"
    if d.get("ci"):
        text += f" [95% CI {fmt_num(d['ci'][0], '.4g')}, {fmt_num(d['ci'][1], '.4g')}]"
    return f"{text} in {d['phase']}"


def decode_flip(rows: list[dict], plan, peaks) -> dict:
    """Where decode stops being bandwidth bound along the batch axis, per impl and context:
    each measured decode point's arithmetic intensity (FLOPs over compulsory bytes) against
    the device's ridge point (compute peak / bandwidth peak for the plan's dtype), the first
    measured batch at or above it, and the batch the formulas predict
    (:func:`~tritonlab.contrast.layer.decode_flip_batch`). Without a known ridge point (the
    CPU) only the intensities are given."""
    ridge = ridge_point(peaks, plan.dtype)
    series = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["mode"] == "decode" and r.get("arithmetic_intensity") is not None:
            groups.setdefault((r["impl"], r["point"]["context"]), []).append(r)
    for (impl, context), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["batch"])
        points = [{"batch": r["batch"], "phase": r["name"],
                   "arithmetic_intensity": r["arithmetic_intensity"], "tflops": r["tflops"],
                   "achieved_gbps": r["achieved_gbps"],
                   "bound": None if ridge is None else
                   ("compute" if r["arithmetic_intensity"] >= ridge else "bandwidth")}
                  for r in rs]
        first = next((p["batch"] for p in points if p["bound"] == "compute"), None)
        predicted = (None if ridge is None else
                     decode_flip_batch(plan.config(), plan.n_layers, context, plan.dtype, ridge))
        series.append({"impl": impl, "context": context, "points": points,
                       "first_compute_bound_batch": first, "predicted_flip_batch": predicted})
    return {"ridge_flop_per_byte": ridge,
            "reason": None if ridge is not None else
            "no ridge point known for this device (no compute or bandwidth peak)",
            "series": series}


def _flip_lines(flip: dict) -> list[str]:
    """The flip point as sentences."""
    lines = []
    ridge = flip["ridge_flop_per_byte"]
    for s in flip["series"]:
        ai = ", ".join(f"b{p['batch']} {fmt_num(p['arithmetic_intensity'], '.3g')}"
                       for p in s["points"])
        head = (f"Decode ({s['impl']}, context {s['context']}) arithmetic intensity in "
                f"FLOP/byte: {ai}")
        if ridge is None:
            lines.append(f"{head}; {flip['reason']}, so where decode stops being bandwidth "
                         f"bound cannot be said.")
            continue
        if s["first_compute_bound_batch"] is not None:
            where = (f"it is compute bound from batch {s['first_compute_bound_batch']} of "
                     f"those measured")
        else:
            where = "it is bandwidth bound at every batch measured"
        pred = (f"the formulas put the flip at about batch {s['predicted_flip_batch']}"
                if s["predicted_flip_batch"] is not None else
                "by the formulas it stays bandwidth bound at any batch (the KV reads grow "
                "with the batch as the FLOPs do)")
        lines.append(f"{head}; against the ridge point {fmt_num(ridge, '.3g')} FLOP/byte "
                     f"{where}; {pred}.")
    return lines


def layer_verdict(rows: list[dict], *, plan, counters: str, device: str, idle: dict | None,
                  backend: str = "interpreter", peaks=None) -> dict:
    """Which regime demands most of each resource (the rules are in the module docstring),
    and the decode flip point (:func:`decode_flip`). ``harder``: the regime that wins
    power; when power is tied or not measured, the one that wins most resources; else a
    tie. Every sentence of the explanation is built from those numbers."""
    label = counters_label(rows, counters, backend)
    by_regime = {m: [r for r in rows if r.get("mode") == m and not r.get("error")
                     and not r.get("skipped")] for m in plan.modes}
    by_regime = {m: rs for m, rs in by_regime.items() if rs}
    flip = decode_flip([r for rs in by_regime.values() for r in rs], plan, peaks)
    if not by_regime:
        return {"counters": counters, "label": label, "harder": None, "decided_by": None,
                "resources": [], "flip": flip,
                "explanation": ["No measured phase: nothing to compare."]}
    resources = [_compare(*res, by_regime) for res in RESOURCES]
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
    lines = [f"Measured with {label}, on {device}; regimes measured: "
             f"{', '.join(by_regime)}."]
    lines.append("Neither regime demands most overall: " + decided_by + "." if harder == "tie"
                 else f"{harder.capitalize()} demands most overall, by {decided_by}.")
    for r in resources:
        if r["winner"] is None:
            lines.append(f"{r['resource']}: not compared ({r['reason']}).")
            continue
        parts = "; ".join(f"{m} {_value(d, r['unit'])}" for m, d in r["by_regime"].items()
                          if d is not None)
        head = (f"{r['resource']}: tie" if r["winner"] == "tie" else
                f"{r['resource']}: {r['winner']} demands most ({r['confidence']})")
        lines.append(f"{head}: {parts}.")
    if idle and idle.get("avg_power_w") is not None:
        lines.append(f"Idle baseline: {fmt_num(idle['avg_power_w'], '.4g')} W.")
    lines += _flip_lines(flip)
    return {"counters": counters, "label": label, "harder": harder, "decided_by": decided_by,
            "resources": resources, "flip": flip, "explanation": lines}
