"""The report's prediction section, from ``RUN/prediction.json`` (written by ``tritonlab
predict --against RUN`` and by the demo): the GPUs' predicted verdicts side by side with a
figure, each GPU's predicted points, and the model against the run's measurements. Every
block says it is a prediction, with the assumptions it used."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from tritonlab.output import fmt_num
from tritonlab.predict.against import read as read_prediction
from tritonlab.predict.run import point_table
from tritonlab.report.document import (
    Banner,
    Block,
    Bullets,
    Details,
    Figure,
    Heading,
    Para,
    Table,
)
from tritonlab.report.plots import save_figure, subplots
from tritonlab.report.sections import slug
from tritonlab.runs.store import Run

# (row key, panel title, log scale)
_PANELS = (("tokens_per_s", "tokens/s", True), ("power_w", "power (W)", False),
           ("energy_per_token_j", "energy per token (J)", True))


def plot_gpus(points: list[Mapping], path: Path) -> Path:
    """One figure of the GPUs side by side: per grid point (x) a bar per GPU, in three panels
    (tokens/s, power with each GPU's limit marked, energy per token), hatched where the
    point's footprint exceeds the GPU's memory, titled as a prediction."""
    gpus = list(dict.fromkeys(p["gpu"] for p in points))
    names = list(dict.fromkeys(p["name"] for p in points))
    fig, axes = subplots(1, len(_PANELS), figsize=(5.2 * len(_PANELS), 4.2))
    width = 0.8 / len(gpus)
    for ax, (key, title, log) in zip(axes, _PANELS):
        for i, gpu in enumerate(gpus):
            mine = {p["name"]: p for p in points if p["gpu"] == gpu}
            for j, n in enumerate(names):
                p = mine.get(n)
                if p is None or p.get(key) is None:
                    continue
                ax.bar(j + (i - (len(gpus) - 1) / 2) * width, p[key], width, color=f"C{i}",
                       label=gpu if j == 0 else None,
                       hatch="//" if p.get("fits") is False else None,
                       alpha=0.45 if p.get("fits") is False else 1.0)
            limit = next((p.get("power_limit_w") for p in points if p["gpu"] == gpu), None)
            if key == "power_w" and limit:
                ax.axhline(limit, color=f"C{i}", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title + (" — dotted: power limit" if key == "power_w" else ""), fontsize=10)
        if log and all(v > 0 for p in points if (v := p.get(key)) is not None
                       and math.isfinite(v)):
            ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("PREDICTED (analytic roofline model, not measured): training, prefill and "
                 "decode per GPU; hatched: does not fit in the GPU's memory", fontsize=12)
    fig.tight_layout()
    return save_figure(fig, path)


def _gpus_blocks(run: Run, doc: Mapping, fig_dir: Path) -> list[Block]:
    g = doc.get("grid") or {}
    points = [p for p in doc.get("points") or [] if isinstance(p, Mapping)]
    for p in points:  # the figure marks each GPU's limit
        gpu = (doc.get("assumptions") or {}).get("gpus", {}).get(p["gpu"]) or {}
        p["power_limit_w"] = (gpu.get("power") or {}).get("limit_w")
    blocks: list[Block] = [
        Banner(f"{doc.get('label', 'PREDICTION')}: these numbers were computed, not measured."),
        Para(f"{g.get('model_size', '?')} x {g.get('n_layers', '?')} layers in "
             f"{g.get('dtype', '?')}, KV cache max_seq {g.get('max_seq', '?')}; seq is the "
             f"training sequence, the prompt or the decode context.")]
    side = doc.get("side_by_side") or {}
    if side.get("rows"):
        blocks.append(Para("Predicted verdict per GPU (the regime that demands most of each "
                           "resource, and its demand):"))
        blocks.append(Table(list(side["headers"]), [list(r) for r in side["rows"]]))
    if points:
        path = plot_gpus(points, fig_dir / f"predicted-gpus-{slug(run.label)}.png")
        blocks.append(Figure(path, "Predicted tokens/s, power and energy per token per GPU "
                                   "(a prediction, not a measurement)"))
    for v in doc.get("verdicts") or []:
        rows = [p for p in points if p["gpu"] == v["gpu"]]
        headers, table_rows = point_table(rows)
        blocks.append(Details(f"{v['gpu']} (predicted): {v.get('harder')} demands most overall",
                              [Table(headers, table_rows),
                               Bullets([str(x) for x in v.get("explanation") or []])]))
    a = doc.get("assumptions") or {}
    items = [str(m) for m in a.get("model") or []]
    items += [f"efficiency {r}: compute {fmt_num(e['compute'], '.3g')}, bandwidth "
              f"{fmt_num(e['bandwidth'], '.3g')}, launch {fmt_num(e['launch_s'] * 1e6, '.3g')}"
              f" us ({e['source']})" for r, e in (a.get("efficiency") or {}).items()]
    items += [f"{n}: ceilings {t['ceilings']['source']}; power "
              f"{(t.get('power') or {}).get('source', 'none')}"
              for n, t in (a.get("gpus") or {}).items()]
    blocks.append(Details("Assumptions of this prediction", [Bullets(items)]))
    return blocks


def _against_blocks(doc: Mapping) -> list[Block]:
    blocks: list[Block] = [Para(f"The model against this run's measurements. {doc['note']}.")]
    if not doc.get("accuracy_claim"):
        blocks.append(Banner("Not a measurement of the model's accuracy: the run was not on "
                             "a GPU."))
    err = doc.get("error") or {}
    rows = []
    for group in ("regime", "op"):
        for name, e in (err.get(group) or {}).items():
            rows.append([f"{group} {name}", e["points"], e["geomean_ratio"], e["geomean_error"],
                         e["worst_error"], e["worst_point"]])
    if err.get("overall"):
        o = err["overall"]
        rows.append(["overall", o["points"], o["geomean_ratio"], o["geomean_error"],
                     o["worst_error"], o["worst_point"]])
    blocks.append(Table(["group", "points", "geomean predicted/measured", "geomean error x",
                         "worst x", "worst point"], rows))
    blocks.append(Details("Every point: predicted and measured time",
                          [Table(["point", "predicted ms", "measured ms", "predicted/measured",
                                  "bound"],
                                 [[p["point"], 1e3 * p["predicted_s"], 1e3 * p["measured_s"],
                                   p["ratio"], p["bound"]] for p in doc.get("points") or []])]))
    return blocks


def predictions(runs: list[Run], fig_dir: Path) -> list[Block]:
    """The section: for each run that has a prediction, its GPUs' prediction and its
    comparison with the run, whichever it holds."""
    blocks: list[Block] = []
    with_doc = [(r, d) for r in runs if (d := read_prediction(r.path)) is not None]
    for run, doc in with_doc:
        if len(with_doc) > 1:
            blocks.append(Heading(3, f"Run {run.label}"))
        if isinstance(doc.get("gpus"), Mapping):
            blocks += _gpus_blocks(run, doc["gpus"], fig_dir)
        if isinstance(doc.get("against"), Mapping):
            blocks += _against_blocks(doc["against"])
    return blocks
