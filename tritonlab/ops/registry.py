"""Discovery of ops and parsing of the user's op / impl / mode / dtype / shape choices.

Every module under :mod:`tritonlab.ops` that defines ``SPEC`` (or ``SPECS``) declares ops;
nothing central lists them. The backend is selected before the op modules are imported (they
import the kernels, which Triton decorates for the backend chosen then).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterable, Sequence

import torch

import tritonlab.ops as ops_package
from tritonlab import backend
from tritonlab.errors import UsageError
from tritonlab.ops.contract import DTYPES, MODES, OpSpec, Shape

_ops: dict[str, OpSpec] | None = None


def discover() -> dict[str, OpSpec]:
    """All ops, by name, in a stable order (sorted by name)."""
    global _ops
    if _ops is None:
        backend.current()
        found: dict[str, OpSpec] = {}
        for info in pkgutil.iter_modules(ops_package.__path__):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{ops_package.__name__}.{info.name}")
            specs = list(getattr(module, "SPECS", ()))
            if hasattr(module, "SPEC"):
                specs.append(module.SPEC)
            for spec in specs:
                if spec.name in found:
                    raise RuntimeError(f"op {spec.name!r} is declared twice")
                found[spec.name] = spec
        _ops = dict(sorted(found.items()))
    return _ops


def resolve_ops(names: Sequence[str]) -> list[OpSpec]:
    """The ops named (all when none), or UsageError naming the valid ones."""
    ops = discover()
    if not names:
        return list(ops.values())
    unknown = [n for n in names if n not in ops]
    if unknown:
        raise UsageError(f"unknown op {', '.join(map(repr, unknown))}; "
                         f"valid ops: {', '.join(ops)}")
    return [ops[n] for n in dict.fromkeys(names)]


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UsageError(f"unsupported dtype {name!r}; valid dtypes: {', '.join(DTYPES)}")
    return DTYPES[name]


def parse_mode(name: str) -> str:
    if name not in MODES:
        raise UsageError(f"unknown mode {name!r}; valid modes: {', '.join(MODES)}")
    return name


_SHAPE_RE = re.compile(r"^-?\d+(x-?\d+)*$")


def parse_shape(text: str, op: OpSpec) -> Shape:
    """``"4096x4096x4096"`` in the op's dimension order -> ``{"M": 4096, ...}``."""
    dims = op.dims
    form = "x".join(dims)
    if not _SHAPE_RE.match(text.strip()):
        raise UsageError(f"malformed shape {text!r} for {op.name}; expected {form} with "
                         f"positive integers, e.g. {'x'.join(['64'] * len(dims))}")
    values = [int(v) for v in text.strip().split("x")]
    if len(values) != len(dims):
        raise UsageError(f"shape {text!r} has {len(values)} dimensions but {op.name} takes "
                         f"{len(dims)}: {form}")
    bad = [f"{d}={v}" for d, v in zip(dims, values) if v <= 0]
    if bad:
        raise UsageError(f"shape {text!r}: dimensions must be positive ({', '.join(bad)})")
    shape = dict(zip(dims, values))
    why = op.shape_error(shape)
    if why:
        raise UsageError(f"shape {text!r} is not valid for {op.name}: {why}")
    return shape


def parse_preset(name: str, op: OpSpec) -> list[Shape]:
    if name not in op.presets:
        raise UsageError(f"unknown preset {name!r} for {op.name}; valid presets: "
                         f"{', '.join(op.presets)}")
    return [dict(s) for s in op.presets[name]]


def check_impls(op: OpSpec, names: Iterable[str]) -> None:
    valid = [i.name for i in op.impls]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise UsageError(f"unknown impl {', '.join(map(repr, unknown))} for {op.name}; "
                         f"valid impls: {', '.join(valid)}")
