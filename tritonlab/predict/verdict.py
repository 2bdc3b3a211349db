"""The predicted verdict, in the contrast's form: per GPU, which regime demands most of each
resource and overall (:func:`tritonlab.measure.regimes.rank_regimes`, the rules the measured
verdict uses), and where decode flips from bandwidth bound to compute bound along the batch
axis; then every GPU side by side.

Predicted values carry no interval, so a predicted winner's confidence is ``no interval``
(or ``tie`` within 5%, ``exact`` for capacity): the order is the model's, not a
measurement's.

The flip: a decode step's arithmetic intensity (its kernels' FLOPs over their bytes) against
the effective ridge point e_c P / (e_b B) (the compute and bandwidth ceilings at the decode
efficiencies); the first batch at or above it is where decode turns compute bound
(:func:`tritonlab.measure.regimes.first_batch_reaching`, the contrast's bisection).
"""

from __future__ import annotations

from collections.abc import Mapping

from tritonlab.measure.regimes import first_batch_reaching, rank_regimes, resource_lines
from tritonlab.output import fmt_num
from tritonlab.predict import layer as L
from tritonlab.predict.model import DEFAULT_EFFICIENCY, Efficiency
from tritonlab.predict.points import Grid
from tritonlab.predict.targets import DTYPES, Target


def decode_flip(target: Target, grid: Grid, rows: list[dict], eff: Efficiency) -> dict:
    """Per decode context of the grid: each predicted point's intensity and bound, and the
    batch at which the step's intensity reaches the effective ridge (None: never, up to
    65536 sequences)."""
    cfg, s = grid.config(), DTYPES[grid.dtype][1]
    ridge = (eff.compute * target.peak(grid.dtype) * 1e3
             / (eff.bandwidth * target.ceilings.bandwidth_gbps))
    series = []
    contexts = sorted({n for _, n in grid.points["decode"]}) if "decode" in grid.regimes else []
    for context in contexts:
        def intensity(b: int, context=context) -> float:
            ks = L.decode_kernels(cfg, grid.n_layers, b, context, s)
            return sum(k.flops for k in ks) / sum(k.bytes for k in ks)

        points = [{"batch": r["batch"], "phase": r["name"], "arithmetic_intensity": r["intensity"],
                   "bound": "compute" if r["intensity"] >= ridge else "bandwidth"}
                  for r in rows if r["regime"] == "decode" and r["seq"] == context]
        first = next((p["batch"] for p in points if p["bound"] == "compute"), None)
        series.append({"context": context, "points": points, "first_compute_bound_batch": first,
                       "predicted_flip_batch": first_batch_reaching(intensity, ridge)})
    return {"ridge_flop_per_byte": ridge, "series": series}


def gpu_verdict(target: Target, grid: Grid, rows: list[dict],
                efficiency: Mapping[str, Efficiency] | None = None) -> dict:
    """One GPU's predicted verdict from its rows (:func:`~tritonlab.predict.points.layer_rows`):
    the ranked resources, ``harder`` and ``decided_by``, the decode flip, and the
    explanation as sentences, the first of which says it is a prediction."""
    eff = {**DEFAULT_EFFICIENCY, **(efficiency or {})}
    by_regime = {r: [row for row in rows if row["regime"] == r] for r in grid.regimes}
    by_regime = {r: rs for r, rs in by_regime.items() if rs}
    ranked = rank_regimes(by_regime)
    flip = decode_flip(target, grid, rows, eff["decode"])
    harder = ranked["harder"]
    lines = [f"Predicted (not measured) for {target.name}, {grid.model_size} x "
             f"{grid.n_layers} layers in {grid.dtype}; regimes: {', '.join(by_regime)}."]
    lines.append("Neither regime demands most overall: " + ranked["decided_by"] + "."
                 if harder == "tie" else
                 f"{harder.capitalize()} demands most overall, by {ranked['decided_by']}.")
    lines += resource_lines(ranked["resources"])
    for s in flip["series"]:
        where = (f"decode turns compute bound at about batch {s['predicted_flip_batch']}"
                 if s["predicted_flip_batch"] is not None else
                 "decode stays bandwidth bound at any batch (the KV reads grow with the batch "
                 "as the FLOPs do)")
        lines.append(f"Decode flip (context {s['context']}): against the effective ridge "
                     f"{fmt_num(flip['ridge_flop_per_byte'], '.3g')} FLOP/byte {where}.")
    return {"gpu": target.name, "predicted": True, "harder": harder,
            "decided_by": ranked["decided_by"], "resources": ranked["resources"],
            "flip": flip, "explanation": lines}


def side_by_side(verdicts: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The verdicts of several GPUs as one table: a row per resource (its winning regime and
    that regime's demand), then the overall answer and the decode flip batch per context."""
    headers = ["resource", *(v["gpu"] for v in verdicts)]
    names = [r["resource"] for r in verdicts[0]["resources"]] if verdicts else []
    rows = []
    for i, name in enumerate(names):
        cells = []
        for v in verdicts:
            r = v["resources"][i]
            win = r["winner"]
            d = r["by_regime"].get(win) if win not in (None, "tie") else None
            if d is None:
                cells.append(win or "-")
            elif r["unit"] == "bytes":
                cells.append(f"{win} ({d['value'] / 2**30:.3g} GiB)")
            else:
                cells.append(f"{win} ({fmt_num(d['value'], '.3g')} {r['unit']})")
        rows.append([name, *cells])
    rows.append(["overall", *(v["harder"] for v in verdicts)])
    contexts = [s["context"] for s in verdicts[0]["flip"]["series"]] if verdicts else []
    for i, context in enumerate(contexts):
        rows.append([f"decode flip batch (ctx {context})",
                     *(str(v["flip"]["series"][i]["predicted_flip_batch"] or "never")
                       for v in verdicts)])
    return headers, rows
