"""The subcommands of :mod:`tritonlab.cli`, one module per command.

Each module imports the rooms it calls at its top; :class:`tritonlab.cli.LazyGroup` imports a
module only once its command is resolved, after ``--backend`` was applied. Only options and
parameter types that several commands share live here.

Every numeric option has a bounded type (:class:`FiniteFloat`, :class:`BoundedInt`,
:data:`SEED`): NaN, infinities and values outside the range are bad usage, refused while the
command line is parsed, before anything runs, with one ``error: ...`` line naming the valid
range and exit 2. Output directories (``--out``, ``-o``, ``--dump``) are plain paths to
Click; each command checks them with :func:`tritonlab.output.output_dir` before it starts,
which refuses a file in the way or an unwritable place in one line, also with exit 2.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable

import click

from tritonlab.errors import UsageError, signals_interrupt
from tritonlab.output import info

DTYPE_CHOICES = ("float16", "bfloat16", "float32")

json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document on stdout.")


class _Bounded:
    """What :class:`FiniteFloat` and :class:`BoundedInt` share: the range in words for the
    error, and the error itself.

    The error is the lab's :class:`~tritonlab.errors.UsageError`, not Click's
    ``BadParameter``, so that a bad number reads like every other bad input (one ``error:``
    line, exit 2, see :class:`tritonlab.cli.LazyGroup`). The Click base class still puts the
    range in ``--help``.
    """

    min: float | int
    max: float | int
    min_open: bool
    max_open: bool
    kind = "a number"

    def __init__(self, min, max, *, min_open: bool = False, max_open: bool = False,
                 unit: str = "", label: str | None = None):
        super().__init__(min, max, min_open=min_open, max_open=max_open)
        self.unit = unit
        self.label = label

    def words(self) -> str:
        """The range in words, e.g. ``positive and at most 3600 s (a finite number)``."""

        def num(x) -> str:
            return f"{x:g}" if isinstance(x, float) else str(x)

        integer = isinstance(self, click.IntRange)
        positive = (self.min == 0 and self.min_open) or (integer and self.min == 1)
        low = "positive" if positive else f"{'>' if self.min_open else '>='} {num(self.min)}"
        high = (f"below {num(self.max)}" if self.max_open else f"at most {num(self.max)}")
        unit = f" {self.unit}" if self.unit else ""
        return f"{low} and {high}{unit} ({self.kind})"

    def refuse(self, value, param: click.Parameter | None):
        name = self.label or (param.opts[0] if param is not None and param.opts else "value")
        raise UsageError(f"{name} must be {self.words()}, got {value!r}")

    def within(self, x) -> bool:
        above = x > self.min if self.min_open else x >= self.min
        below = x < self.max if self.max_open else x <= self.max
        return above and below  # False for NaN: every comparison with NaN is


class FiniteFloat(_Bounded, click.FloatRange):
    """A finite float in a closed or open range: ``FiniteFloat(0, 3600, min_open=True,
    unit="s")`` takes 0 < x <= 3600 and refuses NaN, infinities and anything else."""

    kind = "a finite number"

    def convert(self, value, param, ctx):
        try:
            x = float(value)
        except (TypeError, ValueError):
            self.refuse(value, param)
        if not (math.isfinite(x) and self.within(x)):
            self.refuse(value, param)
        return x


class BoundedInt(_Bounded, click.IntRange):
    """An integer in a range: ``BoundedInt(1, 1000)`` takes 1..1000; fractions, NaN and
    numbers outside the range are refused."""

    kind = "an integer"

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            self.refuse(value, param)
        try:
            x = value if isinstance(value, int) else int(str(value).strip(), 10)
        except (TypeError, ValueError):
            self.refuse(value, param)
        if not self.within(x):
            self.refuse(value, param)
        return x


SEED = BoundedInt(0, 2**63 - 1)
"""A random seed: what every generator the lab seeds takes (torch's takes up to 2**64 - 1;
the margin leaves room for the seed + offset that some workloads draw with)."""

DAY_S = 86400.0
"""The longest duration any option takes, in seconds: a bound, so that a typo such as 1e30
fails at once instead of overflowing a sleep after the run has begun."""


def grid_option(flag: str, dest: str, unit: str, text: str):
    """A repeatable grid option of the decoder-layer regimes (integers >= 1), shared by
    ``contrast`` and ``predict``."""
    return click.option(flag, dest, multiple=True,
                        type=BoundedInt(1, 2**20, unit=unit, label=flag.lstrip("-")),
                        help=f"{text} (repeatable).")


def interruptible(command: Callable) -> Callable:
    """Decorate a long command's callback so that Ctrl-C, SIGTERM and SIGHUP stop it with
    exit 130 and one line on stderr whenever they come, set-up included (what it finished
    is kept: the layers below save it on KeyboardInterrupt), instead of Click's "Aborted!"
    and exit 1."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        with signals_interrupt():
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt as exc:
                info(f"interrupted ({exc or 'Ctrl-C'})")
                sys.exit(130)

    return run
