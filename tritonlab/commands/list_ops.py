"""``tritonlab list``: the ops with their implementations, modes and shape presets."""

from __future__ import annotations

import click

from tritonlab import backend
from tritonlab.commands import json_option
from tritonlab.ops import registry
from tritonlab.output import emit_json, table


@click.command("list")
@json_option
def list_cmd(as_json):
    """List ops with their implementations, modes and shape presets."""
    ops = registry.discover()
    be = backend.current()
    if as_json:
        emit_json({"backend": be.name, "ops": [op.summary() for op in ops.values()]})
        return
    rows = [[op.name, " ".join(op.dims), ", ".join(i.name for i in op.impls),
             ", ".join(op.modes), ", ".join(op.presets), op.description]
            for op in ops.values()]
    click.echo(f"backend: {be.label}")
    click.echo(table(rows, ["op", "dims", "impls", "modes", "presets", "description"]))
