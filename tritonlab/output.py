"""Terminal output rules: machine-readable JSON alone on stdout; tables, progress and
warnings on stderr (docs/design.md, "The command line")."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence

from tabulate import tabulate


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
