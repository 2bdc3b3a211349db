"""The ``tritonlab`` command line. Thin: it parses, calls :mod:`tritonlab.harness`, prints.

Exit codes: 0 success; 1 a correctness, check or regression failure; 2 bad usage or input.
"""

from __future__ import annotations

import sys

import click

from tritonlab.harness import backend
from tritonlab.harness.errors import UsageError
from tritonlab.harness.output import emit_json, fmt_num, info, table

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
    from tritonlab.harness import registry

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
    from tritonlab.harness import check, registry

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


def main() -> None:
    cli(prog_name="tritonlab")


if __name__ == "__main__":
    main()
