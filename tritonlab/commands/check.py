"""``tritonlab check``: every implementation against the float64 reference."""

from __future__ import annotations

import sys

import click

from tritonlab import backend
from tritonlab.commands import DTYPE_CHOICES, BoundedInt, json_option
from tritonlab.measure import check
from tritonlab.ops import registry
from tritonlab.output import emit_json, fmt_num, info, table


def _status(correct: bool | None) -> str:
    return "skip" if correct is None else ("ok" if correct else "FAIL")


@click.command("check")
@click.argument("ops", nargs=-1)
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(DTYPE_CHOICES),
              help="dtype(s) to check (repeatable; default: every dtype the backend computes "
                   "correctly).")
@click.option("--shape", "shapes", multiple=True,
              help="Shape in the op's dim order, e.g. 97x83x131 (repeatable; default: the tiny "
                   "preset on the interpreter, quick on a GPU).")
@click.option("--impl", "impls", multiple=True, help="Only these implementations.")
@click.option("--mode", "modes", multiple=True, help="Only these modes.")
@click.option("--seeds", default=1, show_default=True, type=BoundedInt(1, 1000),
              help="Random seeds (fresh inputs) per case.")
@json_option
def check_cmd(ops, dtypes, shapes, impls, modes, seeds, as_json):
    """Check implementations against the float64 reference. Exit 1 if any case fails."""
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
            info(f"  {_status(r.correct):4s} {r.op} {r.impl} {r.mode} {r.dtype} "
                 f"{'x'.join(map(str, r.shape.values()))} seed={r.seed}")
    failed = [r for r in results if r.correct is False]
    checked = sum(r.correct is not None for r in results)
    nothing = None if checked else _nothing_checked(specs, modes, results)
    if as_json:
        emit_json({"backend": be.name, "passed": not failed and checked > 0,
                   "checked": checked, "error": nothing,
                   **({"exit_code": 2} if nothing else {}),
                   "cases": [r.to_dict() for r in results]})
    else:
        rows = [[r.op, r.impl, r.mode, r.dtype, "x".join(map(str, r.shape.values())), r.seed,
                 _status(r.correct), fmt_num(r.rel_fro_err, ".2e"),
                 fmt_num(r.tol_rel_fro, ".1e"), fmt_num(r.max_rel_err, ".2e"),
                 fmt_num(r.tol_max_rel, ".1e"), r.error or ""] for r in results]
        click.echo(f"backend: {be.label}")
        click.echo(table(rows, ["op", "impl", "mode", "dtype", "shape", "seed", "result",
                                "rel_fro", "tol", "max_rel", "tol", "note"]))
        n_skip = sum(r.correct is None for r in results)
        click.echo(f"{len(results) - len(failed) - n_skip} passed, {len(failed)} failed, "
                   f"{n_skip} skipped")
    if nothing:
        info(f"error: {nothing}")
        sys.exit(2)
    if failed:
        sys.exit(1)


def _nothing_checked(specs, modes, results) -> str:
    """Why a selection checked no case: no op has a selected mode, or every case of it was
    skipped (the distinct reasons)."""
    if not results:
        have = "; ".join(f"{op.name}: {', '.join(op.modes)}" for op in specs)
        return f"nothing checked: no selected op has mode {', '.join(modes)} ({have})"
    reasons = dict.fromkeys((r.error or "").removeprefix("skipped: ") for r in results)
    return "nothing checked: every case was skipped: " + "; ".join(reasons)
