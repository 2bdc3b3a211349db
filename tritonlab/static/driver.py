"""Static inspection: what each kernel compiles to on a given GPU architecture, without a GPU.

Triton compiles for any NVIDIA target on any machine (``triton.compile`` with a
``GPUTarget``), and its wheel ships ptxas and cuobjdump. For every kernel an op declares
(:class:`CompileTarget`, returned by ``OpSpec.compile_targets(dtype)``) and every launch config
it would use on an architecture (its autotune list, or one given), this module compiles the
kernel and reports what a kernel engineer reads before timing it:

* registers per thread (cuobjdump ``--dump-resource-usage`` on the cubin), spill stores and
  loads and the stack frame (the ``ptxas -v`` log of the same compile), local memory;
* shared memory: the cubin's static part plus the dynamic part Triton requests at launch;
* threads per block (the PTX ``.reqntid``) and the theoretical occupancy on that
  architecture from :data:`ARCHS` (see :func:`occupancy`);
* an instruction mix from the SASS (:func:`tritonlab.static.sass.instruction_mix`).

Compiled results are cached (see :func:`cache_dir`), keyed by the kernel's source files, the
target, the specialised signature, the config and the Triton version; the report is derived
from the cached compiler outputs each time, so a cached entry never holds stale analysis.
:func:`static_facts` gives the sweep the same numbers for one Triton point.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import inspect as pyinspect
import json
import math
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tritonlab.errors import UsageError
from tritonlab.kernels.tuning import CompileTarget, config_dict
from tritonlab.ops.contract import OpSpec, dtype_name
from tritonlab.static import sass as inspect_sass

# ------------------------------------------------------------------ per-architecture limits


@dataclass(frozen=True)
class ArchLimits:
    """The per-SM and per-block limits that bound occupancy on one compute capability.

    Values from the CUDA C++ Programming Guide, "Technical Specifications per Compute
    Capability", and the allocation rules of the CUDA occupancy calculator
    (``cuda_occupancy.h``): registers are allocated per warp in units of
    ``reg_alloc_unit`` registers, in each of ``sub_partitions`` register-file partitions;
    shared memory per block is rounded up to ``smem_alloc_unit`` bytes after adding the
    ``smem_reserved_per_block`` bytes the driver keeps for each block.
    """

    name: str
    capability: tuple[int, int]
    gpus: str
    regs_per_sm: int = 65536
    max_regs_per_block: int = 65536
    max_regs_per_thread: int = 255
    reg_alloc_unit: int = 256
    sub_partitions: int = 4
    smem_per_sm: int = 167936
    smem_per_block_optin: int = 166912
    smem_reserved_per_block: int = 1024
    smem_alloc_unit: int = 128
    max_threads_per_sm: int = 2048
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    max_threads_per_block: int = 1024

    @property
    def cc(self) -> int:
        """The capability as Triton's ``GPUTarget`` takes it (80, 90, ...)."""
        return self.capability[0] * 10 + self.capability[1]


_KB = 1024
ARCHS: dict[str, ArchLimits] = {
    a.name: a for a in (
        ArchLimits("sm_80", (8, 0), "A100", smem_per_sm=164 * _KB,
                   smem_per_block_optin=163 * _KB),
        ArchLimits("sm_86", (8, 6), "RTX 30xx, A10, A40", smem_per_sm=100 * _KB,
                   smem_per_block_optin=99 * _KB, max_threads_per_sm=1536,
                   max_warps_per_sm=48, max_blocks_per_sm=16),
        ArchLimits("sm_89", (8, 9), "L4, L40S, RTX 40xx", smem_per_sm=100 * _KB,
                   smem_per_block_optin=99 * _KB, max_threads_per_sm=1536,
                   max_warps_per_sm=48, max_blocks_per_sm=24),
        ArchLimits("sm_90a", (9, 0), "H100, H200", smem_per_sm=228 * _KB,
                   smem_per_block_optin=227 * _KB),
        ArchLimits("sm_100a", (10, 0), "B200", smem_per_sm=228 * _KB,
                   smem_per_block_optin=227 * _KB),
    )
}
# Triton always compiles capability 9.0 and 10.0 for the architecture-specific targets
# (wgmma and tcgen05 exist only there).
ARCH_ALIASES = {"sm_90": "sm_90a", "sm_100": "sm_100a"}


def parse_arch(name: str | tuple[int, int]) -> ArchLimits:
    """``"sm_90a"`` (or an alias such as ``"sm_90"``, or a capability tuple like ``(9, 0)``)
    -> its limits; UsageError naming the supported architectures otherwise."""
    if isinstance(name, tuple):
        for a in ARCHS.values():
            if a.capability == tuple(name):
                return a
        key = f"sm_{name[0]}{name[1]}"
    else:
        key = ARCH_ALIASES.get(name.strip().lower(), name.strip().lower())
        if key in ARCHS:
            return ARCHS[key]
    raise UsageError(f"unsupported architecture {key!r}; supported: {', '.join(ARCHS)} "
                     f"(aliases: {', '.join(f'{k}={v}' for k, v in ARCH_ALIASES.items())})")


def default_archs() -> list[ArchLimits]:
    """The GPU's own architecture on the cuda backend, else sm_90a (the lab's H100/H200)."""
    from tritonlab import backend

    if backend.current().is_gpu:
        try:
            return [parse_arch(tuple(torch.cuda.get_device_capability()))]
        except UsageError:
            pass
    return [ARCHS["sm_90a"]]


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def occupancy(arch: ArchLimits, registers: int, threads: int, smem_bytes: int) -> dict:
    """Theoretical occupancy of a kernel on ``arch`` (the CUDA occupancy calculator's rules).

    ``registers`` per thread, ``threads`` per block, ``smem_bytes`` of shared memory per
    block (static + dynamic). Returns the blocks that fit on one SM under each limit
    (``limits``: registers, shared_memory, warps, blocks), the binding one(s) (``limiter``),
    ``blocks_per_sm``, ``warps_per_sm``, ``occupancy`` (active warps / the SM's maximum) and
    ``fits`` with ``reason`` when the kernel cannot launch at all.
    """
    warps = max(1, math.ceil(threads / 32))
    reasons = []
    if threads > arch.max_threads_per_block:
        reasons.append(f"{threads} threads per block > {arch.max_threads_per_block}")
    if registers > arch.max_regs_per_thread:
        reasons.append(f"{registers} registers per thread > {arch.max_regs_per_thread}")
    if smem_bytes > arch.smem_per_block_optin:
        reasons.append(f"{smem_bytes} bytes of shared memory per block > "
                       f"{arch.smem_per_block_optin} on {arch.name}")

    regs_per_warp = _round_up(registers * 32, arch.reg_alloc_unit)
    # The hardware checks a block's registers as if its warps filled every partition.
    regs_checked = regs_per_warp * _round_up(warps, arch.sub_partitions)
    if regs_per_warp == 0:
        by_regs = arch.max_blocks_per_sm
    elif regs_checked > arch.max_regs_per_block or registers > arch.max_regs_per_thread:
        by_regs = 0
        if regs_checked > arch.max_regs_per_block:
            reasons.append(f"{regs_checked} registers per block > {arch.max_regs_per_block}")
    else:
        warps_per_partition = (arch.regs_per_sm // arch.sub_partitions) // regs_per_warp
        by_regs = warps_per_partition * arch.sub_partitions // warps

    smem_alloc = _round_up(smem_bytes + arch.smem_reserved_per_block, arch.smem_alloc_unit)
    by_smem = 0 if smem_bytes > arch.smem_per_block_optin else arch.smem_per_sm // smem_alloc
    limits = {"registers": by_regs, "shared_memory": by_smem,
              "warps": arch.max_warps_per_sm // warps, "blocks": arch.max_blocks_per_sm}
    blocks = 0 if reasons else min(limits.values())
    return {
        "blocks_per_sm": blocks,
        "warps_per_sm": blocks * warps,
        "occupancy": blocks * warps / arch.max_warps_per_sm,
        "limiter": [k for k, v in limits.items() if v == blocks] if not reasons else [],
        "limits": limits,
        "fits": not reasons,
        "reason": "; ".join(reasons) or None,
    }


# --------------------------------------------------------------------------- compile targets

OPTION_KEYS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
_TORCH_TO_TRITON = {
    torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
    torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64",
    torch.uint8: "u8", torch.bool: "i1",
    torch.float8_e4m3fn: "fp8e4nv", torch.float8_e5m2: "fp8e5",
}


def _unwrap(kernel):
    """The @triton.jit function under triton.autotune / triton.heuristics wrappers."""
    from triton.runtime.jit import JITFunction

    obj = kernel
    while not isinstance(obj, JITFunction) and type(obj).__name__ != "InterpretedFunction":
        if not hasattr(obj, "fn"):
            raise TypeError(f"{kernel!r} is not a @triton.jit function")
        obj = obj.fn
    return obj


def _kernel_params(kernel) -> list[tuple[str, bool, object]]:
    """(name, is_constexpr, default or inspect.Parameter.empty) for each kernel argument."""
    fn = _unwrap(kernel).fn
    out = []
    for p in pyinspect.signature(fn).parameters.values():
        ann = p.annotation
        is_const = ann is not pyinspect.Parameter.empty and "constexpr" in (
            ann if isinstance(ann, str) else getattr(ann, "__name__", repr(ann)))
        out.append((p.name, is_const, p.default))
    return out


def _no_specialize(kernel) -> tuple[set[str], set[str]]:
    """Arguments the kernel asks the JIT not to specialise (at all / on alignment)."""
    jit = _unwrap(kernel)
    names = [p for p, _, _ in _kernel_params(kernel)]
    kwargs = getattr(jit, "kwargs", None) or {}

    def names_of(attr):
        raw = getattr(jit, attr, None) or kwargs.get(attr) or ()
        return {names[x] if isinstance(x, int) else x for x in raw}

    return names_of("do_not_specialize"), names_of("do_not_specialize_on_alignment")


def _scalar_type(value, specialize: bool, align: bool) -> tuple[str, bool]:
    """(Triton type or "constexpr", divisible by 16) of a scalar launch argument, by the rules
    of Triton's JIT: 1 and None become constants, ints divisible by 16 are marked so."""
    if value is None:
        return "constexpr", False
    if isinstance(value, bool):
        return "u1", False
    if isinstance(value, int):
        if specialize and value == 1:
            return "constexpr", False
        if -(2**31) <= value < 2**31:
            ty = "i32"
        elif 2**63 <= value < 2**64:
            ty = "u64"
        else:
            ty = "i64"
        return ty, specialize and align and value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"cannot infer a Triton type for {value!r}")


def target_configs(target: CompileTarget, arch: ArchLimits) -> list[dict]:
    """The target's launch configs for ``arch``, as flat dicts."""
    configs = target.configs(arch.capability) if callable(target.configs) else target.configs
    return [config_dict(c) for c in configs]

def target_params(target: CompileTarget) -> list[str]:
    """The names of the target kernel's arguments, in order."""
    return [p for p, _, _ in _kernel_params(target.kernel)]

def specialise(target: CompileTarget, config: Mapping) -> dict:
    """The signature, constexprs, divisible arguments and compile options of a launch
    with ``config``; ValueError when an argument has no value."""
    params = _kernel_params(target.kernel)
    known = {p for p, _, _ in params}
    unknown = sorted((set(target.values) | set(config)) - known - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"{target.kernel_name} has no argument(s) {', '.join(unknown)}; "
                         f"its arguments: {', '.join(p for p, _, _ in params)}")
    args = {**target.values, **{k: v for k, v in config.items() if k not in OPTION_KEYS}}
    for name, rule in target.heuristics.items():
        args[name] = rule(args)
    no_spec, no_align = _no_specialize(target.kernel)
    signature, constexprs, divisible, missing = {}, {}, [], []
    for name, is_const, default in params:
        value = args.get(name, default)
        if value is pyinspect.Parameter.empty:
            if name.endswith("_ptr"):
                value = target.dtype
            else:
                missing.append(name)
                continue
        if is_const:
            signature[name] = "constexpr"
            constexprs[name] = value
        elif isinstance(value, torch.dtype):
            signature[name] = "*" + _TORCH_TO_TRITON[value]
            if name not in no_spec and name not in no_align:
                divisible.append(name)
        else:
            ty, div = _scalar_type(value, name not in no_spec, name not in no_align)
            signature[name] = ty
            if ty == "constexpr":
                constexprs[name] = value
            if div:
                divisible.append(name)
    if missing:
        raise ValueError(f"{target.kernel_name}: no value for argument(s) "
                         f"{', '.join(missing)} (give them in CompileTarget.values or "
                         f"the config)")
    options = {k: config[k] for k in OPTION_KEYS if k in config}
    return {"signature": signature, "constexprs": constexprs, "divisible": divisible,
            "options": options}




def op_targets(op: OpSpec, dtype: torch.dtype) -> list[CompileTarget]:
    """The op's compile targets for ``dtype`` (empty when it declares none)."""
    if op.compile_targets is None:
        return []
    targets = list(op.compile_targets(dtype))
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"{op.name}: compile target names repeat: {names}")
    return targets


# ------------------------------------------------------------------------------ user configs

def _parse_value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def parse_config(text: str) -> dict:
    """``"BLOCK_M=128,BLOCK_N=128,BLOCK_K=64,num_warps=8,num_stages=3"`` -> a dict.

    Values are ints, floats, true/false, none, or else strings. Keys left out are taken from
    the kernel's first (default) config for the architecture.
    """
    out = {}
    for part in (p for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"malformed config {text!r}: expected KEY=VALUE[,KEY=VALUE...], "
                             f"e.g. BLOCK_M=128,BLOCK_N=128,BLOCK_K=64,num_warps=8,num_stages=3")
        out[key.strip()] = _parse_value(value)
    if not out:
        raise UsageError(f"empty config {text!r}")
    return out


def check_config_keys(config: Mapping, targets: Iterable[CompileTarget]) -> None:
    """UsageError when a key of a user config is an argument of none of ``targets``."""
    targets = list(targets)
    valid = set(OPTION_KEYS)
    for t in targets:
        valid |= {p for p, is_const, _ in _kernel_params(t.kernel) if is_const}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise UsageError(f"config key(s) {', '.join(unknown)} match no kernel argument; valid "
                         f"keys: {', '.join(sorted(valid))}")


def _applies(config: Mapping, target: CompileTarget) -> bool:
    names = set(target_params(target))
    return all(k in names for k in config if k not in OPTION_KEYS)


# ------------------------------------------------------------------------------------ cache

ENTRY_FORMAT = 2  # bump when inspect_compile stores something different


def cache_dir() -> Path:
    """Where compiled results live: ``$TRITONLAB_CACHE_DIR/inspect``, else
    ``$XDG_CACHE_HOME/tritonlab/inspect``, else ``~/.cache/tritonlab/inspect``."""
    root = os.environ.get("TRITONLAB_CACHE_DIR")
    if root:
        return Path(root) / "inspect"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "tritonlab" / "inspect"


def _is_jit(value) -> bool:
    return type(value).__name__ in ("JITFunction", "InterpretedFunction")


def _source_digest(kernel) -> str:
    """Hash of what the kernel's code depends on: its source, and recursively the source of
    every @triton.jit helper and the value of every global constant it names (directly or as
    ``module.name``), as Triton's own cache key does. Triton's own functions are covered by
    the Triton version in the cache key; editing a launcher or another kernel of the same
    module invalidates nothing."""
    import ast
    import textwrap

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

    visit(_unwrap(kernel).fn)
    return h.hexdigest()


_MISSING = object()


def _triton_env() -> dict:
    """Triton's cache-invalidating environment (ptxas path, and so on), where it says so."""
    try:
        from triton.compiler.compiler import get_cache_invalidating_env_vars
    except ImportError:
        return {}
    return dict(get_cache_invalidating_env_vars())


@dataclass
class _Job:
    op: str
    target: CompileTarget
    arch: ArchLimits
    dtype: torch.dtype
    config: dict
    config_index: int | None  # position in the arch's list; None for a user config
    spec: dict | None  # CompileTarget.specialise(config), None when that failed
    error: str | None
    key: str = ""

    def payload(self, root: Path) -> dict:
        fn = _unwrap(self.target.kernel).fn
        from tritonlab.static.compile import encode_constexpr

        return {"key": self.key, "module": fn.__module__, "function": fn.__name__,
                "signature": self.spec["signature"],
                "constexprs": {k: encode_constexpr(v)
                               for k, v in self.spec["constexprs"].items()},
                "divisible": self.spec["divisible"], "options": self.spec["options"],
                "capability": self.arch.cc, "entry": str(root / self.key[:2] / self.key)}


def _make_job(op: str, target: CompileTarget, arch: ArchLimits, dtype: torch.dtype,
              config: dict, index: int | None, digests: dict) -> _Job:
    import triton

    from tritonlab.static.compile import encode_constexpr

    try:
        spec = specialise(target, config)
        constexprs = {k: encode_constexpr(v) for k, v in spec["constexprs"].items()}
    except (ValueError, TypeError, KeyError) as exc:
        return _Job(op, target, arch, dtype, config, index, None,
                    f"{type(exc).__name__}: {exc}")
    fn = _unwrap(target.kernel).fn
    try:
        importable = _unwrap(getattr(sys.modules[fn.__module__], fn.__name__)).fn is fn
    except (KeyError, AttributeError, TypeError):
        importable = False
    if not importable:
        return _Job(op, target, arch, dtype, config, index, None,
                    f"{fn.__module__}.{fn.__name__} is not a module-level name of its module; "
                    f"compile workers cannot import it")
    if fn not in digests:
        digests[fn] = _source_digest(target.kernel)
    ident = {"format": ENTRY_FORMAT, "triton": triton.__version__, "env": _triton_env(),
             "source": digests[fn], "module": fn.__module__,
             "function": fn.__name__, "capability": arch.cc,
             "signature": spec["signature"], "constexprs": constexprs,
             "divisible": sorted(spec["divisible"]), "options": spec["options"]}
    job = _Job(op, target, arch, dtype, config, index, spec, None)
    job.key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    return job


# ----------------------------------------------------------------------------- compilation

Progress = Callable[[int, int, str], None]


def _label(job: _Job) -> str:
    return f"{job.op}/{job.target.name} {job.arch.name} {format_config(job.config)}"


def _in_process_ok(jobs: Sequence[_Job]) -> bool:
    from triton.runtime.jit import JITFunction

    return all(isinstance(_unwrap(j.target.kernel), JITFunction) for j in jobs)


def _worker_env() -> dict:
    env = dict(os.environ)
    # The worker must import Triton with the interpreter off and pick its own backend.
    env.pop("TRITON_INTERPRET", None)
    env.pop("TRITONLAB_BACKEND", None)
    pkg_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    return env


@dataclass
class _Worker:
    proc: subprocess.Popen
    stderr_tail: list[str]
    inflight: set[str] = field(default_factory=set)
    closed: bool = False
    readers: list[threading.Thread] = field(default_factory=list)

    def finish(self) -> None:
        """Reap the process once its output has ended, and close its pipes."""
        self.proc.wait()
        for t in self.readers:
            t.join(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                pipe.close()
            except OSError:  # stdin of a worker that died with input still buffered
                pass
        self.closed = True


def _start_worker(index: int, events: queue.Queue) -> _Worker:
    proc = subprocess.Popen([sys.executable, "-m", "tritonlab.static.compile"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_worker_env())
    worker = _Worker(proc, [])

    def pump_out():
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and "key" in msg:
                events.put((index, msg))
            elif line.strip():  # something an imported module printed
                worker.stderr_tail.append(line)
        events.put((index, None))

    def pump_err():
        for line in proc.stderr:
            worker.stderr_tail.append(line)
            del worker.stderr_tail[:-40]

    worker.readers = [threading.Thread(target=t, daemon=True) for t in (pump_out, pump_err)]
    for t in worker.readers:
        t.start()
    return worker


def _run_workers(jobs: Sequence[_Job], root: Path, progress: Progress | None) -> dict[str, str]:
    """Compile ``jobs`` in worker processes (one per core, at most 8), handing out one job at
    a time as each worker finishes (compile times differ threefold between kernels). Returns
    key -> error for jobs that failed other than in the compiler (a worker that died)."""
    n = max(1, min(len(jobs), os.cpu_count() or 1, 8))
    by_key = {j.key: j for j in jobs}
    backlog = collections.deque(jobs)
    events: queue.Queue = queue.Queue()
    workers = [_start_worker(i, events) for i in range(n)]
    failed: dict[str, str] = {}

    def feed(worker: _Worker) -> None:
        if worker.closed:
            return
        if not backlog:
            worker.proc.stdin.close()
            worker.closed = True
            return
        job = backlog.popleft()
        worker.inflight.add(job.key)
        try:
            worker.proc.stdin.write(json.dumps(job.payload(root)) + "\n")
            worker.proc.stdin.flush()
        except OSError:  # the worker died; its end-of-output event reports the job
            worker.closed = True

    for w in workers:
        feed(w)
    done, alive = 0, n
    while alive:
        index, msg = events.get()
        worker = workers[index]
        if msg is None:  # the worker's output ended: it finished or died
            alive -= 1
            worker.finish()
            for key in worker.inflight:
                failed[key] = (f"compile worker exited with status {worker.proc.returncode}: "
                               f"{''.join(worker.stderr_tail[-10:]).strip()}")
            if not alive:
                for job in backlog:
                    failed[job.key] = "every compile worker exited before this job"
            continue
        worker.inflight.discard(msg["key"])
        done += 1
        if msg.get("transient"):
            failed[msg["key"]] = msg["error"]
        if progress:
            progress(done, len(jobs), _label(by_key[msg["key"]]))
        feed(worker)
    return failed


def _compile(jobs: Sequence[_Job], root: Path, progress: Progress | None,
             rebuild: bool) -> tuple[dict[str, str], int, int]:
    """Make sure every job with a spec has a cache entry; returns (key -> failure message
    for entries that could not be made, number compiled now, number found in the cache)."""
    todo: dict[str, _Job] = {}
    hits: set[str] = set()
    for j in jobs:
        if j.spec is None or j.key in todo or j.key in hits:
            continue
        entry = root / j.key[:2] / j.key
        if rebuild and entry.exists():
            shutil.rmtree(entry)
        if (entry / "meta.json").exists():
            hits.add(j.key)
        else:
            todo[j.key] = j
    misses = list(todo.values())
    if not misses:
        return {}, 0, len(hits)
    if len(misses) == 1 and _in_process_ok(misses):
        from tritonlab.static.compile import compile_job

        job = misses[0]
        compile_job(job.payload(root), kernel=_unwrap(job.target.kernel))
        if progress:
            progress(1, 1, _label(job))
        return {}, 1, len(hits)
    return _run_workers(misses, root, progress), len(misses), len(hits)


# -------------------------------------------------------------------------------- analysis

def format_config(config: Mapping) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items())


def config_slug(config: Mapping) -> str:
    """A config as a directory name: ``BLOCK_M128-BLOCK_N256-...-w8-s3``."""
    short = {"num_warps": "w", "num_stages": "s", "num_ctas": "ctas", "maxnreg": "maxnreg"}
    return "-".join(f"{short.get(k, k)}{v}" for k, v in config.items())


def _analyse(entry: Path, arch: ArchLimits) -> dict:
    """The report of one compiled kernel, from the cache entry's compiler outputs."""
    from tritonlab.static.compile import read_artifact

    meta = json.loads((entry / "meta.json").read_text())
    if meta.get("error"):
        return {"status": "error", "error": meta["error"]}
    name = meta["name"]

    def text(artifact):
        return read_artifact(entry, artifact).decode()

    usage = inspect_sass.parse_resource_usage(text("resource_usage.txt"))
    if name not in usage:
        raise RuntimeError(f"cuobjdump reports no function {name!r} in {entry}")
    res = usage[name]
    ptxas = inspect_sass.parse_ptxas_log(text("ptxas.log")) or {}
    sass = text("kernel.sass")
    threads = inspect_sass.ptx_threads(text("kernel.ptx")) or meta["num_warps"] * 32
    smem_static, smem_dynamic = res.get("SHARED", 0), meta["shared"]
    opcodes = inspect_sass.sass_opcodes(sass)
    return {
        "status": "ok", "error": None,
        "kernel": name,
        "cubin_arch": inspect_sass.sass_arch(sass),
        "registers": res["REG"],
        "spill_stores": ptxas.get("spill_stores"),
        "spill_loads": ptxas.get("spill_loads"),
        "stack_bytes": res.get("STACK", 0),
        "local_bytes": res.get("LOCAL", 0),
        "smem_static": smem_static,
        "smem_dynamic": smem_dynamic,
        "smem_bytes": smem_static + smem_dynamic,
        "threads": threads,
        "num_warps": meta["num_warps"],
        "num_stages": meta["num_stages"],
        "occupancy": occupancy(arch, res["REG"], threads, smem_static + smem_dynamic),
        "instructions": inspect_sass.instruction_mix(opcodes),
        "opcodes": dict(sorted(opcodes.items())),
        "compile_s": meta.get("compile_s"),
        "triton_version": meta.get("triton_version"),
    }


def _row(job: _Job, root: Path, failures: Mapping[str, str]) -> dict:
    row = {"op": job.op, "target": job.target.name, "kernel": job.target.kernel_name,
           "arch": job.arch.name, "dtype": dtype_name(job.dtype), "config": job.config,
           "config_index": job.config_index, "key": job.key or None}
    if job.spec is None:
        return {**row, "status": "error", "error": job.error}
    if job.key in failures:
        return {**row, "status": "error", "error": failures[job.key]}
    entry = root / job.key[:2] / job.key
    return {**row, **_analyse(entry, job.arch), "entry": str(entry)}


def dump_row(row: Mapping, out_dir: Path) -> list[Path]:
    """Copy one kernel's TTIR, TTGIR, LLIR, PTX, SASS (and cubin, ptxas log, resource usage)
    to ``out_dir/<op>/<target>/<arch>/<config>/``; returns the files written."""
    src = Path(row["entry"])
    dest = (out_dir / row["op"] / row["target"] / row["arch"] / row["dtype"]
            / config_slug(row["config"]))
    dest.mkdir(parents=True, exist_ok=True)
    from tritonlab.static.compile import ARTIFACTS, read_artifact

    written = []
    for name in ARTIFACTS:
        (dest / name).write_bytes(read_artifact(src, name))
        written.append(dest / name)
    return written


# ------------------------------------------------------------------------------ public API

@dataclass
class Report:
    """What :func:`run` found: one row per (op, target, arch, dtype, config)."""

    rows: list[dict]
    skipped: list[dict]
    compiled: int  # distinct kernels/configs compiled by this call
    cached: int  # distinct kernels/configs found in the cache
    seconds: float
    archs: list[str]
    dtypes: list[str]

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] != "ok"]

    def to_dict(self) -> dict:
        import triton

        return {"triton_version": triton.__version__, "archs": self.archs,
                "dtypes": self.dtypes, "passed": not self.failed,
                "compiled": self.compiled, "cached": self.cached,
                "seconds": round(self.seconds, 3), "cache_dir": str(cache_dir()),
                "skipped": self.skipped, "kernels": self.rows}


def inspectable(op: OpSpec) -> str | None:
    """None when ``op`` has kernels to inspect, else why not."""
    if not op.triton_impls:
        return f"op {op.name!r} has no Triton implementation"
    if op.compile_targets is None:
        return (f"op {op.name!r} declares no compile_targets (see docs/inspect.md, "
                f"'how to make your kernel inspectable')")
    return None


def run(ops: Sequence[OpSpec], archs: Sequence[ArchLimits], dtypes: Sequence[torch.dtype],
        configs: Sequence[Mapping] | None = None, *, first: int | None = None,
        dump: Path | None = None, rebuild: bool = False,
        progress: Progress | None = None) -> Report:
    """Compile every target of ``ops`` for each arch and dtype, with each config of its list
    (``first``: only the first N) or with each of ``configs`` (merged onto the target's
    default config; a target that lacks one of a config's keys is skipped for it).

    Ops that cannot be inspected are listed in ``skipped``. A config that does not compile
    gives a row with ``status: "error"`` and the compiler's message. ``dump`` copies each
    kernel's compiler outputs there.
    """
    start = time.perf_counter()
    root = cache_dir()
    jobs: list[_Job] = []
    skipped: list[dict] = []
    digests: dict[str, str] = {}
    for op in ops:
        why = inspectable(op)
        if why:
            skipped.append({"op": op.name, "reason": why})
            continue
        for dtype in dtypes:
            if dtype not in op.dtypes:
                skipped.append({"op": op.name, "dtype": dtype_name(dtype),
                                "reason": f"{op.name} does not support {dtype_name(dtype)}"})
                continue
            for target in op_targets(op, dtype):
                for arch in archs:
                    listed = target_configs(target, arch)
                    if configs:
                        chosen = [({**listed[0], **c} if listed else dict(c), None)
                                  for c in configs if _applies(c, target)]
                    else:
                        chosen = [(c, i) for i, c in enumerate(listed)][:first]
                    for config, index in chosen:
                        jobs.append(_make_job(op.name, target, arch, dtype, config, index,
                                              digests))
    failures, compiled, cached = _compile(jobs, root, progress, rebuild)
    rows = [_row(j, root, failures) for j in jobs]
    if dump is not None:
        for r in rows:
            if r["status"] == "ok":
                dump_row(r, Path(dump))
    return Report(rows, skipped, compiled, cached, time.perf_counter() - start,
                  [a.name for a in archs], [dtype_name(d) for d in dtypes])


_FACT_KEYS = ("kernel", "registers", "spill_stores", "spill_loads", "local_bytes",
              "smem_bytes", "threads")


def _facts(row: Mapping) -> dict:
    if row["status"] != "ok":
        return {"target": row["target"], "error": row["error"]}
    occ = row["occupancy"]
    return {"target": row["target"], **{k: row[k] for k in _FACT_KEYS},
            "blocks_per_sm": occ["blocks_per_sm"], "occupancy": occ["occupancy"],
            "occupancy_limiter": occ["limiter"],
            "tensor_core": row["instructions"]["tensor_core"],
            "tensor_core_total": row["instructions"]["tensor_core_total"], "error": None}


def static_facts(op: OpSpec | str, impl: str | None, config: Mapping | None,
                 dtype: torch.dtype, arch: str | tuple[int, int],
                 values: Mapping | None = None) -> dict:
    """Static facts of the kernel(s) behind one Triton point, for the sweep's results rows.

    ``op``: the OpSpec or its name; ``impl``: the Triton impl's name (targets declared for
    other impls are left out); ``config``: the launch config the impl reported (flat dict as
    ``Impl.config()`` returns it, keys no kernel takes, such as ``path``, are ignored; the
    targets are those taking its keys, preferring those whose configs have exactly these
    keys; None: every target with its default for ``arch``); ``arch``:
    ``"sm_90a"`` or a capability tuple such as ``torch.cuda.get_device_capability()``;
    ``values``: launch arguments that override the targets' typical ones (e.g. the point's
    M, N, K). Uses the compile cache.

    Returns ``{"arch", "config", "kernels": [facts per matching target], **facts of the
    first}`` where facts are kernel, registers, spill_stores, spill_loads (bytes),
    local_bytes, smem_bytes, threads, blocks_per_sm, occupancy, occupancy_limiter,
    tensor_core (opcode -> static count), tensor_core_total and error (None, or why that
    kernel could not be compiled). Never raises for a kernel that does not compile; returns
    ``{"error": ...}`` when no target of the op matches.
    """
    from tritonlab.ops import registry

    spec = registry.discover()[op] if isinstance(op, str) else op
    try:
        limits = parse_arch(arch)
    except UsageError as exc:
        return {"arch": str(arch), "error": str(exc), "kernels": []}
    why = inspectable(spec)
    if why:
        return {"arch": limits.name, "error": why, "kernels": []}
    if impl is not None and impl not in [i.name for i in spec.triton_impls]:
        return {"arch": limits.name, "kernels": [],
                "error": f"{impl!r} is not a Triton impl of {spec.name}"}
    candidates = [t for t in op_targets(spec, dtype)
                  if t.impls is None or impl is None or impl in t.impls]
    # Keys that describe the launch rather than configure a kernel ("path", "split_k") are
    # dropped; a target is one that takes every remaining key, and when several do, those
    # whose own configs have exactly these keys (a tiled GEMM's GROUP_M tells it apart from
    # a split-K kernel with the same tile names).
    taken = set(OPTION_KEYS).union(*(target_params(t) for t in candidates))
    cfg = {k: v for k, v in (config or {}).items() if k in taken}
    targets = [t for t in candidates if _applies(cfg, t)]
    tunables = {k for k in cfg if k not in OPTION_KEYS}
    exact = [t for t in targets if any({k for k in c if k not in OPTION_KEYS} == tunables
                                       for c in target_configs(t, limits))]
    targets = exact if tunables and exact else targets
    if not targets:
        return {"arch": limits.name, "kernels": [],
                "error": f"no compile target of {spec.name} (impl {impl}) takes config "
                         f"{format_config(config or {})}"}
    jobs, digests = [], {}
    for t in targets:
        if values:
            names = set(target_params(t))
            t = dataclasses.replace(t, values={**t.values, **{k: v for k, v in values.items()
                                                              if k in names}})
        listed = target_configs(t, limits)
        merged = {**(listed[0] if listed else {}), **cfg}
        jobs.append(_make_job(spec.name, t, limits, dtype, merged, None, digests))
    root = cache_dir()
    failures, _, _ = _compile(jobs, root, None, False)
    facts = [_facts(_row(j, root, failures)) for j in jobs]
    return {"arch": limits.name, "config": jobs[0].config, **facts[0], "kernels": facts}


# ---------------------------------------------------------------------------------- tables

def short_config(config: Mapping) -> str:
    """``BLOCK_M=128,...,num_warps=8`` -> ``BM128 BN256 BK64 GM8 w8 s3`` for tables."""
    def short(key):
        if key in ("num_warps", "num_stages", "num_ctas"):
            return {"num_warps": "w", "num_stages": "s", "num_ctas": "ctas"}[key]
        return "".join(part[:1] for part in key.split("_")) if "_" in key else key
    return " ".join(f"{short(k)}{v}" for k, v in config.items())


def _counts(d: Mapping, sep: str = ":") -> str:
    return " ".join(f"{k}{sep}{v}" for k, v in d.items()) or "-"


TABLE_HEADERS = ["op/target", "arch", "dtype", "config", "regs", "spill st/ld", "smem KB",
                 "thr", "blk/SM", "occ", "limiter", "tensor core", "LDG bits", "STG bits",
                 "async", "shared", "bar"]


def table_rows(report: Report) -> list[list]:
    """One human-readable row per kernel and config (errors show the message's last line)."""
    rows = []
    for r in report.rows:
        head = [f"{r['op']}/{r['target']}", r["arch"], r["dtype"], short_config(r["config"])]
        if r["status"] != "ok":
            last = [line for line in r["error"].splitlines() if line.strip()][-1:]
            rows.append(head + ["ERROR: " + (last[0][:100] if last else "")]
                        + [""] * (len(TABLE_HEADERS) - len(head) - 1))
            continue
        occ, mix = r["occupancy"], r["instructions"]
        rows.append(head + [
            r["registers"], f"{r['spill_stores']}/{r['spill_loads']}",
            f"{r['smem_bytes'] / 1024:.1f}", r["threads"],
            occ["blocks_per_sm"] if occ["fits"] else "does not fit",
            f"{occ['occupancy']:.1%}", ",".join(occ["limiter"]) or occ["reason"],
            _counts(mix["tensor_core"], " x") if mix["tensor_core"] else "none",
            _counts(mix["global_load_bits"]), _counts(mix["global_store_bits"]),
            _counts(mix["async_copy"]),
            _counts(mix["shared"]), _counts(mix["barrier"])])
    return rows
