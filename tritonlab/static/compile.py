"""Compiling one kernel for one architecture and storing what the compiler produced.

A *job* is a JSON-ready description of one compile (the kernel's module and name, its
specialised signature, constexprs, launch options, target capability and the cache entry to
fill). :func:`compile_job` runs it in the calling process, which needs the kernel as a real
``JITFunction``. Under ``TRITON_INTERPRET=1`` every ``@triton.jit`` function, including
Triton's own ``tl.cdiv`` and the lab's helpers, is an ``InterpretedFunction`` that the code
generator cannot call, so :mod:`tritonlab.static.workers` runs jobs in worker processes set up
by :mod:`tritonlab.static.worker_init`, which import Triton with the interpreter switched off;
:func:`run_job` is what a worker runs per job.

A cache entry is a directory holding the compiler's outputs, written under a temporary name
and renamed into place, so a concurrent reader sees a whole entry or none:
``kernel.{ttir,ttgir,llir,ptx,cubin,sass}`` (LLIR and SASS gzipped), ``resource_usage.txt``
(cuobjdump), ``ptxas.log`` (ptxas -v) and ``meta.json``; or ``meta.json`` with an ``error``.
Read them with :func:`read_artifact`.

This module imports Triton and not the lab's kernels: in a worker it is first imported after
:func:`~tritonlab.static.worker_init.init_worker` ran, and in the lab's own process the
package :mod:`tritonlab.static` has chosen the backend before.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
import types
import warnings
from pathlib import Path

import triton
import triton.language as tl
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

STAGES = ("ttir", "ttgir", "llir", "ptx")
ARTIFACTS = ("kernel.ttir", "kernel.ttgir", "kernel.llir", "kernel.ptx", "kernel.cubin",
             "kernel.sass", "resource_usage.txt", "ptxas.log")
# The two big listings (about 0.8 MB of LLVM IR with debug info, 0.2 MB of SASS per kernel)
# are stored gzipped: a cache of every op's configs stays small.
_GZIPPED = ("kernel.llir", "kernel.sass")


def write_artifact(entry: Path, name: str, data: bytes | str) -> None:
    raw = data.encode() if isinstance(data, str) else data
    if name in _GZIPPED:
        (entry / f"{name}.gz").write_bytes(gzip.compress(raw, compresslevel=6))
    else:
        (entry / name).write_bytes(raw)


def read_artifact(entry: Path, name: str) -> bytes:
    """One artifact of a cache entry, uncompressed."""
    if name in _GZIPPED:
        return gzip.decompress((entry / f"{name}.gz").read_bytes())
    return (entry / name).read_bytes()


def encode_constexpr(value):
    """A constexpr value as JSON (tl.dtype values become {"tl.dtype": name})."""
    if isinstance(value, tl.dtype):
        return {"tl.dtype": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"constexpr value {value!r} ({type(value).__name__}) cannot be inspected: "
                    f"use a bool, int, float, str, None or tl.dtype")


def decode_constexpr(value):
    if isinstance(value, dict) and set(value) == {"tl.dtype"}:
        return tl.dtype(value["tl.dtype"])
    return value


def tool_path(name: str) -> str:
    """Path of an NVIDIA tool shipped with Triton (cuobjdump, nvdisasm, ptxas)."""
    knob = getattr(knobs.nvidia, name.replace("-", "_"), None)
    if knob is not None:
        return knob.path
    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found next to Triton nor on PATH")
    return found


def jit_function(kernel):
    """The ``@triton.jit`` object (a JITFunction, or an InterpretedFunction under the
    interpreter) under ``triton.autotune`` / ``triton.heuristics`` wrappers: the first one
    whose ``fn`` is the Python function itself."""
    obj = kernel
    while not isinstance(getattr(obj, "fn", None), types.FunctionType):
        if not hasattr(obj, "fn"):
            raise TypeError(f"{kernel!r} is not a @triton.jit function")
        obj = obj.fn
    return obj


def _load_kernel(job: dict) -> JITFunction:
    name = f"{job['module']}.{job['function']}"
    obj = getattr(importlib.import_module(job["module"]), job["function"], None)
    with contextlib.suppress(TypeError):  # not a Triton function: reported below
        obj = jit_function(obj)
    if type(obj).__name__ == "InterpretedFunction":
        # A spawned worker runs the parent's main script before its initializer.
        raise TypeError(f"{name} was decorated for Triton's interpreter before this compile "
                        f"worker switched it off: the main script imports the kernels at its "
                        f"top; import them under `if __name__ == \"__main__\":` instead")
    if not isinstance(obj, JITFunction):
        raise TypeError(f"{name} is not a module-level @triton.jit function in this process "
                        f"(got {type(obj).__name__})")
    return obj


def _ptxas_log(ptx: str, capability: int) -> str:
    """Run ``ptxas -v`` on the PTX, for Triton versions that do not hand back their own log."""
    try:
        ptxas = get_ptxas(capability).path
    except TypeError:  # Triton versions with one ptxas for every target
        ptxas = get_ptxas().path
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run([ptxas, "-v",
                               f"--gpu-name={sm_arch_from_capability(capability)}", str(src),
                               "-o", str(Path(tmp) / "kernel.o")],
                              capture_output=True, text=True)
    return proc.stderr + proc.stdout


def error_message(exc: BaseException) -> str:
    """The exception's message followed by those of its causes: Triton reports an error in a
    called @triton.jit helper at the call site, with the real reason in ``__cause__``."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = f"{type(exc).__name__}: {exc}".strip()
        if not parts or str(exc).strip() not in parts[-1]:
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    return "\n\ncaused by:\n".join(parts)


@contextlib.contextmanager
def _knobs_set(*settings):
    """Set Triton knobs ((group, name, value), ...) for the duration of the block. Setting a
    knob also exports its environment variable, so the environment is restored too."""
    saved = [(group, name, group.__dict__.get(name, _UNSET)) for group, name, _ in settings]
    env = dict(os.environ)
    try:
        for group, name, value in settings:
            setattr(group, name, value)
        yield
    finally:
        for group, name, old in saved:
            if old is _UNSET:
                group.__dict__.pop(name, None)  # back to reading the environment
            else:
                group.__dict__[name] = old
        for k in set(os.environ) - set(env):
            del os.environ[k]
        for k, v in env.items():
            if os.environ.get(k) != v:
                os.environ[k] = v


_UNSET = object()


def compile_job(job: dict, kernel=None) -> dict:
    """Compile ``job`` and store the entry at ``job["entry"]``; returns {"key", "ok", "error"}.

    ``kernel`` is the JITFunction when the caller already has it (GPU backend); otherwise
    it is imported from ``job["module"]``. Compile errors are stored in the entry (a config
    that does not compile fails the same way next time); failures to import the kernel or to
    store the entry are raised, and nothing is stored for them.
    """
    entry = Path(job["entry"])
    if (entry / "meta.json").exists():
        return {"key": job["key"], "ok": True, "error": None}
    fn = kernel if kernel is not None else _load_kernel(job)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    meta: dict = {"key": job["key"], "triton_version": triton.__version__,
                  "capability": job["capability"], "options": job["options"], "error": None}
    start = time.perf_counter()
    try:
        names = list(fn.arg_names)
        constexprs = {(names.index(k),): decode_constexpr(v) for k, v in job["constexprs"].items()}
        attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in job["divisible"]}
        src = ASTSource(fn, dict(job["signature"]), constexprs, attrs)
        log = io.StringIO()
        # always_compile: Triton's own cache would skip ptxas, and with it the -v log that
        # holds the spill report. dump_ptxas_log makes Triton print that log.
        with _knobs_set((knobs.compilation, "always_compile", True),
                        (knobs.nvidia, "dump_ptxas_log", True)), \
                contextlib.redirect_stdout(log), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = triton.compile(src, target=GPUTarget("cuda", job["capability"], 32),
                                      options=dict(job["options"]))
    except Exception as exc:  # noqa: BLE001 - the compiler's message is the result
        meta["error"] = error_message(exc)
    meta["compile_s"] = round(time.perf_counter() - start, 3)
    try:
        if meta["error"] is None:
            _store_outputs(compiled, log.getvalue(), job["capability"], tmp, meta)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tmp.rename(entry)
    except OSError:  # another process stored the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (entry / "meta.json").exists():
            raise
    return {"key": job["key"], "ok": meta["error"] is None, "error": meta["error"]}


def _store_outputs(compiled, ptxas_log: str, capability: int, tmp: Path, meta: dict) -> None:
    """Write a compiled kernel's stages, the ptxas log and cuobjdump's reports into ``tmp``."""
    asm = compiled.asm
    for stage in STAGES:
        write_artifact(tmp, f"kernel.{stage}", str(asm[stage]))
    cubin = tmp / "kernel.cubin"
    cubin.write_bytes(asm["cubin"])
    if "Used " not in ptxas_log:
        ptxas_log = _ptxas_log(asm["ptx"], capability)
        meta["ptxas_log_rerun"] = True
    write_artifact(tmp, "ptxas.log", ptxas_log)
    cuobjdump = tool_path("cuobjdump")
    for args, name in ((["--dump-resource-usage"], "resource_usage.txt"),
                       (["-sass"], "kernel.sass")):
        out = subprocess.run([cuobjdump, *args, str(cubin)], capture_output=True,
                             text=True, check=True).stdout
        write_artifact(tmp, name, out)
    md = compiled.metadata
    meta.update(name=md.name, shared=int(md.shared), num_warps=int(md.num_warps),
                num_stages=int(md.num_stages), num_ctas=int(getattr(md, "num_ctas", 1)))


def run_job(job: dict) -> dict:
    """A worker's run of one job: :func:`compile_job`'s result, or for a failure other than
    the compiler's (which is not cached, so the next run tries again) ``{"key", "ok": False,
    "error", "transient": True}``, so that one job's failure never stops the others."""
    try:
        return compile_job(job)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which goes on
        return {"key": job["key"], "ok": False, "error": error_message(exc), "transient": True}
