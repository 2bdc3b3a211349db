"""The verdict of a layer contrast (``tritonlab contrast --model layer``): for each resource,
which of the regimes measured (train, prefill, decode) demands most of it, with the
confidence of that answer, and where the answer flips along the decode batch axis.

The rules (the resources, their row keys, confidence and ties, and the overall answer) are
:mod:`tritonlab.measure.regimes`, shared with the prediction's verdict: the compute and
bandwidth demands carry the bootstrap 95% interval of the per-step medians
(:func:`tritonlab.measure.stats.median_ci`); capacity, power and energy per token have none.
"""

from __future__ import annotations

from tritonlab.contrast.decide import counters_label
from tritonlab.contrast.layer import decode_flip_batch, ridge_point
from tritonlab.measure.regimes import RESOURCES, rank_regimes, resource_lines
from tritonlab.output import fmt_num

# Compute in a contrast whose phases ran in different dtypes (fp8 inference, 16-bit
# training): TFLOP/s of different dtypes are not comparable (fp8 tensor cores have twice the
# 16-bit peak), so each phase's median per-step % of its own dtype's peak is compared.
OWN_PEAK_COMPUTE = ("compute", "step_compute_pct_median", "step_compute_pct_ci",
                    "% of its dtype's peak")


def decode_flip(rows: list[dict], plan, peaks) -> dict:
    """Where decode stops being bandwidth bound along the batch axis, per impl and context:
    each measured decode point's arithmetic intensity (FLOPs over compulsory bytes) against
    the device's ridge point (compute peak / bandwidth peak for decode's dtype: fp8 in an
    fp8 plan), the first
    measured batch at or above it, and the batch the formulas predict
    (:func:`~tritonlab.contrast.layer.decode_flip_batch`). Without a known ridge point (the
    CPU) only the intensities are given."""
    dtype = plan.dtype_of("decode")
    ridge = ridge_point(peaks, dtype)
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
                     decode_flip_batch(plan.config(), plan.n_layers, context, dtype, ridge))
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
    """Which regime demands most of each resource and which overall (``harder``), by the
    rules of :func:`tritonlab.measure.regimes.rank_regimes`, and the decode flip point
    (:func:`decode_flip`). When the regimes measured ran in different dtypes (an fp8 plan),
    compute is compared as % of each phase's own dtype's peak (:data:`OWN_PEAK_COMPUTE`),
    and the explanation says which dtype each regime ran in. Every sentence of the
    explanation is built from those numbers."""
    label = counters_label(rows, counters, backend)
    by_regime = {m: [r for r in rows if r.get("mode") == m and not r.get("error")
                     and not r.get("skipped")] for m in plan.modes}
    by_regime = {m: rs for m, rs in by_regime.items() if rs}
    flip = decode_flip([r for rs in by_regime.values() for r in rs], plan, peaks)
    if not by_regime:
        return {"counters": counters, "label": label, "harder": None, "decided_by": None,
                "resources": [], "flip": flip,
                "explanation": ["No measured phase: nothing to compare."]}
    mixed = len({plan.dtype_of(m) for m in by_regime}) > 1
    ranked = rank_regimes(by_regime, resources=tuple(
        OWN_PEAK_COMPUTE if mixed and res[0] == "compute" else res for res in RESOURCES))
    resources, harder, decided_by = ranked["resources"], ranked["harder"], ranked["decided_by"]
    lines = [f"Measured with {label}, on {device}; regimes measured: "
             f"{', '.join(by_regime)}."]
    if mixed:
        lines.append(f"The regimes ran in different dtypes ({plan.precision()}): compute is "
                     f"compared as % of each phase's own dtype's peak, the other resources "
                     f"as measured.")
    lines.append("Neither regime demands most overall: " + decided_by + "." if harder == "tie"
                 else f"{harder.capitalize()} demands most overall, by {decided_by}.")
    lines += resource_lines(resources)
    if idle and idle.get("avg_power_w") is not None:
        lines.append(f"Idle baseline: {fmt_num(idle['avg_power_w'], '.4g')} W.")
    lines += _flip_lines(flip)
    return {"counters": counters, "label": label, "harder": harder, "decided_by": decided_by,
            "resources": resources, "flip": flip, "explanation": lines}
