"""The sections of a report drawn from results rows: environment, ceilings, results per op,
roofline, runs side by side, correctness and static compile facts. Each returns the body of
its section, without its heading (none when it has nothing to show):
:mod:`~tritonlab.report.outline` gives each its heading, anchor and place."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from tritonlab.hw import devices
from tritonlab.hw.devices import Peaks
from tritonlab.report.document import (
    Block,
    Details,
    Figure,
    Figures,
    Heading,
    Para,
    Table,
    cell,
)
from tritonlab.report.plots import (
    NoPoints,
    figure_label,
    plot_roofline,
    plot_speedups,
    shape_label,
)
from tritonlab.report.summary import headlines, reading
from tritonlab.runs.store import Run


def _flatten(doc: Mapping, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            flat[name] = " ".join(str(v) for v in value) if name.endswith("argv") else value
        else:
            flat[name] = value
    return flat


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def figure_caption(run: Run, what: str) -> str:
    return f"{what}: run {run.label}, {figure_label(run.backend, run.device)}"


# Longer manifest values (lists of skipped points, long command lines) are summarised: one
# long cell would widen every row of the Markdown table to its length.
ENV_CELL_CHARS = 160


def _env_cell(value: object) -> object:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) <= ENV_CELL_CHARS:
        return text if isinstance(value, list) else value
    if isinstance(value, list):
        return f"{len(value)} entries (see manifest.json)"
    return text[:ENV_CELL_CHARS - 1] + "…"


# The fields a reader compares first between runs, shown above the fold: (label, flattened
# manifest keys tried in order).
ENV_KEY_FIELDS = (
    ("device", ("device.name",)), ("backend", ("backend",)),
    ("driver", ("versions.driver",)), ("CUDA", ("versions.cuda",)),
    ("torch version", ("versions.torch",)), ("triton version", ("versions.triton",)),
    ("git sha", ("git.sha",)), ("git dirty", ("git.dirty",)),
)


def environment(runs: list[Run]) -> list[Block]:
    """The fields compared first (device, driver, versions, git sha, clocks) in view; every
    manifest field and option folded below them."""
    # Ceilings have a section of their own.
    flats = [_flatten({k: v for k, v in r.manifest.items() if k not in ("peaks", "peaks_by_device")})
             for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    key_rows = []
    for label, names in ENV_KEY_FIELDS:
        values = [next((f[n] for n in names if f.get(n) is not None), None) for f in flats]
        if any(v is not None for v in values):
            key_rows.append([label, *map(_env_cell, values)])
    # Clocks are recorded under the device (GPU) or per sample (CPU): whichever it holds.
    for k in (k for k in keys if "clock" in k.lower()):
        key_rows.append([k, *[_env_cell(f.get(k)) for f in flats]])
    rows = [[k, *[_env_cell(f.get(k)) for f in flats]] for k in keys]
    headers = ["field", *[r.label for r in runs]]
    return [Table(headers, key_rows),
            Details(f"All manifest fields and options ({len(rows)})", [Table(headers, rows)])]


def ceilings(runs: list[Run], peaks: list[Peaks | None]) -> list[Block]:
    # A contrast alone is not drawn against ceilings.
    measured = [(run, p) for run, p in zip(runs, peaks) if run.rows]
    if not measured:
        return []
    blocks: list[Block] = []
    table = []
    for run, p in measured:
        for source in ("spec", "measured"):
            c = p.source(source) if p else None
            if c is None:
                continue
            for key in devices.COMPUTE_KEYS:
                peak = c.peak(key)
                if peak is None:
                    continue
                table.append([run.label, source, key, peak, c.bandwidth_gbps, c.ridge(key),
                              c.source])
        if p is None:
            blocks.append(Para(f"Run {run.label}: no ceilings known for {run.device} (not in "
                               f"the device table and not measured here: run `tritonlab "
                               f"device --measure` on that machine). Its rows have no % of "
                               f"roofline."))
    if table:
        blocks.append(Table(["run", "source", "dtype", "peak TFLOP/s", "memory GB/s",
                             "ridge FLOP/B", "from"], table))
    blocks.append(Para("% of roofline = achieved TFLOP/s / min(peak, intensity x bandwidth); "
                       "`spec` uses the datasheet's dense peaks, `measured` what "
                       "`tritonlab device --measure` sustained on this device (a large copy "
                       "and a large torch.matmul). A point can beat a measured ceiling (data "
                       "that stays in cache, a faster kernel than torch.matmul's for that "
                       "dtype): its % of roofline is then above 100."))
    return blocks


def _shape_flops_key(row: Mapping):
    return (row.get("flops") or 0, shape_label(row.get("shape")))


def op_anchor(op: str) -> str:
    return f"op-{slug(op)}"


def op_tables(runs: list[Run], fig_dir: Path) -> list[Block]:
    """Per op: its reading (two lines computed from the data), its speedup figure, then the
    table of every point, per run."""
    ops = list(dict.fromkeys(r.get("op") for run in runs for r in run.rows if r.get("op")))
    if not ops:
        return []
    heads = {(h.op, id(h.run)): h for h in headlines(runs)}
    blocks: list[Block] = []
    for op in ops:
        blocks.append(Heading(3, str(op), anchor=op_anchor(str(op))))
        readings: list[Block] = []
        figures: list[Figure] = []
        tables: list[Block] = []
        measured = [run for run in runs if any(r.get("op") == op for r in run.rows)]
        for run in measured:
            rows = [r for r in run.rows if r.get("op") == op]
            prefix = f"Run `{run.label}`: " if len(measured) > 1 else ""
            head = heads.get((str(op), id(run)))
            lines = reading(head) if head else [f"{op}: no Triton point with a baseline to "
                                                f"compare against."]
            readings += [Para(prefix + line) for line in lines]
            if len(measured) > 1:
                tables.append(Para(f"Run `{run.label}` ({run.backend}, {run.device})"))
            baselines = list(dict.fromkeys(b for r in rows for b in (r.get("speedup") or {})))
            rows.sort(key=lambda r: (str(r.get("mode")), str(r.get("dtype")),
                                     _shape_flops_key(r), str(r.get("impl"))))
            table = []
            for r in rows:
                speed = r.get("speedup") or {}
                table.append([r.get("impl"), r.get("mode"), r.get("dtype"),
                              shape_label(r.get("shape")), r.get("ms"),
                              r.get("tflops"), r.get("gbps"), r.get("intensity"),
                              r.get("pct_roofline"), r.get("pct_roofline_measured"),
                              r.get("roofline_bound") or r.get("roofline_bound_measured"),
                              *[speed.get(b) for b in baselines],
                              _correct_cell(r)])
            tables.append(Table(["impl", "mode", "dtype", "shape", "ms (median)", "TFLOP/s",
                                 "GB/s", "FLOP/B", "% roofline (spec)",
                                 "% roofline (measured)", "bound",
                                 *[f"speedup vs {b}" for b in baselines], "correct"], table))
            path = fig_dir / f"speedup-{slug(str(op))}-{slug(run.label)}.png"
            try:
                plot_speedups(rows, op=str(op), backend=run.backend,
                              device=run.device, path=path)
            except NoPoints as exc:
                readings.append(Para(f"No speedup plot: {exc}."))
            else:
                figures.append(Figure(path, figure_caption(run, f"{op} speedup per shape")))
        blocks += readings + ([Figures(figures)] if figures else []) + tables
    blocks.append(Para("speedup vs B = time of baseline B / time of this impl at the same "
                       "(mode, dtype, shape): above 1 the impl is faster."))
    return blocks


def _correct_cell(row: Mapping) -> str:
    if row.get("error"):
        return f"error: {str(row['error']).splitlines()[0][:80]}"
    c = row.get("correct")
    return "-" if c is None else ("ok" if c else "MISMATCH")


def rooflines(runs: list[Run], peaks: list[Peaks | None], fig_dir: Path) -> list[Block]:
    if not any(r.rows for r in runs):
        return []
    blocks: list[Block] = [Para("One point per (op, impl, mode, dtype, shape). Filled markers: "
                         "training (fwd, bwd, fwd_bwd); hollow: inference (infer). A grey "
                         "cross linked to a point marks the same work at the traffic of the "
                         "unfused chain (ops with a fused path). Solid roofs: datasheet; "
                         "dashed: measured.")]
    figures = []
    for run, run_peaks in ((r, p) for r, p in zip(runs, peaks) if r.rows):
        path = fig_dir / f"roofline-{slug(run.label)}.png"
        try:
            plot_roofline(run.rows, run_peaks, backend=run.backend, device=run.device,
                                   path=path, title=f"Roofline, run {run.label}")
        except NoPoints as exc:
            blocks.append(Para(f"Run {run.label}: no roofline plot: {exc}."))
            continue
        figures.append(Figure(path, figure_caption(run, "roofline")))
    if figures:
        blocks.append(Figures(figures))
    return blocks


def comparison(runs: list[Run]) -> list[Block]:
    runs = [r for r in runs if r.rows]
    if len(runs) < 2:
        return []
    base = runs[0]

    def key(r):
        return (r.get("op"), r.get("impl"), r.get("mode"), r.get("dtype"),
                shape_label(r.get("shape")))

    index = [{key(r): r for r in run.rows if r.get("error") is None} for run in runs]
    keys = [k for k in index[0] if any(k in other for other in index[1:])]
    blocks: list[Block] = [Para(f"TFLOP/s of the points measured in the first run ({base.label}) and "
                         f"at least one other; ratio = other / first (above 1: faster).")]
    if not keys:
        blocks.append(Para("No point was measured in both runs."))
        return blocks
    headers = ["op", "impl", "mode", "dtype", "shape", f"TFLOP/s {base.label}"]
    for run in runs[1:]:
        headers += [f"TFLOP/s {run.label}", f"ratio {run.label}"]
    rows = []
    for k in keys:
        first = index[0][k].get("tflops")
        line = [*k, first]
        for idx in index[1:]:
            other = idx.get(k, {}).get("tflops")
            ratio = other / first if isinstance(other, (int, float)) and first else None
            line += [other, ratio]
        rows.append(line)
    blocks.append(Table(headers, rows))
    return blocks


def correctness(runs: list[Run]) -> list[Block]:
    runs = [r for r in runs if r.rows]
    if not runs:
        return []
    blocks: list[Block] = []
    table, failures = [], []
    for run in runs:
        ok = sum(r.get("correct") is True and not r.get("error") for r in run.rows)
        bad = [r for r in run.rows if r.get("correct") is False or r.get("error")]
        unchecked = sum(r.get("correct") is None and not r.get("error") for r in run.rows)
        table.append([run.label, len(run.rows), ok, len(bad), unchecked])
        for r in bad:
            failures.append([run.label, r.get("op"), r.get("impl"), r.get("mode"),
                             r.get("dtype"), shape_label(r.get("shape")),
                             r.get("max_rel_err"), str(r.get("error") or "mismatch")[:160]])
    blocks.append(Table(["run", "points", "correct", "failed or mismatched", "not checked"],
                        table))
    if failures:
        blocks.append(Table(["run", "op", "impl", "mode", "dtype", "shape", "max rel err",
                             "why"], failures))
    else:
        blocks.append(Para("Every measured point matched its float64 reference."))
    return blocks


# Static facts shown per kernel (from :func:`tritonlab.static.inspect_ops.static_facts`).
_STATIC_FIELDS = ("registers", "spill_stores", "spill_loads", "smem_bytes", "threads",
                  "blocks_per_sm", "occupancy", "occupancy_limiter", "tensor_core", "error")


def _static_groups(static) -> list[Mapping]:
    """A row's ``static`` as a list of static_facts results: one for an op with one config,
    one per kernel for ops that record ``{target: facts}`` (linear's fwd, bwd_dx, bwd_dw)."""
    if not isinstance(static, Mapping) or not static:
        return []
    if "arch" not in static and all(isinstance(v, Mapping) for v in static.values()):
        return list(static.values())
    return [static]


def static_facts(runs: list[Run]) -> list[Block]:
    """One row per (run, op, impl, dtype, shape) kernel whose row carries a ``static`` object."""
    table = []
    for run in runs:
        for r in run.rows:
            for facts in _static_groups(r.get("static")):
                kernels = [k for k in facts.get("kernels") or [] if isinstance(k, Mapping)]
                for k in kernels or [facts]:
                    tc = k.get("tensor_core")
                    tc_text = (" ".join(f"{op}:{n}" for op, n in tc.items()) if
                               isinstance(tc, Mapping) else tc) or "-"
                    table.append([run.label, r.get("op"), r.get("impl"), r.get("dtype"),
                                  shape_label(r.get("shape")), facts.get("arch"),
                                  k.get("kernel"),
                                  *[tc_text if f == "tensor_core" else k.get(f)
                                    for f in _STATIC_FIELDS]])
    if not table:
        return []
    # Points of one kernel and config repeat the same facts: one table row each.
    unique = list({tuple(map(cell, row)): row for row in table}.values())
    return [Para("What the compiler produced for the Triton kernels (registers per thread, "
                 "spills in bytes, shared memory per block, resident blocks and occupancy "
                 "per SM, tensor-core instructions in the SASS)."),
            Table(["run", "op", "impl", "dtype", "shape", "arch", "kernel", *_STATIC_FIELDS],
                  [list(row) for row in unique])]
