"""``tritonlab demo``: the lab's main job (what ``make demo`` runs)."""

from __future__ import annotations

import sys

import click

from tritonlab.commands import interruptible
from tritonlab.jobs import demo
from tritonlab.output import info, output_dir


@click.command("demo")
@click.option("--out", "out_dir", default="reports/demo", show_default=True,
              type=click.Path(),
              help="Where the demo writes its runs and its report.")
@interruptible
def demo_cmd(out_dir):
    """The lab's main job: check every op, a quick sweep (tiny on the interpreter), a short
    training-vs-inference contrast, and the report. Exit 1 if a check fails."""
    result = demo.run_demo(output_dir(out_dir, "--out", "the demo directory"), progress=info)
    click.echo(f"report: {result.html}")
    click.echo(f"        {result.markdown}")
    if not result.passed:
        sys.exit(1)
