"""Reports: ``tritonlab report RUN... [-o DIR]`` writes ``report.md`` (figures beside it, in
``figures/``) and a self-contained ``index.html`` (figures embedded as base64 PNG; no script,
font or style is fetched from the network).

A report reads run directories (DESIGN.md "Run directory"): ``manifest.json``,
``results.jsonl``, and, when present, ``contrast.json``, ``counters.csv`` and
``timeline.png``. It contains: the environment manifests side by side; the ceilings; per op a
table of time, TFLOP/s, GB/s, % of roofline (against spec and measured ceilings) and speedup
per baseline, with a speedup-vs-shape plot; one roofline plot per run; a run-to-run
comparison when several runs are given; the training-vs-inference section when a run has a
contrast; the correctness summary; static compile facts when rows carry them. Every figure
names its backend and device, and interpreter runs are marked as not GPU performance.

The document is built once as a list of blocks and rendered twice (Markdown and HTML), so the
two files always say the same thing.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tritonlab.errors import UsageError
from tritonlab.hw import devices
from tritonlab.output import fmt_num
from tritonlab.report import roofline
from tritonlab.runs import store as runstore

# ------------------------------------------------------------------------------- run loading


@dataclass
class Run:
    """One run directory, read and validated."""

    path: Path
    manifest: dict
    rows: list[dict]
    contrast: dict | None = None
    counters_csv: Path | None = None
    timeline_png: Path | None = None
    warnings: list[str] = field(default_factory=list)
    peaks: devices.Peaks | None = None

    @property
    def label(self) -> str:
        """The run's name in tables and figures: its kind and id (``sweep-20261127-...``)."""
        run_id = str(self.manifest.get("run_id") or self.path.name)
        kind = self.manifest.get("kind")
        return f"{kind}-{run_id}" if kind and not run_id.startswith(str(kind)) else run_id

    @property
    def backend(self) -> str:
        return str(self.manifest.get("backend") or _first(self.rows, "backend") or "unknown")

    @property
    def device(self) -> str:
        return _device_name(self.manifest) or str(_first(self.rows, "device") or "unknown")

    @property
    def is_gpu(self) -> bool:
        return self.backend == "cuda"


def _first(rows: list[dict], key: str):
    return next((r[key] for r in rows if r.get(key)), None)


def _device_name(manifest: Mapping) -> str | None:
    dev = manifest.get("device")
    if isinstance(dev, Mapping):
        return dev.get("name")
    return dev or manifest.get("device_name")


def _device_uuid(manifest: Mapping) -> str | None:
    dev = manifest.get("device")
    if isinstance(dev, Mapping) and dev.get("uuid"):
        return dev["uuid"]
    return manifest.get("uuid") or manifest.get("device_uuid")


def load_run(path) -> Run:
    """Read and validate a run directory through :class:`tritonlab.runs.store.RunDir`:
    UsageError for a missing directory, one without ``manifest.json``, an unreadable file or
    a ``schema_version`` newer than this tritonlab reads (manifest, rows or contrast). A
    truncated last line of ``results.jsonl`` (an interrupted run) is skipped with a warning."""
    run_dir = runstore.RunDir.open(path)
    run = Run(path=run_dir.path, manifest=run_dir.manifest(), rows=[])
    run.rows = run_dir.rows(warn=lambda m: run.warnings.append(m.removeprefix("warning: ")))
    contrast = run.path / "contrast.json"
    if contrast.is_file():
        try:
            doc = json.loads(contrast.read_text())
        except ValueError as exc:
            run.warnings.append(f"{contrast} is not valid JSON ({exc}); its section is left out")
        else:
            version = doc.get("schema_version") if isinstance(doc, dict) else None
            if isinstance(version, int) and version > runstore.SCHEMA_VERSION:
                raise UsageError(f"{contrast}: schema_version {version} is newer than this "
                                 f"tritonlab reads ({runstore.SCHEMA_VERSION}); upgrade "
                                 f"tritonlab")
            if isinstance(doc, dict):
                run.contrast = doc
    if run_dir.counters_path.is_file():
        run.counters_csv = run_dir.counters_path
    if (run.path / "timeline.png").is_file():
        run.timeline_png = run.path / "timeline.png"
    if not run.rows and run.contrast is None:
        run.warnings.append(f"{run.path}: no results rows and no contrast: nothing measured")
    run.peaks = run_peaks(run)
    _annotate(run)
    return run


def run_peaks(run: Run) -> devices.Peaks | None:
    """The ceilings a run is drawn against: the manifest's ``peaks`` when the sweep stored
    them, else the device table (GPU runs) and this machine's cached measurements of that
    same device (matched by UUID or name)."""
    stored = run.manifest.get("peaks")
    if isinstance(stored, Mapping):
        return devices.Peaks.from_dict(stored)
    kind = "cuda" if run.is_gpu else "cpu"
    info = {"name": run.device, "uuid": _device_uuid(run.manifest) if run.is_gpu else None,
            "kind": kind, "backend": run.backend}
    return devices.peaks_for(info)


def _unfused_bytes_fn(op_name: str):
    """The op's ``unfused_bytes`` from its SPEC (None when the op is unknown here or not
    fused)."""
    from tritonlab.ops import registry

    try:
        spec = registry.discover().get(op_name)
    except Exception:  # noqa: BLE001 - a report must render even if a kernel fails to import
        return None
    return spec.unfused_bytes if spec is not None else None


def _annotate(run: Run) -> None:
    """Fill the roofline fields of rows that have none (the sweep knew no ceilings, e.g. the
    CPU before `tritonlab device --measure`, but the report does), and the unfused intensity
    of fused ops (for the linked points of the roofline)."""
    from tritonlab.ops.contract import DTYPES

    fns: dict[str, object] = {}
    for row in run.rows:
        if run.peaks is not None and all(row.get(f) is None for f in roofline.ROW_FIELDS):
            roofline.annotate_row(row, run.peaks)
        unfused = row.get("unfused_bytes")
        op = str(row.get("op"))
        if "unfused_bytes" not in row and op not in fns:  # rows from before the sweep kept it
            fns[op] = _unfused_bytes_fn(op)
        fn = fns.get(op)
        if unfused is None and callable(fn) and row.get("dtype") in DTYPES:
            try:
                unfused = fn(row["shape"], DTYPES[row["dtype"]], row.get("mode"))
            except (KeyError, TypeError, ValueError):
                unfused = None
        if isinstance(unfused, (int, float)) and unfused > 0 and row.get("flops"):
            row["unfused_intensity"] = row["flops"] / unfused


# ----------------------------------------------------------------------- document blocks


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str  # `code` spans are rendered as code


@dataclass
class Banner:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    headers: list[str]
    rows: list[list]


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Figures:
    """Figures shown side by side (one per run)."""

    items: list[Figure]


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return fmt_num(value, ".4g")
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def render_markdown(blocks: list, out_dir: Path) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            lines += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            lines += [b.text, ""]
        elif isinstance(b, Banner):
            lines += [f"> **{b.text}**", ""]
        elif isinstance(b, Bullets):
            lines += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Table):
            esc = [[_cell(c).replace("|", "\\|").replace("\n", " ") for c in r] for r in b.rows]
            lines.append("| " + " | ".join(h.replace("|", "\\|") for h in b.headers) + " |")
            lines.append("|" + "|".join("---" for _ in b.headers) + "|")
            lines += ["| " + " | ".join(r) + " |" for r in esc]
            lines.append("")
        elif isinstance(b, (Figure, Figures)):
            for f in (b.items if isinstance(b, Figures) else [b]):
                rel = f.path.relative_to(out_dir).as_posix()
                lines += [f"![{f.caption}]({rel})", "", f"*{f.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #333; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
.banner { background: #fff3cd; border: 1px solid #e0b000; padding: .6em 1em; font-weight: bold;
          border-radius: 4px; }
.figs { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
figure { margin: .5em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
.figs figure { flex: 1 1 600px; }
figcaption { font-size: 13px; color: #555; }
"""


def _html_inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(blocks: list, title: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{html.escape(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{_html_inline(b.text)}</p>")
        elif isinstance(b, Banner):
            out.append(f'<p class="banner">{html.escape(b.text)}</p>')
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{_html_inline(i)}</li>" for i in b.items)
                       + "</ul>")
        elif isinstance(b, Table):
            out.append("<table>")
            out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
                       + "</tr>")
            for r in b.rows:
                out.append("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in r)
                           + "</tr>")
            out.append("</table>")
        elif isinstance(b, (Figure, Figures)):
            items = b.items if isinstance(b, Figures) else [b]
            out.append('<div class="figs">')
            for f in items:
                out.append(f'<figure><img src="{_data_uri(f.path)}" '
                           f'alt="{html.escape(f.caption, quote=True)}">'
                           f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
            out.append("</div>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ the sections


def _flatten(doc: Mapping, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            flat[name] = " ".join(str(v) for v in value) if name.endswith("argv") else value
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "x"


def _figure_caption(run: Run, what: str) -> str:
    return f"{what}: run {run.label}, {roofline.figure_label(run.backend, run.device)}"


def _environment(runs: list[Run]) -> list:
    flats = [_flatten({k: v for k, v in r.manifest.items() if k != "peaks"}) for r in runs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    rows = [[k, *[f.get(k) for f in flats]] for k in keys]
    return [Heading(2, "Environment"), Table(["field", *[r.label for r in runs]], rows)]


def _ceilings(runs: list[Run]) -> list:
    runs = [r for r in runs if r.rows]  # a contrast alone is not drawn against ceilings
    if not runs:
        return []
    blocks: list = [Heading(2, "Ceilings")]
    table = []
    for run in runs:
        p = run.peaks
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
    return (row.get("flops") or 0, roofline.shape_label(row.get("shape")))


def _op_tables(runs: list[Run], fig_dir: Path) -> list:
    ops = list(dict.fromkeys(r.get("op") for run in runs for r in run.rows if r.get("op")))
    if not ops:
        return []
    blocks: list = [Heading(2, "Results per op")]
    for op in ops:
        blocks.append(Heading(3, str(op)))
        figures = []
        for run in runs:
            rows = [r for r in run.rows if r.get("op") == op]
            if not rows:
                continue
            if len(runs) > 1:
                blocks.append(Para(f"Run `{run.label}` ({run.backend}, {run.device})"))
            baselines = list(dict.fromkeys(b for r in rows for b in (r.get("speedup") or {})))
            rows.sort(key=lambda r: (str(r.get("mode")), str(r.get("dtype")),
                                     _shape_flops_key(r), str(r.get("impl"))))
            table = []
            for r in rows:
                speed = r.get("speedup") or {}
                table.append([r.get("impl"), r.get("mode"), r.get("dtype"),
                              roofline.shape_label(r.get("shape")), r.get("ms"),
                              r.get("tflops"), r.get("gbps"), r.get("intensity"),
                              r.get("pct_roofline"), r.get("pct_roofline_measured"),
                              r.get("roofline_bound") or r.get("roofline_bound_measured"),
                              *[speed.get(b) for b in baselines],
                              _correct_cell(r)])
            blocks.append(Table(["impl", "mode", "dtype", "shape", "ms (median)", "TFLOP/s",
                                 "GB/s", "FLOP/B", "% roofline (spec)",
                                 "% roofline (measured)", "bound",
                                 *[f"speedup vs {b}" for b in baselines], "correct"], table))
            path = fig_dir / f"speedup-{_slug(str(op))}-{_slug(run.label)}.png"
            try:
                roofline.plot_speedups(rows, op=str(op), backend=run.backend,
                                       device=run.device, path=path)
            except roofline.NoPoints as exc:
                blocks.append(Para(f"No speedup plot: {exc}."))
            else:
                figures.append(Figure(path, _figure_caption(run, f"{op} speedup per shape")))
        if figures:
            blocks.append(Figures(figures))
    blocks.append(Para("speedup vs B = time of baseline B / time of this impl at the same "
                       "(mode, dtype, shape): above 1 the impl is faster."))
    return blocks


def _correct_cell(row: Mapping) -> str:
    if row.get("error"):
        return f"error: {str(row['error']).splitlines()[0][:80]}"
    c = row.get("correct")
    return "-" if c is None else ("ok" if c else "MISMATCH")


def _rooflines(runs: list[Run], fig_dir: Path) -> list:
    if not any(r.rows for r in runs):
        return []
    blocks: list = [Heading(2, "Roofline"),
                    Para("One point per (op, impl, mode, dtype, shape). Filled markers: "
                         "training (fwd, bwd, fwd_bwd); hollow: inference (infer). A grey "
                         "cross linked to a point marks the same work at the traffic of the "
                         "unfused chain (ops with a fused path). Solid roofs: datasheet; "
                         "dashed: measured.")]
    figures = []
    for run in (r for r in runs if r.rows):
        path = fig_dir / f"roofline-{_slug(run.label)}.png"
        try:
            roofline.plot_roofline(run.rows, run.peaks, backend=run.backend, device=run.device,
                                   path=path, title=f"Roofline, run {run.label}")
        except roofline.NoPoints as exc:
            blocks.append(Para(f"Run {run.label}: no roofline plot: {exc}."))
            continue
        figures.append(Figure(path, _figure_caption(run, "roofline")))
    if figures:
        blocks.append(Figures(figures))
    return blocks


def _comparison(runs: list[Run]) -> list:
    runs = [r for r in runs if r.rows]
    if len(runs) < 2:
        return []
    base = runs[0]

    def key(r):
        return (r.get("op"), r.get("impl"), r.get("mode"), r.get("dtype"),
                roofline.shape_label(r.get("shape")))

    index = [{key(r): r for r in run.rows if r.get("error") is None} for run in runs]
    keys = [k for k in index[0] if any(k in other for other in index[1:])]
    blocks: list = [Heading(2, "Runs side by side"),
                    Para(f"TFLOP/s of the points measured in the first run ({base.label}) and "
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


# Columns of the phase table and panels of the contrast figure: (phase key, title with unit).
# Only those some phase has are shown, so GPU (NVML) and CPU contrasts both fit.
_PHASE_COLUMNS = (
    ("steps", "steps"), ("throughput_samples_s", "samples/s"),
    ("latency_p50_ms", "p50 ms"), ("latency_p99_ms", "p99 ms"), ("tflops", "TFLOP/s"),
    ("energy_per_sample_j", "J/sample"), ("avg_power_w", "W avg"), ("p95_power_w", "W p95"),
    ("power_share_pct", "% power limit"), ("sm_clock_mhz", "SM MHz"),
    ("gpm_sm_util_pct", "SM %"), ("gpm_tensor_util_pct", "tensor %"),
    ("gpm_dram_bw_util_pct", "DRAM BW %"), ("gpu_util_pct", "GPU busy %"),
    ("proc_cpu_pct", "CPU %"), ("sys_cpu_pct", "system CPU %"), ("cpu_freq_mhz", "CPU MHz"),
    ("peak_mem_mib", "peak MiB"), ("temp_rise_c", "temp rise C"),
    ("throttled_pct", "% throttled"),
)
_PHASE_PANELS = (
    ("throughput_samples_s", "throughput (samples/s)"),
    ("latency_p50_ms", "latency p50 (ms)"),
    ("avg_power_w", "average power (W)"),
    ("power_share_pct", "power (% of limit)"),
    ("energy_per_sample_j", "energy per sample (J)"),
    ("gpm_sm_util_pct", "SM utilisation (%)"),
    ("gpm_tensor_util_pct", "tensor-pipe utilisation (%)"),
    ("gpm_dram_bw_util_pct", "DRAM bandwidth utilisation (%)"),
    ("gpu_util_pct", "GPU busy (%)"),
    ("proc_cpu_pct", "process CPU (% of a core)"),
    ("peak_mem_mib", "peak memory (MiB)"),
)


def _contrast(runs: list[Run], fig_dir: Path) -> list:
    """The training-vs-inference section from contrast.json (written by
    :mod:`tritonlab.contrast.run`): verdict, phase table, bars, kernel-vs-baseline
    ratios, the counter timeline. Every key is optional."""
    with_contrast = [r for r in runs if r.contrast is not None]
    if not with_contrast:
        return []
    blocks: list = [Heading(2, "Training vs inference")]
    for run in with_contrast:
        if len(with_contrast) > 1:
            blocks.append(Heading(3, f"Run {run.label}"))
        doc = run.contrast or {}
        backend = str(doc.get("backend") or run.backend)
        device = str(doc.get("device") or run.device)
        if backend != "cuda" or doc.get("counters") not in (None, "nvml"):
            blocks.append(Banner("This contrast was measured with CPU counters (the kernels "
                                 "ran on the CPU): it describes CPU load, NOT GPU behaviour."))
        model, plan = doc.get("model") or {}, doc.get("plan") or {}
        if model or plan:
            blocks.append(Para(
                f"Model {model.get('size', '?')} (dim {model.get('dim', '?')}, hidden "
                f"{model.get('hidden', '?')}, {model.get('dtype', '?')}); batches "
                f"{', '.join(map(str, plan.get('batches') or [])) or '?'}; "
                f"{plan.get('duration_s', '?')} s per measured phase; counters: "
                f"{doc.get('counters', '?')}."))
        verdict = doc.get("verdict") if isinstance(doc.get("verdict"), Mapping) else {}
        if verdict:
            harder = verdict.get("harder")
            names = {"train": "training", "infer": "inference", "tie": "neither mode"}
            head = (f"Verdict: {names.get(harder, harder)} pushes harder" if harder
                    else "Verdict: undecided")
            if verdict.get("decided_by"):
                head += f" (decided by {verdict['decided_by']})"
            blocks.append(Para(head + "."))
            explanation = [str(x) for x in verdict.get("explanation") or []]
            if explanation:
                blocks.append(Bullets(explanation))
        phases = [p for p in doc.get("phases") or [] if isinstance(p, Mapping)]
        if phases:
            cols = [(k, h) for k, h in _PHASE_COLUMNS if any(p.get(k) is not None for p in phases)]
            blocks.append(Table(["phase", "mode", "impl", "batch", *[h for _, h in cols],
                                 "error"],
                                [[p.get("name"), p.get("mode"), p.get("impl"), p.get("batch"),
                                  *[p.get(k) for k, _ in cols], p.get("error")]
                                 for p in phases]))
            path = fig_dir / f"train-vs-infer-{_slug(run.label)}.png"
            try:
                roofline.plot_phase_bars(phases, _PHASE_PANELS,
                                         title=f"Training vs inference, run {run.label}",
                                         backend=backend, device=device, path=path)
            except roofline.NoPoints as exc:
                blocks.append(Para(f"No training-vs-inference plot: {exc}."))
            else:
                blocks.append(Figure(path, _figure_caption(run, "training vs inference")))
        comparison = [c for c in doc.get("impl_comparison") or [] if isinstance(c, Mapping)]
        if comparison:
            blocks.append(Para("The lab's kernels against the baseline in each regime "
                               "(ratios > 1: more throughput, more latency, more energy per "
                               "sample than the baseline):"))
            blocks.append(Table(["mode", "batch", "impl", "baseline", "throughput x",
                                 "p50 latency x", "energy/sample x"],
                                [[c.get("mode"), c.get("batch"), c.get("impl"),
                                  c.get("baseline"), c.get("throughput_ratio"),
                                  c.get("latency_p50_ratio"), c.get("energy_per_sample_ratio")]
                                 for c in comparison]))
        notes = [str(w) for w in doc.get("warnings") or []]
        if notes:
            blocks += [Para("Warnings of the contrast:"), Bullets(notes)]
        if run.timeline_png:
            copy = fig_dir / f"timeline-{_slug(run.label)}.png"
            shutil.copyfile(run.timeline_png, copy)
            blocks.append(Figure(copy, _figure_caption(run, "counter timeline")))
        if run.counters_csv:
            blocks += _counters_summary(run.counters_csv)
    return blocks


def _counters_summary(path: Path) -> list:
    try:
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            phases = [rec.get("phase") or "" for rec in reader]
    except (OSError, csv.Error) as exc:
        return [Para(f"counters.csv could not be read: {exc}")]
    metrics = [c for c in columns if c not in ("time", "t", "t_s", "time_s", "time_unix",
                                               "phase")]
    return [Para(f"`counters.csv` (beside the contrast's manifest): {len(phases)} samples over "
                 f"{len(set(phases) - {''})} phases; metrics: {', '.join(metrics) or 'none'}.")]


def _correctness(runs: list[Run]) -> list:
    runs = [r for r in runs if r.rows]
    if not runs:
        return []
    blocks: list = [Heading(2, "Correctness")]
    table, failures = [], []
    for run in runs:
        ok = sum(r.get("correct") is True and not r.get("error") for r in run.rows)
        bad = [r for r in run.rows if r.get("correct") is False or r.get("error")]
        unchecked = sum(r.get("correct") is None and not r.get("error") for r in run.rows)
        table.append([run.label, len(run.rows), ok, len(bad), unchecked])
        for r in bad:
            failures.append([run.label, r.get("op"), r.get("impl"), r.get("mode"),
                             r.get("dtype"), roofline.shape_label(r.get("shape")),
                             r.get("max_rel_err"), str(r.get("error") or "mismatch")[:160]])
    blocks.append(Table(["run", "points", "correct", "failed or mismatched", "not checked"],
                        table))
    if failures:
        blocks.append(Table(["run", "op", "impl", "mode", "dtype", "shape", "max rel err",
                             "why"], failures))
    else:
        blocks.append(Para("Every measured point matched its float64 reference."))
    return blocks


# Static facts shown per kernel (from :func:`tritonlab.static.driver.static_facts`).
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


def _static(runs: list[Run]) -> list:
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
                                  roofline.shape_label(r.get("shape")), facts.get("arch"),
                                  k.get("kernel"),
                                  *[tc_text if f == "tensor_core" else k.get(f)
                                    for f in _STATIC_FIELDS]])
    if not table:
        return []
    unique = list(dict.fromkeys(tuple(map(_cell, row)) for row in table))
    return [Heading(2, "Static compile facts"),
            Para("What the compiler produced for the Triton kernels (registers per thread, "
                 "spills in bytes, shared memory per block, resident blocks and occupancy "
                 "per SM, tensor-core instructions in the SASS)."),
            Table(["run", "op", "impl", "dtype", "shape", "arch", "kernel", *_STATIC_FIELDS],
                  [list(row) for row in unique])]


# --------------------------------------------------------------------------------- the report


@dataclass
class ReportPaths:
    out_dir: Path
    markdown: Path
    html: Path
    figures: list[Path]
    warnings: list[str]


def build_blocks(runs: list[Run], fig_dir: Path) -> list:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    blocks: list = [Heading(1, "tritonlab report"),
                    Para(f"Generated {now} from {len(runs)} run(s): "
                         + ", ".join(f"`{r.label}` ({r.backend}, {r.device})" for r in runs)
                         + ".")]
    interp = [r.label for r in runs if not r.is_gpu]
    if interp:
        blocks.append(Banner(f"Run(s) {', '.join(interp)} ran on the Triton interpreter on a "
                             f"CPU: their times show that the kernels run and are correct; "
                             f"they are NOT GPU performance."))
    warnings = [w for r in runs for w in r.warnings]
    if warnings:
        blocks += [Heading(2, "Warnings"), Table(["warning"], [[w] for w in warnings])]
    blocks += _environment(runs)
    blocks += _ceilings(runs)
    blocks += _rooflines(runs, fig_dir)
    blocks += _op_tables(runs, fig_dir)
    blocks += _comparison(runs)
    blocks += _contrast(runs, fig_dir)
    blocks += _correctness(runs)
    blocks += _static(runs)
    return blocks


def default_out_dir(run_dirs: list) -> Path:
    """One run: ``RUN/report``; several: ``report-<first>-vs-<others>`` beside the first."""
    first = Path(run_dirs[0])
    if len(run_dirs) == 1:
        return first / "report"
    names = "-vs-".join(_slug(Path(p).name) for p in run_dirs)[:120]
    return first.parent / f"report-{names}"


def write_report(run_dirs: Iterable, out_dir=None) -> ReportPaths:
    """Read ``run_dirs`` and write ``report.md``, ``figures/*.png`` and ``index.html`` into
    ``out_dir`` (see :func:`default_out_dir`). UsageError for bad input (see
    :func:`load_run`) and when no run has anything to report."""
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise UsageError("give at least one run directory")
    runs = [load_run(p) for p in run_dirs]
    if all(not r.rows and r.contrast is None for r in runs):
        raise UsageError("nothing to report: " + "; ".join(
            f"{r.path} has no results rows and no contrast" for r in runs))
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for stale in fig_dir.glob("*.png"):
        stale.unlink()
    blocks = build_blocks(runs, fig_dir)
    md = out / "report.md"
    md.write_text(render_markdown(blocks, out))
    page = out / "index.html"
    page.write_text(render_html(blocks, "tritonlab report: " + ", ".join(r.label for r in runs)))
    figures = sorted(fig_dir.glob("*.png"))
    return ReportPaths(out, md, page, figures, [w for r in runs for w in r.warnings])
