"""The order of a report: the summary, the contents, then each section of :data:`SECTIONS`.

A section is a :class:`Section`: an anchor (its HTML id, stable across reports so a link to
``index.html#contrast`` keeps working), a title (its heading, the contents line and the
summary's link) and a builder that takes the :class:`Context` and returns the section's
body, without its heading; a section whose builder returns nothing is left out, and so are
its links. Adding a section is adding one entry (docs/reports.md, "Adding a section").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tritonlab.hw.devices import Peaks
from tritonlab.report import sections
from tritonlab.report.contrast_section import contrast
from tritonlab.report.document import Block, Heading, Links, Table, walk
from tritonlab.report.predict_section import predictions
from tritonlab.report.summary import summary
from tritonlab.runs.store import Run


@dataclass
class Context:
    """What a section builder may read: the runs, their ceilings (in the order of ``runs``)
    and the directory its figures go to."""

    runs: list[Run]
    peaks: list[Peaks | None]
    fig_dir: Path


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    build: Callable[[Context], list[Block]]


def _warnings(ctx: Context) -> list[Block]:
    warnings = [w for r in ctx.runs for w in r.warnings]
    return [Table(["warning"], [[w] for w in warnings])] if warnings else []


SECTIONS: list[Section] = [
    Section("warnings", "Warnings", _warnings),
    Section("contrast", "Training vs inference", lambda c: contrast(c.runs, c.fig_dir)),
    Section("prediction", "Predicted on GPUs", lambda c: predictions(c.runs, c.fig_dir)),
    Section("results", "Results per op", lambda c: sections.op_tables(c.runs, c.fig_dir)),
    Section("roofline", "Roofline",
            lambda c: sections.rooflines(c.runs, c.peaks, c.fig_dir)),
    Section("comparison", "Runs side by side", lambda c: sections.comparison(c.runs)),
    Section("correctness", "Correctness", lambda c: sections.correctness(c.runs)),
    Section("static", "Static compile facts", lambda c: sections.static_facts(c.runs)),
    Section("ceilings", "Ceilings", lambda c: sections.ceilings(c.runs, c.peaks)),
    Section("environment", "Environment", lambda c: sections.environment(c.runs)),
]


def build_blocks(runs: list[Run], peaks: list[Peaks | None], fig_dir: Path,
                 section_list: list[Section] | None = None) -> list[Block]:
    """The whole document: summary, contents, then the sections that have something to
    show, each under an anchored heading."""
    ctx = Context(runs, peaks, fig_dir)
    built: list[tuple[Heading, list[Block]]] = []
    for section in SECTIONS if section_list is None else section_list:
        body = section.build(ctx)
        if body:
            built.append((Heading(2, section.title, anchor=section.anchor), body))
    contents_head = Heading(2, "Contents", anchor="contents")
    contents: list[Block] = [contents_head]
    for head, body in built:
        subs = [b for b in walk(body) if isinstance(b, Heading) and b.anchor]
        contents.append(Links([(head.text, head)] + [(b.text, b) for b in subs]))
    links = Links([(h.text, h) for h, _ in built] + [("Contents", contents_head)],
                  label="Sections:")
    blocks = summary(runs, [links]) + contents
    for head, body in built:
        blocks += [head, *body]
    return blocks
