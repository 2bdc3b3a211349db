"""Reports: ``tritonlab report RUN... [-o DIR]`` writes ``report.md`` (figures beside it, in
``figures/``) and a self-contained ``index.html`` (figures embedded as base64 PNG; no script,
font or style is fetched from the network).

A report reads run directories (docs/design.md, "The run directory") through
:func:`tritonlab.runs.store.load_run`: ``manifest.json``, ``results.jsonl``, and, when
present, ``contrast.json``, ``counters.csv`` and ``timeline.png``. It opens on a summary
(the training-vs-inference verdict, each op's Triton kernel against its best baseline, the
contrast's regimes, device, backend and date) and the contents, then the sections of
:data:`tritonlab.report.outline.SECTIONS` in order, environment last. Every figure names its
backend and device, and interpreter runs are marked as not GPU performance.

The order is in :mod:`~tritonlab.report.outline`, the summary in
:mod:`~tritonlab.report.summary`, the sections in :mod:`~tritonlab.report.sections` and
:mod:`~tritonlab.report.contrast_section`; the document they make is rendered twice
(Markdown and HTML) by :mod:`~tritonlab.report.document`, so the two files always say the
same thing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tritonlab.errors import UsageError
from tritonlab.hw import devices
from tritonlab.hw.devices import Peaks
from tritonlab.ops import registry
from tritonlab.ops.contract import DTYPES
from tritonlab.report import outline, roofline, sections
from tritonlab.report.document import render_html, render_markdown
from tritonlab.runs.store import Run, claim_dir, load_run


def run_peaks(run: Run) -> Peaks | None:
    """The ceilings a run is drawn against: the manifest's ``peaks`` when the sweep stored
    them (for one model's view of a cluster run, that model's), else the device table (GPU
    runs) and this machine's cached measurements of that same device (matched by UUID or
    name)."""
    stored = run.manifest.get("peaks")
    if isinstance(stored, dict):
        return Peaks.from_dict(stored)
    info = {"name": run.device, "uuid": run.device_uuid if run.is_gpu else None,
            "kind": "cuda" if run.is_gpu else "cpu", "backend": run.backend}
    return devices.peaks_for(info)


def _unfused_bytes_fn(op_name: str) -> Callable | None:
    """The op's ``unfused_bytes`` from its SPEC (None when the op is unknown here or not
    fused)."""
    try:
        spec = registry.discover().get(op_name)
    except Exception:  # noqa: BLE001 - a report must render even if a kernel fails to import
        return None
    return spec.unfused_bytes if spec is not None and spec.fused else None


def annotate(run: Run, peaks: Peaks | None) -> None:
    """Fill the roofline fields of rows that have none (the sweep knew no ceilings, e.g. the
    CPU before `tritonlab device --measure`, but the report does), and the unfused intensity
    of fused ops (for the linked points of the roofline)."""
    fns: dict[str, Callable | None] = {}
    for row in run.rows:
        if peaks is not None and all(row.get(f) is None for f in roofline.ROW_FIELDS):
            roofline.annotate_row(row, peaks)
        unfused = row.get("unfused_bytes")
        op = str(row.get("op"))
        if "unfused_bytes" not in row and op not in fns:  # rows from before the sweep kept it
            fns[op] = _unfused_bytes_fn(op)
        fn = fns.get(op)
        if unfused is None and fn is not None and row.get("dtype") in DTYPES:
            try:
                unfused = fn(row["shape"], DTYPES[row["dtype"]], row.get("mode"))
            except (KeyError, TypeError, ValueError):
                unfused = None
        if isinstance(unfused, (int, float)) and unfused > 0 and row.get("flops"):
            row["unfused_intensity"] = row["flops"] / unfused


def load_annotated(path) -> tuple[Run, Peaks | None]:
    """A run as the report draws it: read (:func:`tritonlab.runs.store.load_run`, its
    warnings kept on the run for the report's Warnings section), its ceilings found and its
    rows annotated with them. (:func:`write_report` draws a cluster run measured on several
    GPU models as one run per model: :meth:`~tritonlab.runs.store.Run.by_device`.)"""
    run = load_run(path, warn=None)
    peaks = run_peaks(run)
    annotate(run, peaks)
    return run, peaks


@dataclass
class ReportPaths:
    out_dir: Path
    markdown: Path
    html: Path
    figures: list[Path]
    warnings: list[str]


def default_out_dir(run_dirs: list) -> Path:
    """One run: ``RUN/report``; several: ``report-<first>-vs-<others>`` beside the first."""
    first = Path(run_dirs[0])
    if len(run_dirs) == 1:
        return first / "report"
    names = "-vs-".join(sections.slug(Path(p).name) for p in run_dirs)[:120]
    return first.parent / f"report-{names}"


def write_report(run_dirs: Iterable, out_dir=None, *, claim: bool = True) -> ReportPaths:
    """Read ``run_dirs`` and write ``report.md``, ``figures/*.png`` and ``index.html`` into
    ``out_dir`` (see :func:`default_out_dir`). UsageError for bad input (see
    :func:`tritonlab.runs.store.load_run`), when no run has anything to report, and for an
    ``out_dir`` that is neither new, nor empty, nor a previous report's
    (:func:`tritonlab.runs.store.claim_dir`; ``claim=False``: the caller has claimed it, as
    the demo does for its own directory)."""
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise UsageError("give at least one run directory")
    # A run measured on several GPU models (a cluster sweep) is drawn as one run per model:
    # each gets its tables, roofline and ceilings, and the runs-side-by-side table.
    runs = [view for p in run_dirs for view in load_run(p, warn=None).by_device()]
    peaks = [run_peaks(run) for run in runs]
    for run, run_peaks_ in zip(runs, peaks):
        annotate(run, run_peaks_)
    if all(not r.rows and r.contrast is None for r in runs):
        raise UsageError("nothing to report: " + "; ".join(
            f"{r.path} has no results rows and no contrast" for r in runs))
    out = Path(out_dir) if out_dir is not None else default_out_dir(run_dirs)
    with claim_dir(out, "report") if claim else contextlib.nullcontext():
        fig_dir = out / "figures"
        fig_dir.mkdir(parents=True, exist_ok=True)
        for stale in fig_dir.glob("*.png"):
            stale.unlink()
        blocks = outline.build_blocks(runs, peaks, fig_dir)
        md = out / "report.md"
        md.write_text(render_markdown(blocks, out))
        page = out / "index.html"
        page.write_text(render_html(blocks, "tritonlab report: "
                                    + ", ".join(r.label for r in runs)))
    figures = sorted(fig_dir.glob("*.png"))
    return ReportPaths(out, md, page, figures, [w for r in runs for w in r.warnings])
