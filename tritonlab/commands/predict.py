"""``tritonlab predict``: the decoder layer's training, prefill and decode predicted on GPUs of
the device table (an analytic roofline model, always labelled as a prediction), or compared
with a run's measurements (``--against``)."""

from __future__ import annotations

import click

from tritonlab import backend
from tritonlab.commands import BoundedInt, grid_option, json_option
from tritonlab.errors import UsageError
from tritonlab.hw import devices
from tritonlab.output import emit_json, info
from tritonlab.predict import against as against_mod
from tritonlab.predict import run as predict_run
from tritonlab.predict.calibrate import calibrate
from tritonlab.predict.layer import REGIMES, SIZES
from tritonlab.predict.points import make_grid
from tritonlab.predict.targets import DTYPES


@click.command("predict")
@click.option("--gpu", "gpus", multiple=True,
              help="GPU of the device table (repeatable; 'all' for every one; default: the "
                   "present GPU, else H100 SXM5, A100 SXM4 80GB, L4 and H200 SXM).")
@click.option("--model", "model_size", default="llama3-8b", show_default=True,
              help=f"Decoder layer size: {', '.join(SIZES)}.")
@click.option("--layers", "n_layers", type=BoundedInt(1, 1024, unit="layers", label="--layers"),
              default=None, help="Decoder layers (default: the model's, 32 for llama3-8b).")
@click.option("--regime", "regimes", multiple=True,
              help=f"Regimes (repeatable; default all: {', '.join(REGIMES)}).")
@grid_option("--train-batch", "train_batches", "sequences", "Training sequences per step "
              "(default 1)")
@grid_option("--train-seq", "train_seqs", "tokens", "Tokens per training sequence (default "
              "2048)")
@grid_option("--prefill-batch", "prefill_batches", "prompts", "Prompts per prefill (default 1)")
@grid_option("--prompt", "prompts", "tokens", "Tokens per prompt (default 2048)")
@grid_option("--decode-batch", "decode_batches", "sequences", "Sequences per decode step "
              "(default 1 and 64)")
@grid_option("--context", "contexts", "tokens", "Cached tokens of the longest decode sequence "
              "(default 4096)")
@click.option("--max-seq", type=BoundedInt(1, 2**24, unit="tokens", label="--max-seq"),
              default=None, help="KV cache capacity per sequence (default: the longest prompt "
                                 "or context + 1).")
@click.option("--dtype", default="bfloat16", show_default=True,
              help=f"Weights, activations and KV cache: {', '.join(DTYPES)}.")
@click.option("--ceilings", type=click.Choice(("auto", "spec", "measured")), default="auto",
              show_default=True, help="auto: measured ceilings where `tritonlab device "
              "--measure` cached some for that GPU model, else the datasheet's.")
@click.option("--calibrate", "calibrate_run", type=click.Path(),
              help="Fit the efficiencies (and, from a GPU contrast's power readings, the "
                   "power model) to this run first.")
@click.option("--against", "against_run", type=click.Path(),
              help="Predict every point of this sweep or contrast run on its own device, "
                   "next to what was measured; writes RUN/prediction.json.")
@json_option
def predict_cmd(gpus, model_size, n_layers, regimes, train_batches, train_seqs,
                prefill_batches, prompts, decode_batches, contexts, max_seq, dtype, ceilings,
                calibrate_run, against_run, as_json):
    """Predict training, prefill and decode of the decoder layer on GPUs you may not have:
    per regime and grid point the time, bound, tokens/s, % of peaks, memory footprint
    against capacity, power and energy per token, and which regime demands most of each
    resource. A prediction, always labelled as one, with the assumptions it used.

    With --against RUN: the model against a run's measurements, the ratio per point and the
    error per op and per regime.
    """
    calibration = calibrate(calibrate_run) if calibrate_run else None
    if calibration is not None:
        info(f"calibrated on {calibration.run} ({calibration.device}): " + "; ".join(
            f"{r} compute {e.compute:.3g}, bandwidth {e.bandwidth:.3g}"
            for r, e in calibration.efficiency.items())
            + ("" if calibration.power else f"; power not fitted: {calibration.power_reason}"))
        for note in calibration.notes:
            info(f"note: {note}")
    if against_run:
        grid_given = [flag for flag, v in (
            ("--gpu", gpus), ("--layers", n_layers), ("--regime", regimes),
            ("--train-batch", train_batches), ("--train-seq", train_seqs),
            ("--prefill-batch", prefill_batches), ("--prompt", prompts),
            ("--decode-batch", decode_batches), ("--context", contexts),
            ("--max-seq", max_seq)) if v]
        if grid_given:
            raise UsageError(f"{', '.join(grid_given)}: --against predicts the run's own points "
                             f"on its own device; drop them (--calibrate may be given)")
        doc = against_mod.against(against_run, calibration)
        try:
            info(f"written to {against_mod.save(against_run, against=doc)}")
        except OSError as exc:  # a read-only run still gets its comparison printed
            info(f"warning: prediction.json not written in {against_run}: "
                 f"{exc.strerror or exc}")
        if as_json:
            emit_json(doc)
        else:
            click.echo("\n".join(predict_run.against_lines(doc)))
        return
    grid = make_grid(model_size=model_size, n_layers=n_layers, dtype=dtype, regimes=regimes,
                     batches={"train": train_batches, "prefill": prefill_batches,
                              "decode": decode_batches},
                     seconds={"train": train_seqs, "prefill": prompts, "decode": contexts},
                     max_seq=max_seq)
    be = backend.current()
    present = devices.describe(be)["name"] if be.is_gpu else None
    targets = predict_run.targets_for(gpus, ceilings=ceilings, calibration=calibration,
                                      present=present)
    if "all" in gpus:  # the whole table: leave out the GPUs without this dtype, and say so
        targets, left_out = predict_run.having_dtype(targets, grid.dtype)
        if left_out:
            info(f"left out (no {grid.dtype} peak): {', '.join(left_out)}")
    doc = predict_run.predict(targets, grid, calibration)
    if as_json:
        emit_json(doc)
    else:
        click.echo("\n".join(predict_run.text_lines(doc)))
