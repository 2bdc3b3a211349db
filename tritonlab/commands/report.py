"""``tritonlab report``: report.md and a self-contained index.html from run directories."""

from __future__ import annotations

import click

from tritonlab.output import info, output_dir
from tritonlab.report import render


@click.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", "out_dir", type=click.Path(), default=None,
              help="Directory for report.md, figures/ and index.html (default: RUN/report for "
                   "one run, report-A-vs-B beside the first for several).")
def report_cmd(runs, out_dir):
    """Write report.md and a self-contained index.html from one or more run directories."""
    out = output_dir(render.default_out_dir(runs) if out_dir is None else out_dir, "-o",
                     "the report directory")
    paths = render.write_report(runs, out)
    for warning in paths.warnings:
        info(f"warning: {warning}")
    click.echo(f"report: {paths.html}")
    click.echo(f"        {paths.markdown} ({len(paths.figures)} figures)")
