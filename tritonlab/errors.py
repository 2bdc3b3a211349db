"""Errors the CLI turns into exit codes (docs/design.md, "The command line"), and the
signals that stop a long command as Ctrl-C does."""

import contextlib
import signal
import threading
from collections.abc import Iterator


class UsageError(ValueError):
    """Bad usage or bad input: unknown op, malformed shape, unsupported dtype (exit 2).

    The message names the valid choices, so the user can fix the command without docs.
    """


class Interrupted(KeyboardInterrupt):
    """A SIGTERM or SIGHUP, handled as Ctrl-C is: the command keeps what it finished and
    exits 130."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread, as
    SIGINT raises KeyboardInterrupt, so that one ``except KeyboardInterrupt`` saves a long
    command's work whichever way it is stopped (a terminal closing, ``kill``, a job
    scheduler). The previous handlers are restored afterwards. A signal the process was
    started to ignore (SIGHUP under nohup) stays ignored; off the main thread, where Python
    cannot set handlers, nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_interrupted(signum, _frame):
        raise Interrupted(signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        old = signal.getsignal(sig)
        if old is signal.SIG_IGN:
            continue
        previous[sig] = old
        if sig == signal.SIGINT:
            signal.signal(sig, signal.default_int_handler)
        else:
            signal.signal(sig, raise_interrupted)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
