"""The compile cache: where compiled kernels are kept and what identifies one.

A compile *job* is one kernel of one op, specialised for one launch config on one
architecture; its cache key hashes the kernel's source (and what it calls), the target, the
specialised signature, the config and the Triton version, so an entry is reused exactly when
the compiler would produce the same outputs. The entry's files are described in
:mod:`tritonlab.static.compile`.
"""

from __future__ import annotations

import ast
import hashlib
import inspect as pyinspect
import json
import os
import sys
import textwrap
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import triton

from tritonlab.kernels.tuning import CompileTarget
from tritonlab.static.arch import ArchLimits
from tritonlab.static.compile import encode_constexpr, jit_function
from tritonlab.static.targets import format_config, specialise

try:
    from triton.compiler.compiler import get_cache_invalidating_env_vars
except ImportError:  # Triton versions without it have no such environment to hash
    get_cache_invalidating_env_vars = dict

ENTRY_FORMAT = 2  # bump when tritonlab.static.compile stores something different


def cache_dir() -> Path:
    """Where compiled results live: ``$TRITONLAB_CACHE_DIR/inspect``, else
    ``$XDG_CACHE_HOME/tritonlab/inspect``, else ``~/.cache/tritonlab/inspect``."""
    root = os.environ.get("TRITONLAB_CACHE_DIR")
    if root:
        return Path(root) / "inspect"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "tritonlab" / "inspect"


def entry_dir(root: Path, key: str) -> Path:
    """The cache entry of ``key`` under the cache ``root``."""
    return root / key[:2] / key


def _is_jit(value) -> bool:
    return type(value).__name__ in ("JITFunction", "InterpretedFunction")


_MISSING = object()


def source_digest(kernel) -> str:
    """Hash of what the kernel's code depends on: its source, and recursively the source of
    every @triton.jit helper and the value of every global constant it names (directly or as
    ``module.name``), as Triton's own cache key does. Triton's own functions are covered by
    the Triton version in the cache key; editing a launcher or another kernel of the same
    module invalidates nothing."""
    h = hashlib.sha256()
    seen: set = set()

    def resolve(node, scope):
        if isinstance(node, ast.Name):
            return scope.get(node.id, _MISSING)
        if isinstance(node, ast.Attribute):
            base = resolve(node.value, scope)
            if isinstance(base, types.ModuleType):
                return getattr(base, node.attr, _MISSING)
        return _MISSING

    def visit(fn) -> None:
        if fn in seen:
            return
        seen.add(fn)
        src = textwrap.dedent(pyinspect.getsource(fn))
        h.update(f"{fn.__qualname__}\n{src}".encode())
        for node in ast.walk(ast.parse(src)):
            if not isinstance(node, (ast.Name, ast.Attribute)):
                continue
            value = resolve(node, fn.__globals__)
            if _is_jit(value):
                if value.fn.__module__.split(".")[0] != "triton":
                    visit(value.fn)
            elif type(value).__name__ == "constexpr":
                h.update(f"{node.id if isinstance(node, ast.Name) else node.attr}="
                         f"{value.value!r}\n".encode())
            elif isinstance(value, (bool, int, float, str)):
                h.update(f"{ast.dump(node)}={value!r}\n".encode())

    visit(jit_function(kernel).fn)
    return h.hexdigest()


@dataclass
class Job:
    """One kernel and config to compile for one architecture, and the report row it gives."""

    op: str
    target: CompileTarget
    arch: ArchLimits
    dtype: torch.dtype
    config: dict
    config_index: int | None  # position in the arch's list; None for a user config
    spec: dict | None  # specialise(target, config), None when that failed
    error: str | None
    key: str = ""

    @property
    def label(self) -> str:
        return f"{self.op}/{self.target.name} {self.arch.name} {format_config(self.config)}"

    def payload(self, root: Path) -> dict:
        """The job as :func:`tritonlab.static.compile.compile_job` takes it."""
        fn = jit_function(self.target.kernel).fn
        return {"key": self.key, "module": fn.__module__, "function": fn.__name__,
                "signature": self.spec["signature"],
                "constexprs": {k: encode_constexpr(v)
                               for k, v in self.spec["constexprs"].items()},
                "divisible": self.spec["divisible"], "options": self.spec["options"],
                "capability": self.arch.cc, "entry": str(entry_dir(root, self.key))}


def make_job(op: str, target: CompileTarget, arch: ArchLimits, dtype: torch.dtype,
             config: dict, index: int | None, digests: dict) -> Job:
    """The job compiling ``target`` with ``config`` on ``arch``, with its cache key; a job
    without a spec and with the reason when the launch cannot be specialised or the kernel
    cannot be imported by a worker. ``digests`` memoises source digests across calls."""
    try:
        spec = specialise(target, config)
        constexprs = {k: encode_constexpr(v) for k, v in spec["constexprs"].items()}
    except (ValueError, TypeError, KeyError) as exc:
        return Job(op, target, arch, dtype, config, index, None, f"{type(exc).__name__}: {exc}")
    fn = jit_function(target.kernel).fn
    try:
        importable = jit_function(getattr(sys.modules[fn.__module__], fn.__name__)).fn is fn
    except (KeyError, AttributeError, TypeError):
        importable = False
    if not importable:
        return Job(op, target, arch, dtype, config, index, None,
                   f"{fn.__module__}.{fn.__name__} is not a module-level name of its module; "
                   f"compile workers cannot import it")
    if fn not in digests:
        digests[fn] = source_digest(target.kernel)
    ident = {"format": ENTRY_FORMAT, "triton": triton.__version__,
             "env": dict(get_cache_invalidating_env_vars()),
             "source": digests[fn], "module": fn.__module__,
             "function": fn.__name__, "capability": arch.cc,
             "signature": spec["signature"], "constexprs": constexprs,
             "divisible": sorted(spec["divisible"]), "options": spec["options"]}
    job = Job(op, target, arch, dtype, config, index, spec, None)
    job.key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return job
