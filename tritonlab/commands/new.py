"""``tritonlab new``: scaffold a working op (kernel, op declaration, test)."""

from __future__ import annotations

import click

from tritonlab.jobs import scaffold
from tritonlab.ops import registry
from tritonlab.output import output_dir


@click.command("new")
@click.argument("opname")
@click.option("--like", "family", type=click.Choice(tuple(scaffold.FAMILIES)), default="matmul",
              show_default=True, help="The kind of op to start from: "
              + "; ".join(f"{k}: {v}" for k, v in scaffold.FAMILIES.items()) + ".")
@click.option("--package-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="The tritonlab package to add the op to (default: the imported one).")
@click.option("--tests-dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="Where the op's test goes (default: tests/ beside the package).")
def new_cmd(opname, family, package_dir, tests_dir):
    """Scaffold a working op OPNAME to start an experiment from.

    Writes its Triton kernel (kernels/OPNAME.py), its declaration (ops/OPNAME.py) and its
    test (tests/test_OPNAME.py), which list, check, sweep, inspect and report pick up with no
    other edit. Never overwrites a file; exit 2 for a name that is taken or not a lowercase
    identifier. Walkthrough: docs/adding-an-op.md."""
    layout = scaffold.default_layout(package_dir, tests_dir)
    for folder, option in ((layout.package_dir / "kernels", "--package-dir"),
                           (layout.package_dir / "ops", "--package-dir"),
                           (layout.tests_dir, "--tests-dir")):
        output_dir(folder, option, "the folder of the new files")
    written = scaffold.new_op(opname, family, layout, existing_ops=registry.discover())
    for path in written:
        click.echo(f"wrote {path}")
    click.echo(f"next: tritonlab check {opname}; tritonlab sweep {opname} --preset tiny; "
               f"pytest {written[-1]} (see docs/adding-an-op.md)")
