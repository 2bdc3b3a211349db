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

Errors keep the output contract. Bad usage and bad input, whether Click finds it while
parsing or a room raises :class:`~tritonlab.errors.UsageError`, print one ``error: ...`` line
on stderr, and when the command line asks for ``--json`` also ``{"error": ..., "exit_code":
...}`` on stdout, so that a script always has one JSON document to parse. An OSError that
escapes a command ends in :func:`main` with one line and exit 1, never a traceback: stdout
closed by its reader (``tritonlab list --json | head -c 10``) ends quietly with exit 1, as
Click does, because the output was lost and ``set -o pipefail`` should see it; stdout that
cannot be written (``> /dev/full``) and any other OS error name the cause.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from tritonlab import backend
from tritonlab.errors import UsageError
from tritonlab.output import emit_json

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
    "predict": "tritonlab.commands.predict:predict_cmd",
}


# ctx.meta key (shared by the group's context and its subcommand's): the command line asked
# for --json.
_WANTS_JSON = "tritonlab.wants_json"


def _wants_json(args: Sequence[str]) -> bool:
    """Whether ``args`` ask for JSON: a ``--json`` token before any ``--``. Read from the raw
    arguments because an error met while they are parsed must answer in JSON too."""
    args = list(args)
    if "--" in args:
        args = args[:args.index("--")]
    return "--json" in args


def _json_error(ctx: click.Context, message: str, exit_code: int) -> None:
    """The error as the one JSON document on stdout, when the command line asked for JSON."""
    if ctx.meta.get(_WANTS_JSON):
        emit_json({"error": message, "exit_code": exit_code})


def _usage_exit(ctx: click.Context, exc: UsageError) -> NoReturn:
    """One line on stderr and exit 2: the message names the valid choices already."""
    click.echo(f"error: {exc}", err=True)
    _json_error(ctx, str(exc), 2)
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

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[_WANTS_JSON] = _wants_json(args)
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as exc:
            _json_error(ctx, exc.format_message(), exc.exit_code)
            raise

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            _usage_exit(ctx, exc)
        except click.ClickException as exc:  # Click's own: an unknown option, a bad choice
            _json_error(ctx, exc.format_message(), exc.exit_code)
            raise
        except KeyboardInterrupt:  # Ctrl-C while a command's modules load: nothing started
            click.echo("interrupted", err=True)
            ctx.exit(130)


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


def _os_error_exit(exc: OSError) -> NoReturn:
    """Exit 1 after an OSError that escaped a command: quietly when stdout's reader went away,
    else with one line naming the cause (and the JSON error document if asked for and stdout
    still takes it)."""
    if exc.errno != errno.EPIPE:
        where = f": {exc.filename}" if exc.filename else ""
        click.echo(f"error: {exc.strerror or exc}{where}", err=True)
        if _wants_json(sys.argv[1:]):
            with contextlib.suppress(OSError):
                emit_json({"error": f"{exc.strerror or exc}{where}", "exit_code": 1})
    # Whatever is still buffered for stdout would fail again in the interpreter's last flush
    # and print "Exception ignored ..."; send it to /dev/null instead.
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(1)


def main() -> None:
    """The console script: :func:`cli` with the one handler for OS errors (see the module
    docstring)."""
    try:
        try:
            cli(prog_name="tritonlab")
        finally:
            sys.stdout.flush()
    except OSError as exc:
        _os_error_exit(exc)


if __name__ == "__main__":
    main()
