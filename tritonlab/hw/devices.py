"""The present device and its measured ceilings, beside the datasheet ones.

Three sources of a ceiling, always kept apart and labelled:

* ``spec``: the datasheet entry of the device table (:mod:`tritonlab.hw.specs`) that matches
  the name the driver reports.
* ``measured``: what this device actually sustains, from :func:`measure_ceilings` (a large
  device-to-device copy, read + write bytes counted, and a large ``torch.matmul`` per dtype),
  cached per device by ``tritonlab device --measure`` so a later sweep can use it.
* for the CPU (the interpreter backend) only ``measured`` exists.

An unknown GPU has no spec; :func:`current_peaks` then measures it once (with a warning) so
its runs still get a roofline. The table's names are exported here too, so callers of the
``device`` command and the reports need one module.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch

from tritonlab import backend as backend_mod
from tritonlab.hw.nvml import device_facts, gpu_clocks
from tritonlab.hw.specs import (
    COMPUTE_KEYS,
    DEVICES,
    Ceilings,
    DeviceSpec,
    Peaks,
    lookup,
    spec_by_name,
    spec_lines,
    table_cell,
)
from tritonlab.output import table

__all__ = [
    "COMPUTE_KEYS", "DEVICES", "Ceilings", "DeviceSpec", "Peaks", "cache_path",
    "cached_ceilings", "current_peaks", "describe", "device_key", "device_lines", "lookup",
    "measure_ceilings", "peaks_for", "spec_by_name", "spec_lines", "store_ceilings",
]


def _backend_name(backend) -> str:
    if backend is None:
        return backend_mod.current().name
    return backend if isinstance(backend, str) else backend.name


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def describe(backend=None) -> dict:
    """The present device as a JSON-ready dict (what a run manifest records as ``device``).

    CUDA: name, ``kind`` "cuda", index, UUID, SM count, L2 bytes, memory bytes, compute
    capability, and from NVML the driver, power limit, maximum clocks and the current clocks
    (``clocks_at_start``). Interpreter: the host CPU (``kind`` "cpu"): name, CPUs, torch
    threads, memory, current frequency. Both: ``backend`` and ``spec_name``, the device
    table entry that matches (None for an unknown GPU or a CPU).
    """
    name = _backend_name(backend)
    if name == "cuda":
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info = {
            "name": props.name, "kind": "cuda", "index": index,
            "uuid": str(getattr(props, "uuid", "")) or None,
            "sm_count": props.multi_processor_count,
            "l2_bytes": int(getattr(props, "L2_cache_size", 0) or 0) or None,
            "memory_bytes": int(props.total_memory),
            "capability": f"{props.major}.{props.minor}",
            **device_facts(index),
            "clocks_at_start": gpu_clocks(index),
        }
    else:
        try:
            freq = psutil.cpu_freq()
        except (OSError, RuntimeError, NotImplementedError):  # no cpufreq on this platform
            freq = None
        info = {"name": _cpu_name(), "kind": "cpu", "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "memory_bytes": psutil.virtual_memory().total,
                "clocks_at_start": {"cpu_freq_mhz": float(freq.current)} if freq else None}
    spec = lookup(info["name"]) if info["kind"] == "cuda" else None
    return {**info, "backend": name, "spec_name": spec.name if spec else None}


def device_key(info: dict) -> str:
    """The cache key of a device: its UUID (one physical GPU), else its kind and name."""
    return info.get("uuid") or f"{info.get('kind', 'cpu')}:{info.get('name', '')}"


# ----------------------------------------------------------------------- measured ceilings

def cache_path() -> Path:
    """Where measured ceilings are kept: ``$TRITONLAB_CACHE_DIR`` or ``$XDG_CACHE_HOME/
    tritonlab`` or ``~/.cache/tritonlab``, file ``ceilings.json``."""
    base = os.environ.get("TRITONLAB_CACHE_DIR")
    if not base:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = str(Path(xdg) / "tritonlab")
    return Path(base) / "ceilings.json"


def _read_cache() -> dict:
    path = cache_path()
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def cached_ceilings(info: dict) -> Ceilings | None:
    """The measured ceilings cached for this device, or None."""
    entry = _read_cache().get(device_key(info))
    return Ceilings.from_dict(entry) if isinstance(entry, dict) else None


def store_ceilings(info: dict, ceilings: Ceilings) -> Path:
    """Cache ``ceilings`` for this device (atomically: a concurrent reader never sees half a
    file). Returns the cache file."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = _read_cache()
    doc[device_key(info)] = {**ceilings.to_dict(), "device": info.get("name")}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)
    return path


def _seconds(fn: Callable[[], object], sync: Callable[[], None], *, reps: int,
             timer: Callable[[Callable[[], object]], float], gpu: bool) -> float:
    """Seconds per call of ``fn``: the median of ``reps`` on a GPU (after 3 warm-up calls:
    cuBLAS heuristics, clocks ramping up), the best of ``reps`` on a CPU (after 1: first
    touch of the pages)."""
    for _ in range(3 if gpu else 1):
        fn()
    sync()
    times = [timer(fn) for _ in range(reps)]
    return statistics.median(times) if gpu else min(times)


def _wall_timer(sync: Callable[[], None]) -> Callable[[Callable[[], object]], float]:
    def timed(fn):
        start = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - start
    return timed


def _cuda_timer(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _copy_seconds(nbytes: int, device, sync, timer, reps: int) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return _seconds(lambda: dst.copy_(src), sync, reps=reps, timer=timer, gpu=device == "cuda")


def _matmul_seconds(n: int, dtype, device, sync, timer, reps: int) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return _seconds(lambda: torch.matmul(a, b), sync, reps=reps, timer=timer,
                    gpu=device == "cuda")


def _fp8_matmul(n: int, device):
    """A callable running an n^3 fp8 (e4m3) GEMM with bf16 output, or None where torch or the
    GPU has none (fp8 tensor cores need sm_89+)."""
    if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
        return None
    if torch.cuda.get_device_capability() < (8, 9):
        return None
    a = torch.randn(n, n, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(n, n, device=device).to(torch.float8_e4m3fn).t()  # column-major operand
    one = torch.ones((), device=device)
    fn = lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
    try:
        fn()
    except (RuntimeError, TypeError):
        return None
    return fn


# torch's CPU fp16 matmul is orders of magnitude slower than fp32 and bf16 (no fast kernel):
# a smaller n keeps each call near 50 ms.
_CPU_MATMUL_N = {"float32": 1024, "bfloat16": 1024, "float16": 256}


def measure_ceilings(backend=None, *, progress: Callable[[str], None] | None = None) -> Ceilings:
    """Measure the present device's memory bandwidth and matmul rate per dtype.

    GPU: a 2 GiB device-to-device copy (far beyond L2, so DRAM is measured; read + write bytes
    counted) and an 8192^3 ``torch.matmul`` per dtype on random data (random bits draw more
    power than zeros and clock lower, as real data does), fp32 with TF32 off and on, fp8 via
    ``torch._scaled_mm`` where available; CUDA events, median of 10 after 3 warm-up calls.
    CPU: a 256 MiB copy and fixed-size matmuls (:data:`_CPU_MATMUL_N`), wall clock, the best
    of 5: on a shared host, other processes only ever slow a call down, and a ceiling is what
    the machine can attain.
    """
    say = progress or (lambda _msg: None)
    name = _backend_name(backend)
    gpu = name == "cuda"
    device = "cuda" if gpu else "cpu"
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    timer = _cuda_timer if gpu else _wall_timer(sync)
    details: dict = {"timing": "CUDA events, median of 10" if gpu else "wall clock, best of 5"}

    reps = 10 if gpu else 5
    copy_bytes = 2 * 2**30 if gpu else 256 * 2**20
    say(f"copy {copy_bytes / 2**20:.0f} MiB {'device-to-device' if gpu else 'in host memory'}")
    bandwidth = 2 * copy_bytes / _copy_seconds(copy_bytes, device, sync, timer, reps) / 1e9
    details["copy_mib"] = copy_bytes / 2**20

    tflops: dict[str, float | None] = dict.fromkeys(COMPUTE_KEYS)
    sizes: dict[str, int] = {}
    cases: list[tuple[str, torch.dtype, bool]] = [
        ("float32", torch.float32, False), ("bfloat16", torch.bfloat16, False),
        ("float16", torch.float16, False)]
    if gpu:
        cases.insert(1, ("tf32", torch.float32, True))
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    try:
        for key, dtype, tf32 in cases:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            n = 8192 if gpu else _CPU_MATMUL_N[key]
            say(f"matmul {key} {n}x{n}x{n}")
            sec = _matmul_seconds(n, dtype, device, sync, timer, reps)
            tflops[key] = 2 * n**3 / sec / 1e12
            sizes[key] = n
        if gpu:
            fn = _fp8_matmul(8192, device)
            if fn is not None:
                say("matmul fp8 8192x8192x8192 (torch._scaled_mm)")
                sec = _seconds(fn, sync, reps=10, timer=timer, gpu=True)
                tflops["fp8"] = 2 * 8192**3 / sec / 1e12
                sizes["fp8"] = 8192
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
    details["matmul_n"] = sizes
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return Ceilings(source=f"measured {stamp} (copy + torch.matmul)", tflops=tflops,
                    bandwidth_gbps=bandwidth, details=details)


# --------------------------------------------------------------------------- peaks for a run

def peaks_for(info: dict, *, measured: Ceilings | None = None) -> Peaks | None:
    """Peaks of a described device: spec from the table, measured from ``measured`` or the
    cache. None when neither is known."""
    spec = lookup(info["name"]) if info.get("kind") == "cuda" else None
    meas = measured or cached_ceilings(info)
    if spec is None and meas is None:
        return None
    return Peaks(device=info["name"], backend=info.get("backend", ""),
                 spec=spec.ceilings() if spec else None, measured=meas,
                 spec_name=spec.name if spec else None)


def current_peaks(backend=None, *, measure_unknown: bool = True) -> Peaks | None:
    """Peaks of the present device for roofline annotation (what the sweep calls once).

    A known GPU gets its spec ceilings, plus measured ones if ``tritonlab device --measure``
    cached them. An unknown GPU without cached measurements is measured now (a few seconds)
    with a warning, unless ``measure_unknown`` is False. The CPU (interpreter) has no spec:
    its peaks are the cached measurements or None.
    """
    info = describe(backend)
    peaks = peaks_for(info)
    if info["kind"] == "cuda" and (peaks is None or peaks.spec is None):
        if peaks is None and measure_unknown:
            warnings.warn(f"GPU {info['name']!r} is not in the device table: measuring its "
                          f"ceilings; its roofline uses measured ceilings only", stacklevel=2)
            ceilings = measure_ceilings(backend)
            store_ceilings(info, ceilings)
            peaks = peaks_for(info, measured=ceilings)
        elif peaks is not None:
            warnings.warn(f"GPU {info['name']!r} is not in the device table: its roofline "
                          f"uses measured ceilings only", stacklevel=2)
    return peaks


def _fact(key: str, value) -> str:
    if key.endswith("_bytes") and isinstance(value, int):
        unit, scale = ("MiB", 2**20) if value < 2**30 else ("GiB", 2**30)
        return f"{key.removesuffix('_bytes')} {value / scale:.4g} {unit}"
    return f"{key} {value}"


def device_lines(info: dict, peaks: Peaks | None) -> list[str]:
    """The present device and its ceilings, spec beside measured (``tritonlab device``)."""
    skip = {"spec_name", "name", "kind", "backend", "clocks_at_start"}
    lines = [f"{info['name']} ({info['kind']}, backend {info['backend']})",
             "  " + " · ".join(_fact(k, v) for k, v in info.items()
                               if k not in skip and v is not None)]
    clocks = info.get("clocks_at_start") or {}
    if clocks:
        lines.append("  now: " + " · ".join(f"{k} {v}" for k, v in clocks.items()
                                             if v is not None))
    if info["kind"] == "cuda":
        entry = peaks.spec_name if peaks and peaks.spec_name else None
        lines.append(f"  datasheet entry: {entry or 'none (unknown GPU: measured ceilings only)'}")
    spec = peaks.spec if peaks else None
    meas = peaks.measured if peaks else None
    if spec is None and meas is None:
        lines.append("no ceilings known: run `tritonlab device --measure`")
        return lines
    rows = []
    for key in COMPUTE_KEYS:
        s = spec.peak(key) if spec else None
        m = meas.peak(key) if meas else None
        if s is None and m is None:
            continue
        rows.append([key, table_cell(s), table_cell(m), f"{100 * m / s:.0f}%" if s and m else "-"])
    sb = spec.bandwidth_gbps if spec else None
    mb = meas.bandwidth_gbps if meas else None
    rows.append(["memory GB/s", table_cell(sb), table_cell(mb),
                 f"{100 * mb / sb:.0f}%" if sb and mb else "-"])
    lines.append(table(rows, ["ceiling (TFLOP/s)", "spec", "measured", "measured/spec"],
                       floatfmt=".5g"))
    if meas is not None:
        lines.append(f"measured ceilings: {meas.source}")
    return lines
