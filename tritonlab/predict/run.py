"""A whole prediction (``tritonlab predict``): the decoder layer's regimes over a grid on each
GPU, their verdicts side by side, the assumptions, and the same as text.

The document: ``kind`` "prediction", ``predicted`` true, ``label`` (it is a prediction),
``grid``, ``assumptions`` (the model's, the efficiencies, each GPU's ceilings, capacity and
power model with their sources, the calibration), ``points`` (a row per GPU, regime and grid
point: :func:`tritonlab.predict.points.point_row`), ``verdicts`` (one per GPU) and
``side_by_side`` (headers and rows of the verdicts' table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from tritonlab.hw.specs import DEVICES, lookup
from tritonlab.output import fmt_num, table
from tritonlab.predict.against import LABEL
from tritonlab.predict.calibrate import Calibration
from tritonlab.predict.model import DEFAULT_EFFICIENCY
from tritonlab.predict.points import Grid, layer_rows
from tritonlab.predict.targets import DEFAULT_GPUS, DTYPES, Target, gpu_target, resolve_gpu
from tritonlab.predict.verdict import gpu_verdict, side_by_side

MODEL_ASSUMPTIONS = (
    "per kernel: time = max(FLOPs / (e_c x compute ceiling), bytes / (e_b x bandwidth)) "
    "+ launches x launch overhead; kernels run back to back (no overlap between them)",
    "bytes are compulsory DRAM traffic (each input read once, each output written once): "
    "cache reuse beyond that and re-reads are not modelled",
    "the decoder stack only (no embeddings, LM head or sampling), on one GPU (no "
    "parallelism, no communication)",
    "training: mixed-precision AdamW (fp32 masters, gradients, moments), the activations the "
    "lab's Triton training step saves (no recomputation)",
    "decode: one token per sequence at the contrast's ragged lengths (the longest at the "
    "context, the others down to about half of it); KV cache paged in blocks of 16, sized "
    "for max_seq per sequence",
    "power = idle + e_flop x FLOP/s + e_byte x bytes/s; above the limit the clocks drop "
    "until it holds (the step takes longer, bound 'power')",
    "footprints exclude the CUDA context, allocator slack and temporary buffers; capacity is "
    "the datasheet's GB as 10^9 bytes",
)


def _calibrated(target: Target, calibration: Calibration) -> Target:
    """``target`` with the calibration's power model when it was fitted on that device."""
    if calibration.power is None or calibration.target.name != target.name:
        return target
    return replace(target, power=calibration.power)


def targets_for(names: Sequence[str], *, ceilings: str = "auto",
                calibration: Calibration | None = None,
                present: str | None = None) -> list[Target]:
    """The devices to predict for: the GPUs ``names`` (``all``: the whole device table);
    without names, the calibrated device when there is a calibration, else the present GPU
    (``present``: its driver name) when the table has it, else :data:`DEFAULT_GPUS`. A
    calibration's power model replaces the default of the device it was fitted on."""
    names = list(dict.fromkeys(names))
    if "all" in names:
        specs = list(DEVICES)
    elif names:
        specs = [resolve_gpu(n) for n in names]
    elif calibration is not None:
        return [_calibrated(calibration.target, calibration)]
    elif present is not None and lookup(present) is not None:
        specs = [lookup(present)]
    else:
        specs = [resolve_gpu(n) for n in DEFAULT_GPUS]
    unique = [s for i, s in enumerate(specs) if s not in specs[:i]]  # specs hold dicts
    out = [gpu_target(s, ceilings=ceilings) for s in unique]
    return [_calibrated(t, calibration) if calibration else t for t in out]


def having_dtype(targets: Sequence[Target], dtype: str) -> tuple[list[Target], list[str]]:
    """The targets with a compute peak for ``dtype``, and the names of those without (what
    ``--gpu all`` leaves out rather than failing: the V100 and T4 have no bf16)."""
    key = DTYPES[dtype][0]
    return ([t for t in targets if t.ceilings.peak(key)],
            [t.name for t in targets if not t.ceilings.peak(key)])


def _row_assumptions(target: Target) -> dict:
    """The sources a row's numbers rest on (the full facts are in ``assumptions``)."""
    return {"ceilings": target.ceilings.source,
            "power": target.power.source if target.power else None,
            "capacity": target.assumptions()["capacity_source"]}


def predict(targets: Sequence[Target], grid: Grid,
            calibration: Calibration | None = None) -> dict:
    """The prediction document of the module docstring."""
    eff = {**DEFAULT_EFFICIENCY, **(calibration.efficiency if calibration else {})}
    for t in targets:  # every GPU must have the dtype before anything is computed
        t.peak(grid.dtype)
    points, verdicts = [], []
    for t in targets:
        rows = layer_rows(t, grid, eff)
        for r in rows:
            r["assumptions"] = _row_assumptions(t)
        points += rows
        verdicts.append(gpu_verdict(t, grid, rows, eff))
    headers, table_rows = side_by_side(verdicts)
    return {
        "kind": "prediction", "predicted": True, "label": LABEL, "grid": grid.to_dict(),
        "assumptions": {
            "model": list(MODEL_ASSUMPTIONS),
            "efficiency": {r: e.to_dict() for r, e in eff.items()},
            "gpus": {t.name: t.assumptions() for t in targets},
            "calibration": calibration.to_dict() if calibration else None,
        },
        "points": points, "verdicts": verdicts,
        "side_by_side": {"headers": headers, "rows": table_rows},
    }


# -------------------------------------------------------------------------------- text

def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.3g}"


def _footprint_text(fp: dict) -> str:
    short = {"weights": "w", "gradients": "g", "optimizer": "opt", "activations": "act",
             "kv_cache": "kv"}
    parts = " + ".join(f"{short.get(k, k)} {_gib(v)}" for k, v in fp.items() if k != "total")
    return f"{_gib(fp['total'])} ({parts})"


def point_table(rows: Sequence[dict]) -> tuple[list[str], list[list]]:
    """Headers and rows of the per-point table (text output and the report)."""
    headers = ["regime", "batch", "seq", "step ms", "tokens/s", "bound", "% compute",
               "% bandwidth", "footprint GiB (parts)", "fits (largest batch)", "power W",
               "J/token"]
    out = []
    for r in rows:
        fits = ("-" if r["fits"] is None else
                f"{'yes' if r['fits'] else 'NO'} ({r['largest_batch']})")
        out.append([r["regime"], r["batch"], r["seq"], fmt_num(r["ms"], ".4g"),
                    fmt_num(r["tokens_per_s"], ".4g"), r["bound"],
                    fmt_num(r["compute_pct"], ".3g"), fmt_num(r["bandwidth_pct"], ".3g"),
                    _footprint_text(r["footprint"]), fits, fmt_num(r["power_w"], ".4g"),
                    fmt_num(r["energy_per_token_j"], ".3g")])
    return headers, out


def text_lines(doc: dict) -> list[str]:
    """The prediction as text: per GPU its table and verdict, the GPUs side by side, then
    the assumptions."""
    g = doc["grid"]
    lines = [f"{doc['label']}.",
             f"Model: {g['model_size']} x {g['n_layers']} layers, {g['dtype']}, KV cache "
             f"max_seq {g['max_seq']} (seq = training sequence, prompt, or decode context)."]
    for v in doc["verdicts"]:
        rows = [r for r in doc["points"] if r["gpu"] == v["gpu"]]
        lines += ["", f"== {v['gpu']} (predicted)", table(point_table(rows)[1],
                                                          point_table(rows)[0])]
        lines += [f"  {line}" for line in v["explanation"]]
    if len(doc["verdicts"]) > 1:
        s = doc["side_by_side"]
        lines += ["", "Predicted verdicts side by side (regime demanding most, and its "
                      "demand):", table(s["rows"], s["headers"])]
    a = doc["assumptions"]
    lines += ["", "Assumptions:"] + [f"  - {m}" for m in a["model"]]
    lines.append("  - efficiencies (share of each ceiling): " + "; ".join(
        f"{r} compute {e['compute']:.3g}, bandwidth {e['bandwidth']:.3g}, launch "
        f"{e['launch_s'] * 1e6:.3g} us" for r, e in a["efficiency"].items())
        + f" ({_sources(a['efficiency'])})")
    for name, t in a["gpus"].items():
        power = t["power"]["source"] if t["power"] else "no power model"
        lines.append(f"  - {name}: ceilings {t['ceilings']['source']}; capacity "
                     f"{_gib(t['capacity_bytes'])} GiB ({t['capacity_source']}); power: {power}")
    return lines


def _sources(eff: dict) -> str:
    return "; ".join(dict.fromkeys(e["source"] for e in eff.values()))


def against_lines(doc: dict) -> list[str]:
    """An ``--against`` comparison as text: the note, the error per op and per regime, and
    every point's ratio."""
    lines = [f"{doc['label']}, compared with {doc['run_label']} ({doc['run']}).",
             f"Note: {doc['note']}."]
    headers = ["group", "points", "geomean pred/meas", "geomean error x", "worst x",
               "worst point"]
    rows = []
    for group in ("regime", "op"):
        for name, e in doc["error"][group].items():
            rows.append([f"{group} {name}", e["points"], fmt_num(e["geomean_ratio"], ".3g"),
                         fmt_num(e["geomean_error"], ".3g"), fmt_num(e["worst_error"], ".3g"),
                         e["worst_point"]])
    o = doc["error"]["overall"]
    rows.append(["overall", o["points"], fmt_num(o["geomean_ratio"], ".3g"),
                 fmt_num(o["geomean_error"], ".3g"), fmt_num(o["worst_error"], ".3g"),
                 o["worst_point"]])
    lines.append(table(rows, headers))
    lines.append("")
    lines.append(table([[r["point"], fmt_num(1e3 * r["predicted_s"], ".4g"),
                         fmt_num(1e3 * r["measured_s"], ".4g"), fmt_num(r["ratio"], ".3g"),
                         r["bound"]] for r in doc["points"]],
                       ["point", "predicted ms", "measured ms", "pred/meas", "bound"]))
    return lines
