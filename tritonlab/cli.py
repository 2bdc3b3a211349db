"""The ``tritonlab`` command line: a Click group whose subcommands live in
:mod:`tritonlab.commands`, one module per command, each thin (it parses, calls the rooms
below, prints).

Why the subcommands are loaded lazily: Triton reads ``TRITON_INTERPRET`` when a kernel is
*decorated*, that is when a module of :mod:`tritonlab.kernels` is imported, so the backend
must be chosen before any such import. The group's ``--backend`` option is eager and its
callback calls :func:`tritonlab.backend.select` while the command line is parsed; the group
imports a subcommand's module (which imports the harness rooms, and through them the kernels,
at its top) only when Click resolves that subcommand, after the parse. That loader
(:meth:`LazyGroup.get_command`, Click's documented lazy-subcommand pattern) is the only
deferred import of the package.

Exit codes: 0 success; 1 a correctness, check or regression failure; 2 bad usage or input.
"""

from __future__ import annotations

import importlib

import click

from tritonlab import backend
from tritonlab.errors import UsageError

# Command name -> "module:attribute" of its click.Command.
COMMANDS = {
    "list": "tritonlab.commands.list_ops:list_cmd",
    "check": "tritonlab.commands.check:check_cmd",
    "sweep": "tritonlab.commands.sweep:sweep_cmd",
    "compare": "tritonlab.commands.compare:compare_cmd",
    "contrast": "tritonlab.commands.contrast:contrast_cmd",
    "device": "tritonlab.commands.device:device_cmd",
    "report": "tritonlab.commands.report:report_cmd",
    "demo": "tritonlab.commands.demo:demo_cmd",
    "inspect": "tritonlab.commands.inspect_kernels:inspect_cmd",
    "new": "tritonlab.commands.new:new_cmd",
    "gpu-check": "tritonlab.commands.gpu_check:gpu_check_cmd",
}


def _usage_exit(ctx: click.Context, exc: UsageError) -> None:
    """One line on stderr and exit 2: the message names the valid choices already."""
    click.echo(f"error: {exc}", err=True)
    ctx.exit(2)


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when the subcommand is resolved, and
    turns the harness's UsageError into one line and exit 2 (never a traceback)."""

    def __init__(self, *args, lazy_subcommands: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = dict(lazy_subcommands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_subcommands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy_subcommands:
            return super().get_command(ctx, cmd_name)
        module_name, attr = self.lazy_subcommands[cmd_name].split(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module_name}:{attr} is not a click.Command")
        return command

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            _usage_exit(ctx, exc)


def _select_backend(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if ctx.resilient_parsing:
        return
    try:
        backend.select(value)
    except UsageError as exc:
        _usage_exit(ctx, exc)


@click.group(cls=LazyGroup, lazy_subcommands=COMMANDS)
@click.option("--backend", "backend_name", type=click.Choice(backend.BACKENDS),
              default=None, envvar=backend.ENV_VAR, is_eager=True, expose_value=False,
              callback=_select_backend,
              help="Force a backend (default: cuda when a GPU is visible, else interpreter).")
@click.version_option(package_name="tritonlab")
def cli():
    """tritonlab: Triton kernels, their baselines, and the instruments that measure them."""


def main() -> None:
    cli(prog_name="tritonlab")


if __name__ == "__main__":
    main()
