"""Terminal output rules: machine-readable JSON alone on stdout; tables, progress and
warnings on stderr (docs/design.md, "The command line"); and :func:`output_dir`, the check
every command makes of a directory it will write before it starts any work."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from tabulate import tabulate

from tritonlab.errors import UsageError


def _clean(value):
    """JSON has no NaN/Infinity: write them as null so every parser accepts the document."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def dumps(doc) -> str:
    return json.dumps(_clean(doc), indent=2, default=str)


def emit_json(doc) -> None:
    sys.stdout.write(dumps(doc) + "\n")
    sys.stdout.flush()


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def table(rows: Iterable[Sequence], headers: Sequence[str], floatfmt: str = ".3g") -> str:
    return tabulate(list(rows), headers=list(headers), floatfmt=floatfmt)


def fmt_num(value, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def output_dir(path: str | os.PathLike, option: str = "--out",
               what: str = "the output directory") -> Path:
    """``path`` as a Path, if this process can make it a directory and write in it; else
    :class:`UsageError` (exit 2), one line naming ``what``, the path, the ``option`` that
    sets it and why: a file in the way, a parent that is a file, no permission, a read-only
    or virtual filesystem (/proc).

    Permission bits cannot tell (root may write anywhere that accepts writes), so the check
    creates and removes a temporary directory in ``path``, or in its nearest existing parent
    when ``path`` does not exist yet: it leaves the filesystem as it found it. Commands call
    it before they measure, compile or read anything slow, so a bad path costs nothing.
    """
    path = Path(path)
    where = f"cannot write {what} {str(path)!r} ({option})"
    if os.path.lexists(path) and not path.is_dir():
        raise UsageError(f"{where}: it exists and is not a directory")
    parent = path
    while not os.path.lexists(parent):
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{where}: {str(parent)!r} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tritonlab-probe-", dir=parent))
    except OSError as exc:
        raise UsageError(f"{where}: cannot create anything in {str(parent)!r} "
                         f"({exc.strerror or exc})") from None
    return path
