"""``tritonlab sweep``: check, then time, every point into a run directory."""

from __future__ import annotations

import contextlib
import sys

import click

from tritonlab import backend
from tritonlab.commands import (
    DTYPE_CHOICES,
    SEED,
    BoundedInt,
    FiniteFloat,
    interruptible,
    json_option,
)
from tritonlab.errors import UsageError
from tritonlab.output import emit_json, info, output_dir
from tritonlab.runs import cluster
from tritonlab.runs import sweep as sweep_mod
from tritonlab.runs.store import command_argv, new_run_dir


def _bar_progress(bar):
    """The sweep's progress callback drawn on ``bar``: the label names the point and its
    status (off a terminal Click prints each new label as a line, which keeps logs useful)."""

    def show(done: int, total: int, label: str, status: str) -> None:
        bar.label = f"[{done}/{total}] {label}: {status}"
        bar.update(done - bar.pos)
        bar.render_progress()

    return show


@click.command("sweep")
@click.argument("ops", nargs=-1)
@click.option("--preset", help="Shape preset (default: tiny on the interpreter, quick on a GPU).")
@click.option("--shape", "shapes", multiple=True, help="Shape in the op's dim order, e.g. "
              "97x83x131 (repeatable; instead of --preset).")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(DTYPE_CHOICES),
              help="dtype(s) (repeatable; default: every dtype the backend computes correctly).")
@click.option("--mode", "modes", multiple=True, help="Only these modes (repeatable).")
@click.option("--impl", "impls", multiple=True, help="Only these implementations (repeatable; "
              "speedups need a baseline among them).")
@click.option("--out", type=click.Path(),
              help="Run directory to write (default: a new runs/<date-time>).")
@click.option("--resume", is_flag=True, help="Continue the run in --out; points already "
              "there are skipped.")
@click.option("--cache", type=click.Choice(("cold", "warm")), default=None,
              help="cold: flush the L2 (CPU: the LLC) before each call (default on CUDA); "
                   "warm: do not (default on the interpreter).")
@click.option("--graph", is_flag=True, help="Time CUDA-graph replays (launch-bound kernels; "
              "cuda backend only).")
@click.option("--budget", type=FiniteFloat(0, 3600, min_open=True, unit="s"), default=None,
              help="Seconds per implementation and point before repetitions stop short of a "
                   "1% CI (default: 1 on CUDA, 0.2 on the interpreter).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the inputs.")
@click.option("--ray", "ray_address", is_flag=False, flag_value=cluster.LOCAL,
              default=None, metavar="[ADDRESS]",
              help="Measure on a Ray cluster: auto (the cluster this "
              "machine joined), HOST:PORT or ray://HOST:PORT; no address: a local cluster on "
              "127.0.0.1, stopped at the end. One worker per GPU (per CPU under the "
              "interpreter); needs the extra: pip install 'tritonlab[ray]' (docs/cluster.md).")
@click.option("--workers", type=BoundedInt(1, 10**6), default=None,
              help="With --ray: at most this many workers.")
@json_option
@interruptible
def sweep_cmd(ops, preset, shapes, dtypes, modes, impls, out, resume, cache, graph, budget,
              seed, ray_address, workers, as_json):
    """Check, then time, every point (op, impl, mode, dtype, shape) into a run directory.

    Exit 1 if any point failed (mismatch, compile error, OOM), 130 on Ctrl-C (what was
    measured is kept; continue with --resume, with or without --ray).
    """
    if resume and not out:
        raise UsageError("--resume needs --out DIR (the run to continue)")
    if workers and ray_address is None:
        raise UsageError("--workers needs --ray (a local sweep measures in this process)")
    on_ray = ray_address is not None
    address = None if ray_address == cluster.LOCAL else ray_address
    if on_ray:
        cluster.check_address(address)
        cluster.import_ray()

    def plan(backend_name=None):
        return sweep_mod.plan_from_args(ops, preset, shapes, dtypes, modes, impls, backend_name)

    points, notes, selection = plan()  # bad input is refused before a cluster starts
    be = backend.current()
    out_dir = output_dir(out or new_run_dir("runs"), "--out", "the run directory")
    options = sweep_mod.SweepOptions(cache=cache, graph=graph, budget_s=budget, seed=seed)
    with cluster.session(address) if on_ray else contextlib.nullcontext() as ray_cluster:
        label = be.label
        if ray_cluster is not None:
            measured_on = ray_cluster.backend_name()
            if measured_on != be.name:
                points, notes, selection = plan(measured_on)
            label = (f"{backend.Backend(measured_on, '', '').label} on the Ray cluster at "
                     f"{ray_cluster.address}")
        for note in notes:
            info(f"note: {note}")
        info(f"backend: {label}; {len(points)} points -> {out_dir}")
        with click.progressbar(length=len(points), label="sweep", file=sys.stderr,
                               hidden=as_json, width=24) as bar:
            progress = None if as_json else _bar_progress(bar)
            if ray_cluster is not None:
                result = cluster.sweep(points, out_dir, ray_cluster, resume=resume,
                                       options=options, argv=command_argv(),
                                       selection=selection, progress=progress, notes=notes,
                                       workers=workers)
            else:
                result = sweep_mod.sweep(points, out_dir, resume=resume, options=options,
                                         argv=command_argv(), selection=selection,
                                         progress=progress, notes=notes)
    summary = sweep_mod.summary_table(result.rows)
    tail = (f"{len(result.rows)} rows in {result.run_dir} ({result.new_rows} new, "
            f"{result.points_done_before} points already there), {len(result.failed)} failed")
    if as_json:
        info(summary)
        info(tail)
        emit_json({"run_dir": str(result.run_dir), "backend": result.manifest["backend"],
                   "device": result.manifest["device"]["name"],
                   "status": result.manifest["status"], "points": result.points_total,
                   "points_already_done": result.points_done_before,
                   "new_rows": result.new_rows, "failed": len(result.failed),
                   "notes": result.notes, "rows": result.rows})
    else:
        click.echo(f"backend: {label}")
        click.echo(summary)
        click.echo(tail)
    if result.interrupted:
        info(f"interrupted: finished points are kept; continue with --resume --out "
             f"{result.run_dir}")
        sys.exit(130)
    if result.failed:
        sys.exit(1)
