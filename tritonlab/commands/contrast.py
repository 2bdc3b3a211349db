"""``tritonlab contrast``: the decoder layer in three regimes, train, prefill and decode
(``--model layer``, the default), or the feed-forward block trained and served
(``--model ffn``)."""

from __future__ import annotations

import sys

import click

from tritonlab import contrast
from tritonlab.commands import DAY_S, SEED, BoundedInt, FiniteFloat, grid_option, interruptible, json_option
from tritonlab.errors import UsageError
from tritonlab.output import emit_json, info, output_dir
from tritonlab.runs.store import command_argv, new_run_dir

# The options of --model layer, by run_contrast's grid key.
LAYER_FLAGS = {"n_layers": "--layers", "train_batches": "--train-batch",
               "train_seqs": "--train-seq", "prefill_batches": "--prefill-batch",
               "prompts": "--prompt", "decode_batches": "--decode-batch",
               "contexts": "--context", "max_seq": "--max-seq"}


def _grid_option(flag: str, dest: str, unit: str, text: str):
    """A grid option of ``--model layer``, so named in its help."""
    return grid_option(flag, dest, unit, f"--model layer: {text}")


@click.command("contrast")
@click.option("--model", type=click.Choice(("layer", "ffn")), default="layer", show_default=True,
              help="layer: the decoder layer in three regimes (train, prefill, decode) on "
                   "the same weights; ffn: the feed-forward block, training vs inference.")
@click.option("--layers", "n_layers", type=BoundedInt(1, 1024, unit="layers", label="--layers"),
              default=None, help="--model layer: decoder layers (default 1).")
@_grid_option("--train-batch", "train_batches", "sequences",
              "training sequences per step (default 1)")
@_grid_option("--train-seq", "train_seqs", "tokens", "tokens per training sequence (default: "
              "2048 on a GPU, 16 on the interpreter)")
@_grid_option("--prefill-batch", "prefill_batches", "prompts", "prompts per prefill step "
              "(default 1)")
@_grid_option("--prompt", "prompts", "tokens", "tokens per prompt (default: 2048 on a GPU, 16 "
              "on the interpreter)")
@_grid_option("--decode-batch", "decode_batches", "sequences", "sequences per decode step "
              "(default: 1 and 64 on a GPU, 1 and 4 on the interpreter)")
@_grid_option("--context", "contexts", "tokens", "cached tokens of the longest decode sequence "
              "(default: 4096 on a GPU, 32 on the interpreter)")
@click.option("--max-seq", type=BoundedInt(1, 2**24, unit="tokens", label="--max-seq"),
              default=None, help="--model layer: the KV caches' capacity per sequence (default: "
                                 "the longest prompt or context + 1).")
@click.option("--batch", "batches", multiple=True,
              type=BoundedInt(1, 2**20, unit="tokens per step", label="batch sizes"),
              help="Tokens per step (repeatable; default: 1 16 256 4096 on a GPU, 1 64 on "
                   "the interpreter).")
@click.option("--duration", type=FiniteFloat(0, DAY_S, min_open=True, unit="s"), default=None,
              help="Seconds of each measured phase, after its warm-up (default: 10 on a GPU, "
                   "2 on the interpreter; at least 1, for the energy counter).")
@click.option("--model-size", default=None,
              help="Model size: --model ffn: tritonlab.workloads.model's (tiny, small, base, "
                   "large; default: base on a GPU, tiny on the interpreter); --model layer: "
                   "tiny, small, llama3-8b (default: llama3-8b on a GPU, tiny on the "
                   "interpreter).")
@click.option("--impl", "impls", multiple=True, help="triton and/or torch (repeatable; "
              "default: both).")
@click.option("--mode", "modes", multiple=True, help="--model ffn: train and/or infer; "
              "--model layer: train, prefill and/or decode (repeatable; default: all).")
@click.option("--dtype", type=click.Choice(contrast.DTYPE_CHOICES), default=None,
              help="Default: bfloat16 on a GPU, float32 on the interpreter. fp8: the "
                   "inference phases (prefill, decode; infer) in fp8 (e4m3, needs sm_89+ on a "
                   "GPU), training in the default.")
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
def contrast_cmd(model, n_layers, train_batches, train_seqs, prefill_batches, prompts,
                 decode_batches, contexts, max_seq, batches, duration, model_size, impls, modes,
                 dtype, warmup, idle, cooldown, interval_ms, counters, seed, out, resume,
                 as_json):
    """Training vs inference on the same model: which pushes the device harder, and how.

    --model layer runs the decoder layer as training, prefill and decode over a grid, and
    says which regime demands most compute, bandwidth, memory, power and energy per token.

    Writes manifest.json, counters.csv, contrast.json, timeline.png and trace.json (open it in
    ui.perfetto.dev). Exit 1 if a phase failed (its error is recorded and the run goes on),
    130 on Ctrl-C (finished phases are kept in contrast.json; continue with --resume).
    """
    if resume and not out:
        raise UsageError("--resume needs --out DIR (the run to continue)")
    given = {"n_layers": n_layers, "train_batches": train_batches, "train_seqs": train_seqs,
             "prefill_batches": prefill_batches, "prompts": prompts,
             "decode_batches": decode_batches, "contexts": contexts, "max_seq": max_seq}
    grid = {k: v for k, v in given.items() if v not in (None, ())}
    if model == "ffn" and grid:
        names = [LAYER_FLAGS[k] for k in grid]
        raise UsageError(f"{', '.join(names)}: options of --model layer (the model is ffn; "
                         f"valid models: ffn, layer)")
    out_dir = output_dir(out or new_run_dir("runs"), "--out", "the run directory")
    doc = contrast.run_contrast(out_dir, batches=batches or None, duration_s=duration,
                                model_size=model_size, impls=impls or contrast.IMPLS,
                                modes=modes or None, dtype=dtype, warmup_s=warmup,
                                idle_s=idle, cooldown_s=cooldown, interval_ms=interval_ms,
                                counters=counters, seed=seed, progress=info,
                                argv=command_argv(), resume=resume, model=model,
                                grid=grid or None)
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
