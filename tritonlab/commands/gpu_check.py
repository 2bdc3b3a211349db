"""``tritonlab gpu-check``: everything that needs a GPU, in one command under 8 minutes (what
``make gpu-check`` runs). The steps and their budgets live in :mod:`tritonlab.jobs.gpucheck`."""

from __future__ import annotations

import sys

import click

from tritonlab.commands import DAY_S, FiniteFloat, interruptible
from tritonlab.jobs import gpucheck
from tritonlab.output import output_dir


@click.command("gpu-check")
@click.option("--out", type=click.Path(), default=None,
              help="Directory for the steps' outputs and summary.md (default: "
                   "reports/gpu-<date-time> in the repository).")
@click.option("--repo", type=click.Path(file_okay=False, exists=True), default=None,
              help="The repository whose tests/ the pytest steps run (default: the current "
                   "directory or a parent, else the one the package was imported from).")
@click.option("--only", multiple=True, metavar="STEP", help="Run only this step (repeatable).")
@click.option("--list", "list_steps", is_flag=True, help="List the steps and exit.")
@click.option("--total-budget", type=FiniteFloat(0, DAY_S, min_open=True, unit="s"),
              default=gpucheck.TOTAL_BUDGET_S, show_default=True,
              help="Seconds for the whole check.")
@interruptible
def gpu_check_cmd(out, repo, only, list_steps, total_budget):
    """GPU tests, the CPU lane's GEMM tests compiled for the GPU, a quick sweep, a contrast
    and their report, each step within its time budget. Exit 1 if a step fails."""
    steps = gpucheck.select_steps(only)
    if list_steps:
        for s in steps:
            click.echo(f"{s.name:16s} {s.budget_s:5.0f} s  {s.description}")
        return
    repo_dir = gpucheck.find_repo(repo)
    out_dir = output_dir(out or gpucheck.default_out(repo_dir), "--out",
                         "the directory of the check")
    summary = gpucheck.run_steps(steps, out_dir, total_budget_s=total_budget, repo=repo_dir,
                                 echo=lambda m: click.echo(m, err=True))
    click.echo(f"gpu-check {'passed' if summary['passed'] else 'FAILED'}: "
               f"{out_dir / 'summary.md'}")
    if not summary["passed"]:
        sys.exit(1)
