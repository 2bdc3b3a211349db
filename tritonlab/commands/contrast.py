"""``tritonlab contrast``: training vs inference on the same model."""

from __future__ import annotations

import sys

import click

from tritonlab import contrast
from tritonlab.commands import DAY_S, DTYPE_CHOICES, SEED, BoundedInt, FiniteFloat, interruptible, json_option
from tritonlab.errors import UsageError
from tritonlab.output import emit_json, info, output_dir
from tritonlab.runs.store import command_argv, new_run_dir


@click.command("contrast")
@click.option("--batch", "batches", multiple=True,
              type=BoundedInt(1, 2**20, unit="tokens per step", label="batch sizes"),
              help="Tokens per step (repeatable; default: 1 16 256 4096 on a GPU, 1 64 on "
                   "the interpreter).")
@click.option("--duration", type=FiniteFloat(0, DAY_S, min_open=True, unit="s"), default=None,
              help="Seconds of each measured phase, after its warm-up (default: 10 on a GPU, "
                   "2 on the interpreter; at least 1, for the energy counter).")
@click.option("--model-size", default=None,
              help="Model size of tritonlab.workloads.model (tiny, small, base, large; "
                   "default: base on a GPU, tiny on the interpreter).")
@click.option("--impl", "impls", multiple=True, help="triton and/or torch (repeatable; "
              "default: both).")
@click.option("--mode", "modes", multiple=True, help="train and/or infer (repeatable; "
              "default: both).")
@click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default=None,
              help="Default: bfloat16 on a GPU, float32 on the interpreter.")
@click.option("--warmup", type=FiniteFloat(0, DAY_S, unit="s"), default=None,
              help="Seconds of warm-up before each phase (and at least 2 steps on a GPU, 1 on "
                   "the interpreter; default: 2 on a GPU, 0.2 on the interpreter).")
@click.option("--idle", type=FiniteFloat(0, DAY_S, unit="s"), default=None,
              help="Seconds of idle baseline (0: none; default: 5 on a GPU, 1 on the "
                   "interpreter).")
@click.option("--cooldown", type=FiniteFloat(0, DAY_S, unit="s"), default=None,
              help="Seconds of cool-down after each phase (default: 3 on a GPU, 0.2 on the "
                   "interpreter).")
@click.option("--interval-ms", type=FiniteFloat(1.0, 60000.0, unit="ms"), default=20.0,
              show_default=True, help="Counter sampling interval.")
@click.option("--counters", type=click.Choice(("auto", "nvml", "cpu")), default="auto",
              show_default=True, help="Counter backend (auto: NVML on a GPU, else the CPU).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of weights and data.")
@click.option("--out", type=click.Path(),
              help="Run directory to write (default: a new runs/<date-time>).")
@click.option("--resume", is_flag=True, help="Continue the interrupted run in --out (give "
              "the same options); phases already measured are skipped.")
@json_option
@interruptible
def contrast_cmd(batches, duration, model_size, impls, modes, dtype, warmup, idle, cooldown,
                 interval_ms, counters, seed, out, resume, as_json):
    """Training vs inference on the same model: which pushes the device harder, and how.

    Writes manifest.json, counters.csv, contrast.json, timeline.png and trace.json (open it in
    ui.perfetto.dev). Exit 1 if a phase failed (its error is recorded and the run goes on),
    130 on Ctrl-C (finished phases are kept in contrast.json; continue with --resume).
    """
    if resume and not out:
        raise UsageError("--resume needs --out DIR (the run to continue)")
    out_dir = output_dir(out or new_run_dir("runs"), "--out", "the run directory")
    doc = contrast.run_contrast(out_dir, batches=batches or None, duration_s=duration,
                                model_size=model_size, impls=impls or contrast.IMPLS,
                                modes=modes or contrast.MODES, dtype=dtype, warmup_s=warmup,
                                idle_s=idle, cooldown_s=cooldown, interval_ms=interval_ms,
                                counters=counters, seed=seed, progress=info,
                                argv=command_argv(), resume=resume)
    if doc["status"] == "interrupted":
        if as_json:
            emit_json(doc)
        sys.exit(130)
    text = contrast.summary_text(doc)
    if as_json:
        info(text)
        emit_json(doc)
    else:
        click.echo(text)
        click.echo(f"run directory: {doc['out']}")
    if any(p.get("error") for p in doc["phases"]):
        sys.exit(1)
