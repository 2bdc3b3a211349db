"""``tritonlab compare``: two runs point by point, exit 1 on a regression."""

from __future__ import annotations

import sys

import click

from tritonlab.commands import FiniteFloat, json_option
from tritonlab.output import emit_json, info
from tritonlab.runs import compare
from tritonlab.runs.store import load_run


@click.command("compare")
@click.argument("base_run", type=click.Path())
@click.argument("new_run", type=click.Path())
@click.option("--threshold", default=0.05, show_default=True, type=FiniteFloat(0, 100),
              help="Relative slowdown that is a regression when also beyond the noise "
                   "(0.05 = 5%).")
@click.option("--force", is_flag=True, help="Compare runs of different backends, devices or "
              "cache/graph settings anyway.")
@json_option
def compare_cmd(base_run, new_run, threshold, force, as_json):
    """Pair the points of two runs: speedup (BASE ms / NEW ms) with its 95% CI per point,
    geometric means per op. Exit 1 when a point is slower beyond both the threshold and its
    noise, or fails in NEW, or when nothing was compared (no point measured in both)."""
    report = compare.compare_runs(load_run(base_run), load_run(new_run),
                                  threshold=threshold, force=force)
    if as_json:
        for warning in report["incompatibilities"] + report["incomplete"]:
            info(f"warning: {warning}")
        if report["reason"]:
            info(f"not passed: {report['reason']}")
        emit_json(report)
    else:
        click.echo("\n".join(compare.report_lines(report)))
    if not report["passed"]:
        sys.exit(1)
