"""The ``tritonlab`` command line. Thin: it parses, calls :mod:`tritonlab.harness`, prints.

Exit codes: 0 success; 1 a correctness, check or regression failure; 2 bad usage or input.
"""

from __future__ import annotations

import sys

import click

from tritonlab import backend
from tritonlab.errors import UsageError
from tritonlab.output import emit_json, fmt_num, info, table

DTYPE_CHOICES = ("float16", "bfloat16", "float32")


class _Group(click.Group):
    """Turns the harness's UsageError into a one-line message and exit 2 (never a traceback)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group)
@click.option("--backend", "backend_name", type=click.Choice(backend.BACKENDS),
              default=None, envvar=backend.ENV_VAR,
              help="Force a backend (default: cuda when a GPU is visible, else interpreter).")
@click.version_option(package_name="tritonlab")
def cli(backend_name):
    """tritonlab: Triton kernels, their baselines, and the instruments that measure them."""
    backend.select(backend_name)


# ------------------------------------------------------------------------------------- list

@cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def list_cmd(as_json):
    """List ops with their implementations, modes and shape presets."""
    from tritonlab.ops import registry

    ops = registry.discover()
    be = backend.current()
    if as_json:
        emit_json({"backend": be.name, "ops": [op.summary() for op in ops.values()]})
        return
    rows = []
    for op in ops.values():
        rows.append([op.name, " ".join(op.dims), ", ".join(i.name for i in op.impls),
                     ", ".join(op.modes), ", ".join(op.presets), op.description])
    click.echo(f"backend: {be.label}")
    click.echo(table(rows, ["op", "dims", "impls", "modes", "presets", "description"]))


# ------------------------------------------------------------------------------------ check

@cli.command("check")
@click.argument("ops", nargs=-1)
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(DTYPE_CHOICES),
              help="dtype(s) to check (repeatable; default: every dtype the backend computes "
                   "correctly).")
@click.option("--shape", "shapes", multiple=True,
              help="Shape in the op's dim order, e.g. 97x83x131 (repeatable; default: the tiny "
                   "preset on the interpreter, quick on a GPU).")
@click.option("--impl", "impls", multiple=True, help="Only these implementations.")
@click.option("--mode", "modes", multiple=True, help="Only these modes.")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(min=1),
              help="Random seeds (fresh inputs) per case.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def check_cmd(ops, dtypes, shapes, impls, modes, seeds, as_json):
    """Check implementations against the float64 reference. Exit 1 if any case fails."""
    from tritonlab.measure import check
    from tritonlab.ops import registry

    specs = registry.resolve_ops(ops)
    for op in specs:
        registry.check_impls(op, impls)
    for m in modes:
        registry.parse_mode(m)
    be = backend.current()
    if dtypes:
        dtype_list = [registry.parse_dtype(d) for d in dtypes]
    else:
        dtype_list = sorted({d for op in specs for d in
                             (op.dtypes if be.is_gpu else op.dtypes_interpreter)}, key=str)
    shape_map = {op.name: ([registry.parse_shape(s, op) for s in shapes] if shapes
                           else check.default_shapes(op)) for op in specs}
    results = []
    for r in check.iter_cases(specs, dtype_list, shape_map, seeds, impls, modes):
        results.append(r)
        if not as_json:
            status = "skip" if r.correct is None else ("ok" if r.correct else "FAIL")
            info(f"  {status:4s} {r.op} {r.impl} {r.mode} {r.dtype} "
                 f"{'x'.join(map(str, r.shape.values()))} seed={r.seed}")
    failed = [r for r in results if r.correct is False]
    if as_json:
        emit_json({"backend": be.name, "passed": not failed,
                   "cases": [r.to_dict() for r in results]})
    else:
        rows = [[r.op, r.impl, r.mode, r.dtype, "x".join(map(str, r.shape.values())), r.seed,
                 "skip" if r.correct is None else ("ok" if r.correct else "FAIL"),
                 fmt_num(r.rel_fro_err, ".2e"), fmt_num(r.tol_rel_fro, ".1e"),
                 fmt_num(r.max_rel_err, ".2e"), fmt_num(r.tol_max_rel, ".1e"),
                 r.error or ""] for r in results]
        click.echo(f"backend: {be.label}")
        click.echo(table(rows, ["op", "impl", "mode", "dtype", "shape", "seed", "result",
                                "rel_fro", "tol", "max_rel", "tol", "note"]))
        n_skip = sum(r.correct is None for r in results)
        click.echo(f"{len(results) - len(failed) - n_skip} passed, {len(failed)} failed, "
                   f"{n_skip} skipped")
    if failed:
        sys.exit(1)


# ------------------------------------------------------------------------------------ sweep

def _progress_printer():
    """Progress on stderr: a redrawn bar on a terminal, one line per point otherwise."""
    tty = sys.stderr.isatty()

    def show(done, total, label, status):
        if tty:
            width = 24
            filled = width * done // max(total, 1)
            end = "\n" if done == total and status != "measuring" else ""
            sys.stderr.write(f"\r\033[K[{'#' * filled}{'.' * (width - filled)}] "
                             f"{done}/{total} {label}: {status}{end}")
            sys.stderr.flush()
        elif status != "measuring":
            info(f"[{done}/{total}] {label}: {status}")

    return show


@cli.command("sweep")
@click.argument("ops", nargs=-1)
@click.option("--preset", help="Shape preset (default: tiny on the interpreter, quick on a GPU).")
@click.option("--shape", "shapes", multiple=True, help="Shape in the op's dim order, e.g. "
              "97x83x131 (repeatable; instead of --preset).")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(DTYPE_CHOICES),
              help="dtype(s) (repeatable; default: every dtype the backend computes correctly).")
@click.option("--mode", "modes", multiple=True, help="Only these modes (repeatable).")
@click.option("--impl", "impls", multiple=True, help="Only these implementations (repeatable; "
              "speedups need a baseline among them).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run directory to write (default: a new runs/<date-time>).")
@click.option("--resume", is_flag=True, help="Continue the run in --out; points already "
              "there are skipped.")
@click.option("--cache", type=click.Choice(("cold", "warm")), default=None,
              help="cold: flush the L2 (CPU: the LLC) before each call (default on CUDA); "
                   "warm: do not (default on the interpreter).")
@click.option("--graph", is_flag=True, help="Time CUDA-graph replays (launch-bound kernels; "
              "cuda backend only).")
@click.option("--budget", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds per implementation and point before repetitions stop short of a "
                   "1% CI (default: 1 on CUDA, 0.2 on the interpreter).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def sweep_cmd(ops, preset, shapes, dtypes, modes, impls, out, resume, cache, graph, budget,
              seed, as_json):
    """Check, then time, every point (op, impl, mode, dtype, shape) into a run directory.

    Exit 1 if any point failed (mismatch, compile error, OOM), 130 on Ctrl-C (what was
    measured is kept; continue with --resume).
    """
    from pathlib import Path

    from tritonlab.runs import sweep as sweep_mod
    from tritonlab.runs.store import command_argv, new_run_dir

    if resume and not out:
        raise UsageError("--resume needs --out DIR (the run to continue)")
    points, notes, selection = sweep_mod.plan_from_args(ops, preset, shapes, dtypes, modes,
                                                        impls)
    be = backend.current()
    for note in notes:
        info(f"note: {note}")
    out_dir = Path(out) if out else new_run_dir("runs")
    info(f"backend: {be.label}; {len(points)} points -> {out_dir}")
    options = sweep_mod.SweepOptions(cache=cache, graph=graph, budget_s=budget, seed=seed)
    result = sweep_mod.sweep(points, out_dir, resume=resume, options=options,
                             argv=command_argv(), selection=selection,
                             progress=_progress_printer(), notes=notes)
    summary = sweep_mod.summary_table(result.rows)
    tail = (f"{len(result.rows)} rows in {result.run_dir} ({result.new_rows} new, "
            f"{result.points_done_before} points already there), {len(result.failed)} failed")
    if as_json:
        info(summary)
        info(tail)
        emit_json({"run_dir": str(result.run_dir), "backend": be.name,
                   "device": result.manifest["device"]["name"],
                   "status": result.manifest["status"], "points": result.points_total,
                   "points_already_done": result.points_done_before,
                   "new_rows": result.new_rows, "failed": len(result.failed),
                   "notes": result.notes, "rows": result.rows})
    else:
        click.echo(f"backend: {be.label}")
        click.echo(summary)
        click.echo(tail)
    if result.interrupted:
        info(f"interrupted: finished points are kept; continue with --resume --out "
             f"{result.run_dir}")
        sys.exit(130)
    if result.failed:
        sys.exit(1)


# ---------------------------------------------------------------------------------- compare

@cli.command("compare")
@click.argument("base_run", type=click.Path())
@click.argument("new_run", type=click.Path())
@click.option("--threshold", default=0.05, show_default=True, type=click.FloatRange(min=0),
              help="Relative slowdown that is a regression when also beyond the noise "
                   "(0.05 = 5%).")
@click.option("--force", is_flag=True, help="Compare runs of different backends, devices or "
              "cache/graph settings anyway.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def compare_cmd(base_run, new_run, threshold, force, as_json):
    """Pair the points of two runs: speedup (BASE ms / NEW ms) with its 95% CI per point,
    geometric means per op. Exit 1 when a point is slower beyond both the threshold and its
    noise, or fails in NEW."""
    from tritonlab.runs import compare

    report = compare.compare_runs(compare.load_run(base_run), compare.load_run(new_run),
                                  threshold=threshold, force=force)
    if as_json:
        for warning in report["incompatibilities"]:
            info(f"warning: {warning}")
        emit_json(report)
    else:
        click.echo("\n".join(compare.report_lines(report)))
    if not report["passed"]:
        sys.exit(1)


# --------------------------------------------------------------------------------- contrast

@cli.command("contrast")
@click.option("--batch", "batches", multiple=True, type=int,
              help="Tokens per step (repeatable; default: 1 16 256 4096 on a GPU, 1 64 on "
                   "the interpreter).")
@click.option("--duration", type=float, default=None,
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
@click.option("--warmup", type=float, default=None, help="Seconds of warm-up before each "
              "phase (and at least 2 steps on a GPU, 1 on the interpreter; default: 2 on a "
              "GPU, 0.2 on the interpreter).")
@click.option("--idle", type=float, default=None, help="Seconds of idle baseline (0: none; "
              "default: 5 on a GPU, 1 on the interpreter).")
@click.option("--cooldown", type=float, default=None, help="Seconds of cool-down after each "
              "phase (default: 3 on a GPU, 0.2 on the interpreter).")
@click.option("--interval-ms", type=float, default=20.0, show_default=True,
              help="Counter sampling interval.")
@click.option("--counters", type=click.Choice(("auto", "nvml", "cpu")), default="auto",
              show_default=True, help="Counter backend (auto: NVML on a GPU, else the CPU).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of weights and data.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run directory to write (default: a new runs/<date-time>).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def contrast_cmd(batches, duration, model_size, impls, modes, dtype, warmup, idle, cooldown,
                 interval_ms, counters, seed, out, as_json):
    """Training vs inference on the same model: which pushes the device harder, and how.

    Writes manifest.json, counters.csv, contrast.json, timeline.png and trace.json (open it in
    ui.perfetto.dev). Exit 1 if a phase failed (its error is recorded and the run goes on).
    """
    from tritonlab.contrast import run as contrast
    from tritonlab.runs.store import command_argv, new_run_dir

    out_dir = out or new_run_dir("runs")
    doc = contrast.run_contrast(out_dir, batches=batches or None, duration_s=duration,
                                model_size=model_size, impls=impls or contrast.IMPLS,
                                modes=modes or contrast.MODES, dtype=dtype, warmup_s=warmup,
                                idle_s=idle, cooldown_s=cooldown, interval_ms=interval_ms,
                                counters=counters, seed=seed, progress=info,
                                argv=command_argv())
    text = contrast.summary_text(doc)
    if as_json:
        info(text)
        emit_json(doc)
    else:
        click.echo(text)
        click.echo(f"run directory: {doc['out']}")
    if any(p.get("error") for p in doc["phases"]):
        sys.exit(1)


# ----------------------------------------------------------------------------------- device

@cli.command("device")
@click.option("--measure", is_flag=True, help="Measure the ceilings: a large device-to-device "
              "copy and a large matmul per dtype (torch CPU copy and matmul without a GPU); "
              "cached so later sweeps use them.")
@click.option("--spec", "spec_name", metavar="NAME", help="Show a device table entry by name "
              "(e.g. 'H100 SXM5' or a driver name such as 'NVIDIA A100-SXM4-40GB').")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def device_cmd(measure, spec_name, as_json):
    """Show the present device and its ceilings (datasheet and measured)."""
    from tritonlab.hw import devices

    if spec_name is not None:
        if measure:
            raise UsageError("--spec shows a table entry and --measure the present device; "
                             "give one of them")
        spec = devices.spec_by_name(spec_name)
        if as_json:
            emit_json(spec.to_dict())
        else:
            click.echo("\n".join(devices.spec_lines(spec)))
        return
    be = backend.current()
    desc = devices.describe(be)
    measured = None
    if measure:
        measured = devices.measure_ceilings(be, progress=lambda m: info(f"measuring: {m}"))
        info(f"measured ceilings cached in {devices.store_ceilings(desc, measured)}")
    peaks = devices.peaks_for(desc, measured=measured)
    if desc["kind"] == "cuda" and desc["spec_name"] is None:
        info(f"warning: {desc['name']!r} is not in the device table; its rooflines use "
             f"measured ceilings only{'' if measured else ' (run with --measure)'}")
    if as_json:
        emit_json({"device": desc, "peaks": peaks.to_dict() if peaks else None})
    else:
        click.echo("\n".join(devices.device_lines(desc, peaks)))


# ----------------------------------------------------------------------------------- report

@cli.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Directory for report.md, figures/ and index.html (default: RUN/report for "
                   "one run, report-A-vs-B beside the first for several).")
def report_cmd(runs, out_dir):
    """Write report.md and a self-contained index.html from one or more run directories."""
    from tritonlab.report import render as report

    paths = report.write_report(runs, out_dir)
    for warning in paths.warnings:
        info(f"warning: {warning}")
    click.echo(f"report: {paths.html}")
    click.echo(f"        {paths.markdown} ({len(paths.figures)} figures)")


# ------------------------------------------------------------------------------------- demo

@cli.command("demo")
@click.option("--out", "out_dir", default="reports/demo", show_default=True,
              type=click.Path(file_okay=False),
              help="Where the demo writes its runs and its report.")
def demo_cmd(out_dir):
    """The lab's main job: check every op, a quick sweep (tiny on the interpreter), a short
    training-vs-inference contrast, and the report. Exit 1 if a check fails."""
    from tritonlab.jobs import demo

    result = demo.run_demo(out_dir, progress=info)
    click.echo(f"report: {result.html}")
    click.echo(f"        {result.markdown}")
    if not result.passed:
        sys.exit(1)


# ---------------------------------------------------------------------------------- inspect

@cli.command("inspect")
@click.argument("ops", nargs=-1)
@click.option("--arch", "archs", multiple=True, help="Target architecture (repeatable): "
              "sm_80, sm_86, sm_89, sm_90a, sm_100a (default: this GPU's, else sm_90a).")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(DTYPE_CHOICES),
              help="Element type (repeatable; default float16).")
@click.option("--config", "configs", multiple=True, metavar="KEY=VALUE,...",
              help="Compile this config instead of the autotune list, e.g. BLOCK_M=128,"
                   "BLOCK_N=128,BLOCK_K=64,num_warps=8,num_stages=3 (repeatable; keys left out "
                   "come from the first config of the list).")
@click.option("--first", type=click.IntRange(min=1), default=None,
              help="Only the first N configs of each autotune list.")
@click.option("--dump", type=click.Path(file_okay=False), default=None,
              help="Write each kernel's TTIR, TTGIR, LLIR, PTX, SASS and cubin under DIR.")
@click.option("--rebuild", is_flag=True, help="Compile again instead of using the cache.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def inspect_cmd(ops, archs, dtypes, configs, first, dump, rebuild, as_json):
    """Compile each op's kernels for a GPU architecture (no GPU needed) and report registers,
    spills, shared memory, occupancy and the SASS instruction mix. Exit 1 if a config does
    not compile."""
    from pathlib import Path

    import torch

    from tritonlab.ops import registry
    from tritonlab.static import driver as insp

    specs = registry.resolve_ops(ops)
    if ops:
        for op in specs:
            why = insp.inspectable(op)
            if why:
                ok = [o.name for o in registry.discover().values() if not insp.inspectable(o)]
                raise UsageError(f"{why}; ops to inspect: {', '.join(ok) or 'none'}")
    arch_list = [insp.parse_arch(a) for a in archs] or insp.default_archs()
    dtype_list = [registry.parse_dtype(d) for d in dtypes] or [torch.float16]
    config_list = [insp.parse_config(c) for c in configs]
    targets = [t for op in specs for d in dtype_list if d in op.dtypes
               for t in insp.op_targets(op, d)]
    for c in config_list:
        insp.check_config_keys(c, targets)
    report = insp.run(specs, arch_list, dtype_list, config_list or None, first=first,
                      dump=Path(dump) if dump else None, rebuild=rebuild,
                      progress=lambda done, total, label: info(f"compiled {done}/{total} "
                                                               f"{label}"))
    for s in report.skipped:
        info(f"skipped: {s['reason']}")
    for r in report.failed:
        info(f"error: {r['op']}/{r['target']} {r['arch']} {insp.format_config(r['config'])}:\n"
             f"{r['error']}")
    summary = (f"{len(report.rows)} kernels/configs: {report.compiled} compiled now, "
               f"{report.cached} from the cache ({insp.cache_dir()}), {len(report.failed)} "
               f"failed, {report.seconds:.1f} s")
    if as_json:
        info(summary)
        emit_json(report.to_dict())
    else:
        click.echo(f"static inspection with Triton {report.to_dict()['triton_version']} "
                   f"(compiled, never run; instruction counts are static)")
        click.echo(table(insp.table_rows(report), insp.TABLE_HEADERS))
        click.echo(summary)
        if dump:
            click.echo(f"compiler outputs written under {dump}")
    if report.failed:
        sys.exit(1)


def main() -> None:
    cli(prog_name="tritonlab")


if __name__ == "__main__":
    main()
