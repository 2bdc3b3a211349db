"""The lab's main job (``tritonlab demo``, what ``make demo`` runs), on whatever device is
present:

0. measure the device's ceilings unless they are cached (``tritonlab device --measure``), so
   the roofline has measured ceilings beside the datasheet's (the CPU has only those);
1. check every op, impl and mode against its float64 reference at ``tiny`` shapes (odd
   sizes that hit every edge mask), in every dtype the backend computes correctly, written
   to ``check.json``;
2. a quick sweep into ``OUT/sweep`` (the ``quick`` preset on a GPU, ``tiny`` on the
   interpreter), every point checked before it is timed;
3. a short training-vs-inference contrast of the feed-forward block into ``OUT/contrast``,
   and one of the decoder layer in its three regimes (training step, prefill, decode) into
   ``OUT/contrast-layer``; then the predicted section: Llama-3-8B's layers on an H100 SXM5
   and three other GPUs by the analytic model of :mod:`tritonlab.predict` (labelled as a
   prediction), and the model against the sweep and the layer contrast, written as each
   run's ``prediction.json``;
4. the report of the three runs: ``OUT/index.html`` and ``OUT/report.md``.

Without a GPU it finishes in about 5 minutes on 2 cores (315 s measured): the check takes 2 tiny
shapes per op (the smallest and the largest by FLOPs) and so does the sweep, in float16 with
a short time budget per point, the FFN contrast the tiny model at two batch sizes and the
layer contrast the tiny layer at its interpreter grid, with 1 s phases.
The interpreter's times show that everything runs and is correct; they are not GPU
performance, and the report says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tritonlab import backend as backend_mod
from tritonlab import contrast as contrast_mod
from tritonlab.errors import UsageError
from tritonlab.hw import devices
from tritonlab.measure import check
from tritonlab.ops import registry
from tritonlab.ops.contract import dtype_name
from tritonlab.output import dumps
from tritonlab.predict import against as predict_against
from tritonlab.predict import points as predict_points
from tritonlab.predict import run as predict_run
from tritonlab.report import render as report
from tritonlab.runs import store, sweep
from tritonlab.runs.records import shape_str
from tritonlab.runs.store import RunDir, command_argv

# What one demo does per backend. ``check_shapes`` / ``sweep_shapes``: at most this many
# shapes of the preset per op, spread over its FLOPs range (None: all); ``sweep_dtypes``: the
# dtypes swept where the op supports them on the backend (else its first one).
SETTINGS = {
    "cuda": dict(check_shapes=None, sweep_preset="quick", sweep_shapes=None,
                 sweep_dtypes=("bfloat16",), sweep_budget_s=0.25,
                 contrast=dict(model="ffn", batches=(1, 16, 256, 4096), duration_s=3.0, model_size="base",
                               warmup_s=1.0, idle_s=2.0, cooldown_s=1.0),
                 layer_contrast=dict(model="layer", duration_s=3.0, warmup_s=1.0, idle_s=2.0,
                                     cooldown_s=1.0)),
    "interpreter": dict(check_shapes=2, sweep_preset="tiny", sweep_shapes=2,
                        sweep_dtypes=("float16",), sweep_budget_s=0.05,
                        contrast=dict(model="ffn", batches=(1, 64), duration_s=1.0, model_size="tiny",
                                      warmup_s=0.1, idle_s=1.0, cooldown_s=0.1),
                        layer_contrast=dict(model="layer", model_size="tiny", duration_s=1.0,
                                            warmup_s=0.1, idle_s=1.0, cooldown_s=0.1)),
}
# What a demo writes in OUT: three run directories and the report of them.
RUNS = ("sweep", "contrast", "contrast-layer")
FILES = ("index.html", "report.md", "check.json")
FIGURES = "figures"


@dataclass
class DemoResult:
    out_dir: Path
    html: Path
    markdown: Path
    sweep_dir: Path
    contrast_dir: Path
    layer_contrast_dir: Path
    check_failures: list[str] = field(default_factory=list)
    sweep_failures: list[str] = field(default_factory=list)
    contrast_failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not (self.check_failures or self.sweep_failures or self.contrast_failures)


def _clear(out: Path, previous: dict | None) -> None:
    """Remove what the previous demo in ``out`` wrote (``previous``: its marker, None when
    ``out`` was new or empty), proving it first: a run directory goes only when its
    manifest says it was written for that demo, the figures folder only when it holds
    nothing but figures. Anything else in the way is refused (UsageError), and files the
    demo does not write are left alone."""
    for name in RUNS:
        store.remove_previous(out / name, previous)
    figures = out / FIGURES
    if figures.exists():
        if not figures.is_dir() or any(p.suffix != ".png" or not p.is_file()
                                       for p in figures.iterdir()):
            raise UsageError(f"{figures} holds files other than figures; choose another "
                             f"--out or move it away")
        shutil.rmtree(figures)
    for name in FILES:
        path = out / name
        if path.is_dir():
            raise UsageError(f"{path} is a directory the demo did not write; choose another "
                             f"--out or move it away")
        path.unlink(missing_ok=True)


def spread(op, shapes: Sequence[dict], n: int | None) -> list[dict]:
    """At most ``n`` of ``shapes`` (all when n is None), spread over their FLOPs range: the
    smallest and the largest first, then the ones between (the roofline then shows points at
    both ends of the intensity range)."""
    ordered = sorted((dict(s) for s in shapes), key=lambda s: op.flops(s, op.modes[0]))
    if n is None or len(ordered) <= n:
        return ordered
    if n == 1:
        return ordered[-1:]
    picks = sorted({round(i * (len(ordered) - 1) / (n - 1)) for i in range(n)})
    return [ordered[i] for i in picks]


@contextlib.contextmanager
def _first_config_only(enabled: bool):
    """On a GPU the check uses each kernel's first launch config (correctness needs no
    tuning, and autotuning every tiny shape would compile every config); the sweep tunes."""
    if not enabled:
        yield
        return
    before = os.environ.get("TRITONLAB_AUTOTUNE")
    os.environ["TRITONLAB_AUTOTUNE"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TRITONLAB_AUTOTUNE"]
        else:
            os.environ["TRITONLAB_AUTOTUNE"] = before


def _check(ops, n_shapes: int | None, say) -> tuple[list[dict], list[str]]:

    be = backend_mod.current()
    cases, failures = [], []
    for op in ops:
        dtypes = op.dtypes if be.is_gpu else op.dtypes_interpreter
        shapes = {op.name: spread(op, op.presets.get("tiny", check.default_shapes(op)),
                                  n_shapes)}
        with _first_config_only(be.is_gpu):
            results = list(check.iter_cases([op], dtypes, shapes, seeds=1))
        for r in results:
            cases.append(r.to_dict())
            if r.correct is False:
                failures.append(f"check {r.op} {r.impl} {r.mode} {r.dtype} "
                                f"{'x'.join(map(str, r.shape.values()))}: {r.error}")
        done = [c for c in cases if c["op"] == op.name]
        say(f"  check {op.name}: {sum(c['correct'] is True for c in done)} ok, "
            f"{sum(c['correct'] is False for c in done)} failed, "
            f"{sum(c['correct'] is None for c in done)} skipped")
    return cases, failures


def _sweep(ops, out: Path, settings: dict, argv: Sequence[str], say, mark: dict) -> list[str]:

    be = backend_mod.current()
    preset = settings["sweep_preset"]
    shapes = {op.name: spread(op, registry.parse_preset(preset, op), settings["sweep_shapes"])
              for op in ops if preset in op.presets}
    chosen = [op for op in ops if op.name in shapes]
    dtypes = {}
    for op in chosen:
        allowed = op.dtypes if be.is_gpu else op.dtypes_interpreter
        wanted = [registry.parse_dtype(d) for d in settings["sweep_dtypes"]]
        dtypes[op.name] = [d for d in wanted if d in allowed] or list(allowed[:1])
    points, notes = sweep.plan(chosen, shapes, dtypes, backend_name=be.name)
    if notes:
        say(f"  {len(notes)} combinations left out (listed in the sweep's manifest under "
            f"options.left_out), e.g. {notes[0]}")
    selection = {"ops": [op.name for op in chosen], "preset": preset,
                 "shapes": {n: [shape_str(s) for s in v] for n, v in shapes.items()},
                 "dtypes": {n: [dtype_name(d) for d in v] for n, v in dtypes.items()},
                 "modes": [], "impls": [], "points": len(points), "demo": True,
                 "left_out": notes}
    options = sweep.SweepOptions(budget_s=settings["sweep_budget_s"])

    def progress(i, n, label, status):
        if status != "measuring":
            say(f"  [{i}/{n}] {label}: {status}")

    result = sweep.sweep(points, out, resume=False, options=options, argv=argv,
                         selection=selection, progress=progress, notes=notes, part_of=mark)
    if result.interrupted:  # the sweep kept its points; the demo stops here
        raise KeyboardInterrupt
    peaks = devices.current_peaks(be)
    if peaks is not None:  # the ceilings the rows were annotated with, for the report
        RunDir(out).update_manifest(peaks=peaks.to_dict())
    return [f"sweep {r['op']} {r['impl']} {r['mode']} {r['dtype']} {shape_str(r['shape'])}: "
            f"{r['error']}" for r in result.failed]


def _predict(result: DemoResult, say) -> None:
    """The predicted section: Llama-3-8B's 32 layers in bf16 on the default GPUs (H100 SXM5
    first) at the contrast's GPU grid, written with the layer contrast as its
    ``prediction.json``, and the model against the sweep and the layer contrast (on this
    device: under the interpreter a mechanics check, which the report says)."""
    doc = predict_run.predict(predict_run.targets_for(()), predict_points.make_grid())
    predict_against.save(result.layer_contrast_dir, gpus=doc,
                         against=predict_against.against(result.layer_contrast_dir))
    predict_against.save(result.sweep_dir, against=predict_against.against(result.sweep_dir))
    h100 = doc["verdicts"][0]
    say(f"  {h100['explanation'][1]} ({h100['gpu']}, predicted)")


def run_demo(out_dir="reports/demo", *, ops: Sequence[str] = (),
             progress: Callable[[str], None] | None = None,
             settings: dict | None = None, argv: Sequence[str] | None = None) -> DemoResult:
    """Run the demo into ``out_dir`` (see the module docstring) and return where its report
    is. ``ops`` limits it to some ops (default: all); ``settings`` overrides entries of
    :data:`SETTINGS` for the present backend (the tests shorten the contrast with it).
    Raises UsageError for an unknown op, and for an ``out_dir`` that is neither new, nor
    empty, nor a previous demo's output (:func:`tritonlab.runs.store.claim_dir`: the demo
    replaces only what it can prove it wrote), or that another process is writing."""

    say = progress or (lambda _msg: None)
    be = backend_mod.current()
    conf = {**SETTINGS["cuda" if be.is_gpu else "interpreter"], **(settings or {})}
    specs = registry.resolve_ops(ops)
    out = Path(out_dir)
    with store.claim_dir(out, "demo", clear=lambda previous: _clear(out, previous)) as claim:
        return _run(out, claim.mark, specs, conf, argv, say)


def _run(out: Path, mark: dict, specs, conf: dict, argv: Sequence[str] | None,
         say: Callable[[str], None]) -> DemoResult:
    be = backend_mod.current()
    argv = list(argv) if argv is not None else command_argv()
    result = DemoResult(out_dir=out, html=out / "index.html", markdown=out / "report.md",
                        sweep_dir=out / "sweep", contrast_dir=out / "contrast",
                        layer_contrast_dir=out / "contrast-layer")
    say(f"demo on {be.label}, writing {out}")

    start = time.perf_counter()
    info = devices.describe(be)
    cached = devices.cached_ceilings(info)
    if cached is None:
        say(f"0/4 measure the ceilings of {info['name']} (once; cached for later runs)")
        path = devices.store_ceilings(info, devices.measure_ceilings(be))
        say(f"  cached in {path}")
    else:
        say(f"0/4 ceilings of {info['name']}: {cached.source}")
    result.seconds["ceilings"] = time.perf_counter() - start

    start = time.perf_counter()
    say(f"1/4 check {len(specs)} ops against float64 references")
    cases, result.check_failures = _check(specs, conf["check_shapes"], say)
    (out / "check.json").write_text(dumps({"backend": be.name, "passed": not
                                           result.check_failures, "cases": cases}) + "\n")
    result.seconds["check"] = time.perf_counter() - start

    start = time.perf_counter()
    say(f"2/4 {conf['sweep_preset']} sweep into {result.sweep_dir}")
    result.sweep_failures = _sweep(specs, result.sweep_dir, conf, argv, say, mark)
    result.seconds["sweep"] = time.perf_counter() - start

    start = time.perf_counter()
    say(f"3/4 training-vs-inference contrasts into {result.contrast_dir} (feed-forward "
        f"block) and {result.layer_contrast_dir} (decoder layer: train, prefill, decode)")
    for key, run_dir in (("contrast", result.contrast_dir),
                         ("layer_contrast", result.layer_contrast_dir)):
        doc = contrast_mod.run_contrast(run_dir, **conf[key], argv=argv,
                                        progress=lambda m: say(f"  {m}"), part_of=mark)
        if doc["status"] == "interrupted":
            raise KeyboardInterrupt
        result.contrast_failures += [f"{run_dir.name} {p.get('name')}: {p['error']}"
                                     for p in doc.get("phases", []) if p.get("error")]
    result.seconds["contrast"] = time.perf_counter() - start

    start = time.perf_counter()
    say("then predicted on GPUs (an analytic model, not a measurement): Llama-3-8B's layers "
        "on H100, A100, L4 and H200, and the model against the runs above")
    _predict(result, say)
    result.seconds["predict"] = time.perf_counter() - start

    start = time.perf_counter()
    say("4/4 report")
    paths = report.write_report([result.sweep_dir, result.contrast_dir,
                                 result.layer_contrast_dir], out, claim=False)
    for w in paths.warnings:
        say(f"  warning: {w}")
    result.seconds["report"] = time.perf_counter() - start

    failures = result.check_failures + result.sweep_failures + result.contrast_failures
    for f in failures:
        say(f"FAILED {f}")
    say(f"demo done in {sum(result.seconds.values()):.0f} s ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()) + "); "
        + (f"{len(failures)} failures" if failures else "everything passed"))
    return result
