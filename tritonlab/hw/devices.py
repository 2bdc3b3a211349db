"""Device peaks: a database of GPU datasheet ceilings, the present device, measured ceilings.

Three sources of a ceiling, always kept apart and labelled:

* ``spec``: the vendor's dense (no 2:4 sparsity) peak per dtype and memory bandwidth, from
  :data:`DEVICES`, matched by a substring (a regular expression searched, case-insensitive)
  of the name the driver reports. Real names carry form factor and memory size
  ("NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3"), so exact matching fails, and loose
  matching picks the wrong card ("H200" is inside "GH200", "A10" inside "A100", "L40" inside
  "L40S"): the table is ordered most specific first and the first match wins.
* ``measured``: what this device actually sustains, from :func:`measure_ceilings` (a large
  device-to-device copy, read + write bytes counted, and a large ``torch.matmul`` per dtype),
  cached per device by ``tritonlab device --measure`` so a later sweep can use it.
* for the CPU (the interpreter backend) only ``measured`` exists.

An unknown GPU has no spec; :func:`current_peaks` then measures it once (with a warning) so
its runs still get a roofline.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tritonlab.errors import UsageError

# Keys of a ceilings table. ``float32`` is the CUDA-core (FFMA) rate; ``tf32`` is the tensor
# core rate for fp32 inputs rounded to TF32; ``float16``/``bfloat16`` tensor-core rates with
# fp32 accumulation; ``fp8`` (e4m3/e5m2) tensor-core rate.
COMPUTE_KEYS = ("float32", "tf32", "bfloat16", "float16", "fp8")


@dataclass(frozen=True)
class DeviceSpec:
    """Datasheet figures of one GPU model (dense peaks; None where the model lacks the format
    or no source gives it)."""

    name: str
    patterns: tuple[str, ...]
    arch: str
    sm_count: int
    tflops: dict[str, float | None]
    bandwidth_gbps: float
    tdp_w: float | None
    l2_mb: float | None
    memory_gb: float
    source: str
    notes: str = ""

    def matches(self, device_name: str) -> bool:
        return any(re.search(p, device_name, re.IGNORECASE) for p in self.patterns)

    def ceilings(self) -> Ceilings:
        return Ceilings(source=f"spec: {self.source}", tflops=dict(self.tflops),
                        bandwidth_gbps=self.bandwidth_gbps)

    def ridge(self, key: str) -> float | None:
        """FLOP/byte where the memory roof meets the compute roof for ``key``."""
        peak = self.tflops.get(key)
        return None if peak is None else peak * 1e3 / self.bandwidth_gbps

    def to_dict(self) -> dict:
        d = asdict(self)
        d["patterns"] = list(self.patterns)
        return d


def _tf(fp32, tf32, half, fp8=None, *, fp16=None):
    """A ceilings table; ``fp16`` differs from ``half`` (the bf16 rate) only on cards without
    bf16 (V100, T4)."""
    return {"float32": fp32, "tf32": tf32, "bfloat16": half,
            "float16": half if fp16 is None else fp16, "fp8": fp8}


_A100 = "NVIDIA A100 Tensor Core GPU datasheet (2021), dense figures"
_H100 = "NVIDIA H100 Tensor Core GPU datasheet (2023), dense = half the sparse figures"
_H200 = "NVIDIA H200 Tensor Core GPU datasheet (2024), dense = half the sparse figures"
_ADA = "NVIDIA Ada Lovelace architecture whitepaper v1.1 (2023), Appendix A"
_AMPERE = "NVIDIA Ampere GA102 GPU architecture whitepaper v2.1 (2021), Appendix A"

# Order matters: most specific first, the first match wins (see the module docstring).
DEVICES: tuple[DeviceSpec, ...] = (
    DeviceSpec("GH200 144GB HBM3e", (r"GH200.*(144G|HBM3e)",), "sm_90", 132,
               _tf(67, 494.7, 989.4, 1978.9), 4900, None, 50, 144,
               "NVIDIA GH200 Grace Hopper Superchip datasheet (2024), dense figures",
               "module power 450-1000 W is shared with the Grace CPU: no GPU TDP given"),
    DeviceSpec("GH200 96GB HBM3", (r"GH200",), "sm_90", 132,
               _tf(67, 494.7, 989.4, 1978.9), 4000, None, 50, 96,
               "NVIDIA GH200 Grace Hopper Superchip datasheet (2024), dense figures",
               "module power 450-1000 W is shared with the Grace CPU: no GPU TDP given"),
    DeviceSpec("H200 NVL", (r"H200 NVL",), "sm_90", 132,
               _tf(60, 417.5, 835.5, 1670.5), 4800, 600, 50, 141, _H200),
    DeviceSpec("H200 SXM", (r"H200",), "sm_90", 132,
               _tf(67, 494.7, 989.4, 1978.9), 4800, 700, 50, 141, _H200),
    DeviceSpec("H100 NVL", (r"H100 NVL",), "sm_90", 132,
               _tf(60, 417.5, 835.5, 1670.5), 3900, 400, 50, 94, _H100,
               "TDP 350-400 W (configurable)"),
    DeviceSpec("H100 PCIe", (r"H100.*PCIe",), "sm_90", 114,
               _tf(51, 378, 756, 1513), 2000, 350, 50, 80, _H100),
    DeviceSpec("H100 SXM5", (r"H100.*HBM3", r"H100.*SXM", r"^(NVIDIA )?H100$"), "sm_90", 132,
               _tf(67, 494.7, 989.4, 1978.9), 3350, 700, 50, 80, _H100),
    DeviceSpec("A100 SXM4 80GB", (r"A100.*SXM4?.*80GB",), "sm_80", 108,
               _tf(19.5, 156, 312), 2039, 400, 40, 80, _A100),
    DeviceSpec("A100 SXM4 40GB", (r"A100.*SXM4?",), "sm_80", 108,
               _tf(19.5, 156, 312), 1555, 400, 40, 40, _A100),
    DeviceSpec("A100 PCIe 80GB", (r"A100.*80GB.*PCIe", r"A100.*PCIe.*80GB"), "sm_80", 108,
               _tf(19.5, 156, 312), 1935, 300, 40, 80, _A100),
    DeviceSpec("A100 PCIe 40GB", (r"A100.*PCIe",), "sm_80", 108,
               _tf(19.5, 156, 312), 1555, 250, 40, 40, _A100),
    DeviceSpec("A10", (r"\bA10\b",), "sm_86", 72,
               _tf(31.2, 62.5, 125), 600, 150, 6, 24,
               "NVIDIA A10 Tensor Core GPU datasheet (2021), dense figures"),
    DeviceSpec("L40S", (r"L40S",), "sm_89", 142,
               _tf(91.6, 183, 362.05, 733), 864, 350, 96, 48,
               "NVIDIA L40S datasheet (2023), dense = half the sparse figures",
               "L2: the whitepaper's full AD102 has 96 MB; some pages give 48 MB"),
    DeviceSpec("L40", (r"\bL40\b",), "sm_89", 142,
               _tf(90.5, 90.5, 181.05, 362), 864, 300, 96, 48,
               "NVIDIA L40 datasheet (2022), dense = half the sparse figures"),
    DeviceSpec("L4", (r"\bL4\b",), "sm_89", 58,
               _tf(30.3, 60, 121, 242.5), 300, 72, 48, 24,
               "NVIDIA L4 Tensor Core GPU datasheet (2023), dense = half the sparse figures"),
    DeviceSpec("RTX 6000 Ada", (r"RTX 6000 Ada",), "sm_89", 142,
               _tf(91.1, 91.1, 182.1, 364.2), 960, 300, 96, 48,
               "NVIDIA RTX 6000 Ada Generation datasheet (2022), dense = half the sparse "
               "figures"),
    DeviceSpec("RTX 4090", (r"RTX 4090",), "sm_89", 128,
               _tf(82.6, 82.6, 165.2, 330.3), 1008, 450, 72, 24, _ADA,
               "fp16/bf16/fp8 with fp32 accumulation (fp16 accumulation doubles them)"),
    DeviceSpec("RTX A6000", (r"RTX A6000",), "sm_86", 84,
               _tf(38.7, 77.4, 154.8), 768, 300, 6, 48, _AMPERE),
    DeviceSpec("RTX 3090", (r"RTX 3090",), "sm_86", 82,
               _tf(35.6, 35.6, 71), 936, 350, 6, 24, _AMPERE,
               "fp16/bf16 with fp32 accumulation (fp16 accumulation doubles them)"),
    DeviceSpec("V100 SXM2", (r"V100.*SXM",), "sm_70", 80,
               _tf(15.7, None, None, fp16=125), 900, 300, 6, 32,
               "NVIDIA Tesla V100 datasheet (2020)", "no bf16 or tf32 on Volta"),
    DeviceSpec("V100 PCIe", (r"V100",), "sm_70", 80,
               _tf(14, None, None, fp16=112), 900, 250, 6, 32,
               "NVIDIA Tesla V100 datasheet (2020)", "no bf16 or tf32 on Volta"),
    DeviceSpec("T4", (r"\bT4\b",), "sm_75", 40,
               _tf(8.1, None, None, fp16=65), 320, 70, 4, 16,
               "NVIDIA T4 Tensor Core GPU datasheet (2019)", "no bf16 or tf32 on Turing"),
)


def lookup(device_name: str) -> DeviceSpec | None:
    """The datasheet entry of a device name as the driver reports it, or None."""
    for spec in DEVICES:
        if spec.matches(device_name):
            return spec
    return None


def spec_by_name(name: str) -> DeviceSpec:
    """``tritonlab device --spec NAME``: an entry by its table name or a device name;
    UsageError naming the known ones otherwise."""
    for spec in DEVICES:
        if spec.name.lower() == name.strip().lower():
            return spec
    spec = lookup(name)
    if spec is None:
        raise UsageError(f"unknown device {name!r}; known devices: "
                         f"{', '.join(s.name for s in DEVICES)}")
    return spec


# ---------------------------------------------------------------------------------- ceilings

@dataclass(frozen=True)
class Ceilings:
    """Compute ceilings (TFLOP/s per :data:`COMPUTE_KEYS`) and memory bandwidth (GB/s, read
    + write bytes per second) of one device from one source."""

    source: str
    tflops: dict[str, float | None]
    bandwidth_gbps: float | None
    details: dict = field(default_factory=dict)

    def peak(self, key: str) -> float | None:
        return self.tflops.get(key)

    def ridge(self, key: str) -> float | None:
        peak = self.peak(key)
        if peak is None or not self.bandwidth_gbps:
            return None
        return peak * 1e3 / self.bandwidth_gbps

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Ceilings | None:
        if not d:
            return None
        return cls(source=str(d.get("source", "")), tflops=dict(d.get("tflops") or {}),
                   bandwidth_gbps=d.get("bandwidth_gbps"), details=dict(d.get("details") or {}))


@dataclass(frozen=True)
class Peaks:
    """What a roofline is drawn against: the spec ceilings and the measured ones (either may
    be None), for one device."""

    device: str
    backend: str
    spec: Ceilings | None
    measured: Ceilings | None
    spec_name: str | None = None

    def source(self, which: str) -> Ceilings | None:
        if which not in ("spec", "measured"):
            raise ValueError(f"unknown ceiling source {which!r}; use 'spec' or 'measured'")
        return self.spec if which == "spec" else self.measured

    def to_dict(self) -> dict:
        return {"device": self.device, "backend": self.backend, "spec_name": self.spec_name,
                "spec": self.spec.to_dict() if self.spec else None,
                "measured": self.measured.to_dict() if self.measured else None}

    @classmethod
    def from_dict(cls, d: dict) -> Peaks:
        return cls(device=str(d.get("device", "")), backend=str(d.get("backend", "")),
                   spec=Ceilings.from_dict(d.get("spec")),
                   measured=Ceilings.from_dict(d.get("measured")),
                   spec_name=d.get("spec_name"))


# ----------------------------------------------------------------------------- present device

def _backend_name(backend) -> str:
    if backend is None:
        from tritonlab import backend as backend_mod

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


def _nvml_facts(index: int) -> dict:
    """Driver version, power limit and maximum clocks via NVML ({} where NVML is missing;
    None for a query the device or driver does not answer)."""
    from tritonlab.measure.timing import nvml_handle

    handle = nvml_handle(index)
    if handle is None:
        return {}
    import pynvml

    def read(fn, *args):
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - a query this device or driver does not support
            return None

    driver = read(pynvml.nvmlSystemGetDriverVersion)
    limit = read(pynvml.nvmlDeviceGetEnforcedPowerLimit, handle)
    return {
        "driver": driver.decode() if isinstance(driver, bytes) else driver,
        "power_limit_w": None if limit is None else limit / 1000.0,
        "max_sm_clock_mhz": read(pynvml.nvmlDeviceGetMaxClockInfo, handle, pynvml.NVML_CLOCK_SM),
        "max_mem_clock_mhz": read(pynvml.nvmlDeviceGetMaxClockInfo, handle,
                                  pynvml.NVML_CLOCK_MEM),
    }


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
        import torch

        from tritonlab.measure.timing import gpu_clocks

        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info = {
            "name": props.name, "kind": "cuda", "index": index,
            "uuid": str(getattr(props, "uuid", "")) or None,
            "sm_count": props.multi_processor_count,
            "l2_bytes": int(getattr(props, "L2_cache_size", 0) or 0) or None,
            "memory_bytes": int(props.total_memory),
            "capability": f"{props.major}.{props.minor}",
            **_nvml_facts(index),
            "clocks_at_start": gpu_clocks(index),
        }
    else:
        import psutil
        import torch

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
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


def _copy_seconds(nbytes: int, device, sync, timer, reps: int) -> float:
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return _seconds(lambda: dst.copy_(src), sync, reps=reps, timer=timer, gpu=device == "cuda")


def _matmul_seconds(n: int, dtype, device, sync, timer, reps: int) -> float:
    import torch

    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return _seconds(lambda: torch.matmul(a, b), sync, reps=reps, timer=timer,
                    gpu=device == "cuda")


def _fp8_matmul(n: int, device):
    """A callable running an n^3 fp8 (e4m3) GEMM with bf16 output, or None where torch or the
    GPU has none (fp8 tensor cores need sm_89+)."""
    import torch

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
    import torch

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


# ---------------------------------------------------------------------------- text output

def _num(value: float | None):
    """A table cell: the number (tabulate formats it) or "-" where it is unknown."""
    return "-" if value is None else value


def spec_lines(spec: DeviceSpec) -> list[str]:
    """A datasheet entry as text lines (``tritonlab device --spec``)."""
    from tritonlab.output import fmt_num, table

    rows = [[key, _num(spec.tflops.get(key)), _num(spec.ridge(key))] for key in COMPUTE_KEYS]
    lines = [f"{spec.name} ({spec.arch}), matched by: {', '.join(spec.patterns)}",
             f"SMs {spec.sm_count} · memory {spec.memory_gb:g} GB at "
             f"{spec.bandwidth_gbps:,.0f} GB/s · L2 {fmt_num(spec.l2_mb, 'g')} MB · "
             f"TDP {fmt_num(spec.tdp_w, 'g')} W",
             table(rows, ["dtype", "dense peak TFLOP/s", "ridge FLOP/B"], floatfmt=".5g"),
             f"source: {spec.source}"]
    if spec.notes:
        lines.append(f"note: {spec.notes}")
    return lines


def _fact(key: str, value) -> str:
    if key.endswith("_bytes") and isinstance(value, int):
        unit, scale = ("MiB", 2**20) if value < 2**30 else ("GiB", 2**30)
        return f"{key.removesuffix('_bytes')} {value / scale:.4g} {unit}"
    return f"{key} {value}"


def device_lines(info: dict, peaks: Peaks | None) -> list[str]:
    """The present device and its ceilings, spec beside measured (``tritonlab device``)."""
    from tritonlab.output import table

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
        rows.append([key, _num(s), _num(m), f"{100 * m / s:.0f}%" if s and m else "-"])
    sb = spec.bandwidth_gbps if spec else None
    mb = meas.bandwidth_gbps if meas else None
    rows.append(["memory GB/s", _num(sb), _num(mb), f"{100 * mb / sb:.0f}%" if sb and mb else "-"])
    lines.append(table(rows, ["ceiling (TFLOP/s)", "spec", "measured", "measured/spec"],
                       floatfmt=".5g"))
    if meas is not None:
        lines.append(f"measured ceilings: {meas.source}")
    return lines
