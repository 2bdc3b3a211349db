"""Hardware counters sampled around a workload: one :class:`Sampler`, two backends.

- :class:`NvmlBackend` (nvidia-ml-py, imported as ``pynvml``): board power (the driver's
  average, and the instant field where the device has it), the total-energy counter, SM and
  memory clocks, GPU and memory utilisation, memory used, temperature, enforced power limit,
  the clocks-event (throttle) bitmask, and on Hopper and newer the GPM metrics (SM
  utilisation, SM occupancy, tensor-pipe utilisation, DRAM bandwidth utilisation), each GPM
  value computed from a pair of GPM samples at least :data:`GPM_MIN_PAIR_S` apart.
- :class:`CpuBackend` (psutil, and the Linux powercap interface): process and system CPU
  utilisation, CPU frequency, RSS, package power and energy from RAPL where it is readable,
  and the CPU temperature where psutil sees a sensor.

A background thread samples the backend every ``interval_s`` (20 ms by default: the driver
refreshes most values no faster, REFERENCE.md "NVML"). ``with sampler.phase("train"): ...``
marks a named window; :meth:`Sampler.summarize` turns a window into statistics. Energy per
window is measured twice: by differencing the energy counter (read synchronously at the
window's edges) and by integrating the power samples; the disagreement is reported, never
hidden. A metric the device lacks is ``None`` with the reason in ``unavailable``, never 0.
The sampler times itself: :meth:`Sampler.overhead` reports the cost of each sample, the
thread's CPU time and the interval actually achieved.

For the sweep, :func:`point_window` / :func:`point_summary` give a counter summary of one
timed point (average power, energy per call, SM clock ...), with nulls and reasons when no
GPU counters exist.
"""

from __future__ import annotations

import csv
import importlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tritonlab.errors import UsageError

MIB = 1024 * 1024
DEFAULT_INTERVAL_S = 0.02
# The driver refreshes GPM counters over at least this window; a shorter pair is meaningless.
GPM_MIN_PAIR_S = 0.1
# nvmlDeviceGetTotalEnergyConsumption changes about every 100 ms.
NVML_ENERGY_UPDATE_S = 0.1
POWERCAP_ROOT = "/sys/class/powercap"


@dataclass(frozen=True)
class Metric:
    name: str  # column name in counters.csv, unit as suffix
    unit: str
    description: str


NVML_METRICS = (
    Metric("power_w", "W", "board power, nvmlDeviceGetPowerUsage (a 1 s average on Ampere and "
           "newer except GA100)"),
    Metric("power_instant_w", "W", "instant board power, field NVML_FI_DEV_POWER_INSTANT"),
    Metric("energy_j", "J", "driver total-energy counter since the sampler started (updates "
           "about every 100 ms)"),
    Metric("power_limit_w", "W", "enforced power limit"),
    Metric("sm_clock_mhz", "MHz", "SM clock"),
    Metric("mem_clock_mhz", "MHz", "memory clock"),
    Metric("gpu_util_pct", "%", "share of time any kernel ran (not how busy the SMs were)"),
    Metric("mem_util_pct", "%", "share of time device memory was read or written"),
    Metric("mem_used_mib", "MiB", "device memory used (all processes)"),
    Metric("temp_c", "C", "GPU temperature"),
    Metric("throttle_reasons", "bitmask", "nvmlDeviceGetCurrentClocksEventReasons"),
)

GPM_METRICS = (
    Metric("gpm_sm_util_pct", "%", "GPM SM_UTIL: share of SMs busy"),
    Metric("gpm_sm_occupancy_pct", "%", "GPM SM_OCCUPANCY: resident warps / maximum"),
    Metric("gpm_tensor_util_pct", "%", "GPM ANY_TENSOR_UTIL: tensor-pipe activity"),
    Metric("gpm_dram_bw_util_pct", "%", "GPM DRAM_BW_UTIL: DRAM bandwidth used / peak"),
)
# NVML_GPM_METRIC_* ids (pynvml): SM_UTIL 2, SM_OCCUPANCY 3, ANY_TENSOR_UTIL 5, DRAM_BW_UTIL 10.
GPM_IDS = {"gpm_sm_util_pct": 2, "gpm_sm_occupancy_pct": 3, "gpm_tensor_util_pct": 5,
           "gpm_dram_bw_util_pct": 10}

CPU_METRICS = (
    Metric("proc_cpu_pct", "%", "this process's CPU time, % of one core (threads add up)"),
    Metric("sys_cpu_pct", "%", "whole-system CPU utilisation, % of all cores"),
    Metric("cpu_freq_mhz", "MHz", "current CPU frequency (mean over cores)"),
    Metric("rss_mib", "MiB", "resident memory of this process"),
    Metric("power_w", "W", "CPU package power, from RAPL energy between samples"),
    Metric("energy_j", "J", "RAPL package energy since the sampler started"),
    Metric("temp_c", "C", "CPU temperature (psutil sensor)"),
)

# Clocks-event bits that mean the clocks were held down (pynvml nvmlClocksEventReason*).
# 0x1 idle, 0x2 application clocks, 0x10 sync boost and 0x100 display clocks are not throttling.
THROTTLE_REASONS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal",
                    0x40: "hw_thermal", 0x80: "hw_power_brake"}
THROTTLE_MASK = sum(THROTTLE_REASONS)


class CountersUnavailable(RuntimeError):
    """A backend cannot start here (no NVML library, no driver, no permission, no device)."""


def throttle_names(bits: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if bits & bit]


# --------------------------------------------------------------------------------- NVML

# nvmlValueType_t -> the member of the c_nvmlValue_t union holding the value.
_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal",
                  6: "usVal"}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlBackend:
    """GPU counters through NVML. ``nvml`` is the pynvml module (tests pass a stand-in).

    The device is chosen by ``uuid`` (what torch reports, robust to CUDA_VISIBLE_DEVICES),
    falling back to NVML ``index`` when given (index 0 when no uuid is given). Each metric is
    probed once: one the device or driver does not support is recorded in ``unavailable``
    with the NVML error, and never read again.
    """

    kind = "nvml"
    energy_update_s = NVML_ENERGY_UPDATE_S

    def __init__(self, *, index: int | None = None, uuid: str | None = None, nvml=None):
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise CountersUnavailable("nvidia-ml-py (pynvml) is not installed") from exc
        self.nv = nv = nvml
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise CountersUnavailable(f"NVML did not start: {exc}") from exc
        self.handle = None
        tries = []
        if uuid is not None:
            tries.append((f"uuid {uuid}", lambda: nv.nvmlDeviceGetHandleByUUID(uuid)))
        if index is not None or uuid is None:
            tries.append((f"index {index or 0}",
                          lambda: nv.nvmlDeviceGetHandleByIndex(index or 0)))
        failures = []
        for which, get in tries:
            try:
                self.handle = get()
                break
            except nv.NVMLError as exc:
                failures.append(f"{which}: {exc}")
        if self.handle is None:
            nv.nvmlShutdown()
            raise CountersUnavailable(f"NVML found no such device ({'; '.join(failures)})")
        self.metrics = NVML_METRICS + GPM_METRICS
        self.unavailable: dict[str, str] = {}
        self.errors: dict[str, int] = {}
        self._lock = threading.Lock()
        # The energy column counts from the sampler's start; probe the reader from 0 first.
        self._energy0 = 0.0
        self._groups = self._probe(self._reader_groups())
        energy0 = self.energy_counter_j()
        if energy0 is None and "energy_j" not in self.unavailable:
            # It answered the probe but not now: drop the column rather than let every later
            # read fail in the sampling thread.
            self.unavailable["energy_j"] = "the energy counter could not be read at start"
            self._groups = [g for g in self._groups if "energy_j" not in g[0]]
        self._energy0 = energy0 or 0.0
        self._gpm_setup()

    def _reader_groups(self):
        """(metric names, NVML call name, fn returning one value per name)."""
        nv, h = self.nv, self.handle
        reasons = (getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
                   or nv.nvmlDeviceGetCurrentClocksThrottleReasons)

        def util():
            u = nv.nvmlDeviceGetUtilizationRates(h)
            return float(u.gpu), float(u.memory)

        return [
            (("power_w",), "nvmlDeviceGetPowerUsage",
             lambda: (nv.nvmlDeviceGetPowerUsage(h) / 1e3,)),
            (("power_instant_w",), "nvmlDeviceGetFieldValues(NVML_FI_DEV_POWER_INSTANT)",
             lambda: (self._field(nv.NVML_FI_DEV_POWER_INSTANT) / 1e3,)),
            (("energy_j",), "nvmlDeviceGetTotalEnergyConsumption",
             lambda: (nv.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3 - self._energy0,)),
            (("power_limit_w",), "nvmlDeviceGetEnforcedPowerLimit",
             lambda: (nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1e3,)),
            (("sm_clock_mhz",), "nvmlDeviceGetClockInfo(NVML_CLOCK_SM)",
             lambda: (float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)),)),
            (("mem_clock_mhz",), "nvmlDeviceGetClockInfo(NVML_CLOCK_MEM)",
             lambda: (float(nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_MEM)),)),
            (("gpu_util_pct", "mem_util_pct"), "nvmlDeviceGetUtilizationRates", util),
            (("mem_used_mib",), "nvmlDeviceGetMemoryInfo",
             lambda: (nv.nvmlDeviceGetMemoryInfo(h).used / MIB,)),
            (("temp_c",), "nvmlDeviceGetTemperature",
             lambda: (float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)),)),
            (("throttle_reasons",), reasons.__name__, lambda: (int(reasons(h)),)),
        ]

    def _probe(self, groups):
        kept = []
        for names, api, fn in groups:
            try:
                fn()
            except self.nv.NVMLError as exc:
                for n in names:
                    self.unavailable[n] = f"{api}: {exc}"
                continue
            kept.append((names, api, fn))
        return kept

    def _field(self, field_id: int) -> float:
        """One field of nvmlDeviceGetFieldValues; a field the device lacks fails in the
        field's own nvmlReturn while the call itself succeeds, so that is checked here."""
        value = self.nv.nvmlDeviceGetFieldValues(self.handle, [field_id])[0]
        if value.nvmlReturn != self.nv.NVML_SUCCESS:
            raise self.nv.NVMLError(value.nvmlReturn)
        return float(getattr(value.value, _VALUE_MEMBERS[value.valueType]))

    def energy_counter_j(self) -> float | None:
        """The driver's cumulative energy in J, or None where the device has no counter."""
        if "energy_j" in self.unavailable:
            return None
        try:
            return self.nv.nvmlDeviceGetTotalEnergyConsumption(self.handle) / 1e3
        except self.nv.NVMLError:
            self._count_error("energy_j")
            return None

    def _count_error(self, name: str) -> None:
        with self._lock:
            self.errors[name] = self.errors.get(name, 0) + 1

    def read(self) -> dict[str, float | None]:
        row: dict[str, float | None] = {m.name: None for m in NVML_METRICS}
        for names, _api, fn in self._groups:
            try:
                values = fn()
            except self.nv.NVMLError:
                for n in names:
                    self._count_error(n)
                continue
            row.update(zip(names, values))
        return row

    # GPM: two sample buffers; each poll that is at least GPM_MIN_PAIR_S after the previous
    # one takes a new sample and computes the metrics over the pair.
    def _gpm_setup(self) -> None:
        nv = self.nv
        self._gpm_bufs = None
        self._gpm_prev_t: float | None = None
        reason = None
        try:
            supported = bool(nv.nvmlGpmQueryDeviceSupport(self.handle).isSupportedDevice)
            if not supported:
                reason = "GPM is not supported on this device (needs Hopper or newer)"
        except nv.NVMLError as exc:
            reason = f"nvmlGpmQueryDeviceSupport: {exc}"
        except AttributeError:
            reason = "this nvidia-ml-py has no GPM bindings"
        if reason is None:
            try:
                self._gpm_bufs = [nv.nvmlGpmSampleAlloc(), nv.nvmlGpmSampleAlloc()]
            except nv.NVMLError as exc:
                reason = f"nvmlGpmSampleAlloc: {exc}"
        if reason is not None:
            for m in GPM_METRICS:
                self.unavailable[m.name] = reason

    @property
    def has_gpm(self) -> bool:
        return self._gpm_bufs is not None and any(m.name not in self.unavailable
                                                  for m in GPM_METRICS)

    def gpm_poll(self, now: float) -> tuple[float, float, dict[str, float | None]] | None:
        """Called by the sampler thread with ``now`` taken before the call. Returns
        (window start, window end, metrics) when a pair completed, else None. The previous
        sample's time is taken after its call returned, so the driver's pair is never
        shorter than GPM_MIN_PAIR_S."""
        if not self.has_gpm:
            return None
        if self._gpm_prev_t is not None and now - self._gpm_prev_t < GPM_MIN_PAIR_S:
            return None
        nv = self.nv
        prev, cur = self._gpm_bufs
        try:
            nv.nvmlGpmSampleGet(self.handle, cur)
        except nv.NVMLError as exc:
            # Sampling is refused for good (permissions, MIG, driver): stop asking.
            for m in GPM_METRICS:
                self.unavailable.setdefault(m.name, f"nvmlGpmSampleGet: {exc}")
            return None
        after = time.perf_counter()
        start, self._gpm_prev_t = self._gpm_prev_t, after
        self._gpm_bufs = [cur, prev]
        if start is None:
            return None
        return start, now, self._gpm_metrics(prev, cur)

    def _gpm_metrics(self, first, second) -> dict[str, float | None]:
        nv = self.nv
        wanted = [m.name for m in GPM_METRICS if m.name not in self.unavailable]
        request = nv.c_nvmlGpmMetricsGet_t()
        request.version = nv.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(wanted)
        request.sample1 = first
        request.sample2 = second
        for i, name in enumerate(wanted):
            request.metrics[i].metricId = GPM_IDS[name]
        out: dict[str, float | None] = {m.name: None for m in GPM_METRICS}
        try:
            nv.nvmlGpmMetricsGet(request)
        except nv.NVMLError:
            self._count_error("gpm")
            return out
        for i, name in enumerate(wanted):
            metric = request.metrics[i]
            if metric.nvmlReturn != nv.NVML_SUCCESS:
                self.unavailable[name] = f"nvmlGpmMetricsGet: {nv.NVMLError(metric.nvmlReturn)}"
                continue
            out[name] = float(metric.value)
        return out

    def info(self) -> dict:
        nv, h = self.nv, self.handle

        def get(fn, *args, convert=lambda v: v):
            try:
                return convert(fn(*args))
            except nv.NVMLError:
                return None

        cap = get(nv.nvmlDeviceGetCudaComputeCapability, h)
        return {
            "counters": "nvml",
            "name": get(nv.nvmlDeviceGetName, h, convert=_text),
            "uuid": get(nv.nvmlDeviceGetUUID, h, convert=_text),
            "driver_version": get(nv.nvmlSystemGetDriverVersion, convert=_text),
            "compute_capability": f"{cap[0]}.{cap[1]}" if cap else None,
            "power_limit_w": get(nv.nvmlDeviceGetEnforcedPowerLimit, h,
                                 convert=lambda v: v / 1e3),
            "max_sm_clock_mhz": get(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM),
            "max_mem_clock_mhz": get(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_MEM),
            "gpm": self.has_gpm,
        }

    def close(self) -> None:
        if self._gpm_bufs is not None:
            for buf in self._gpm_bufs:
                try:
                    self.nv.nvmlGpmSampleFree(buf)
                except self.nv.NVMLError:
                    pass
            self._gpm_bufs = None
        self.nv.nvmlShutdown()


# ---------------------------------------------------------------------------------- CPU

class RaplReader:
    """CPU package energy from the Linux powercap interface (``intel-rapl:N`` zones named
    ``package-N``; AMD hosts expose the same), summed over packages and corrected for the
    counter wrapping at ``max_energy_range_uj``. ``reason`` says why no zone is usable."""

    def __init__(self, root: str | Path = POWERCAP_ROOT):
        self.zones: list[tuple[Path, int]] = []
        self.reason: str | None = None
        self._lock = threading.Lock()
        root = Path(root)
        if not root.is_dir():
            self.reason = f"no {root} (RAPL is not exposed on this host or container)"
            return
        unreadable = []
        for zone in sorted(root.iterdir()):
            name_file = zone / "name"
            try:
                if not name_file.read_text().strip().startswith("package"):
                    continue
                int((zone / "energy_uj").read_text())
                span = int((zone / "max_energy_range_uj").read_text())
            except PermissionError:
                unreadable.append(zone.name)
                continue
            except (OSError, ValueError):
                continue
            self.zones.append((zone / "energy_uj", span))
        if not self.zones:
            self.reason = (f"RAPL package energy under {root} is not readable by this user "
                           f"({', '.join(unreadable)}; root only since Linux 5.10)"
                           if unreadable else f"no RAPL package zone under {root}")
        self._last = [None] * len(self.zones)
        self._total_uj = 0

    def read_j(self) -> float:
        """Energy in J since the first read (monotone across counter wraps)."""
        with self._lock:
            for i, (path, span) in enumerate(self.zones):
                raw = int(path.read_text())
                last = self._last[i]
                if last is not None:
                    self._total_uj += raw - last if raw >= last else raw + span - last
                self._last[i] = raw
            return self._total_uj / 1e6


_TEMP_SENSORS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "acpitz")


class CpuBackend:
    """CPU counters: psutil for utilisation, frequency and RSS; RAPL for power and energy."""

    kind = "cpu"
    # RAPL counters update about every millisecond: no quantisation worth reporting.
    energy_update_s = 0.001

    def __init__(self, *, powercap_root: str | Path = POWERCAP_ROOT, pid: int | None = None):
        import psutil

        self.psutil = psutil
        self.proc = psutil.Process(pid)
        self.metrics = CPU_METRICS
        self.unavailable: dict[str, str] = {}
        self.errors: dict[str, int] = {}
        # cpu_percent(None) measures since its previous call: prime both counters now.
        self.proc.cpu_percent(None)
        psutil.cpu_percent(None)
        if self._cpu_freq() is None:
            self.unavailable["cpu_freq_mhz"] = "psutil.cpu_freq() reports nothing on this host"
        self._sensor = self._find_sensor()
        if self._sensor is None:
            self.unavailable["temp_c"] = "psutil sees no CPU temperature sensor on this host"
        self.rapl = RaplReader(powercap_root)
        if self.rapl.reason:
            self.unavailable["power_w"] = self.unavailable["energy_j"] = self.rapl.reason
            self._energy0 = None
        else:
            self._energy0 = self.rapl.read_j()
        self._last_energy: tuple[float, float] | None = None

    def _cpu_freq(self) -> float | None:
        try:
            freq = self.psutil.cpu_freq()
        except (OSError, RuntimeError, NotImplementedError):  # no cpufreq on this platform
            return None
        return float(freq.current) if freq else None

    def _find_sensor(self) -> str | None:
        read = getattr(self.psutil, "sensors_temperatures", None)
        temps = read() if read else {}
        for name in _TEMP_SENSORS:
            if temps.get(name):
                return name
        return None

    def energy_counter_j(self) -> float | None:
        return None if self._energy0 is None else self.rapl.read_j()

    def read(self) -> dict[str, float | None]:
        ps = self.psutil
        row: dict[str, float | None] = {
            "proc_cpu_pct": self.proc.cpu_percent(None),
            "sys_cpu_pct": ps.cpu_percent(None),
            "cpu_freq_mhz": None,
            "rss_mib": self.proc.memory_info().rss / MIB,
            "power_w": None,
            "energy_j": None,
            "temp_c": None,
        }
        if "cpu_freq_mhz" not in self.unavailable:
            row["cpu_freq_mhz"] = self._cpu_freq()
        if self._sensor is not None:
            readings = ps.sensors_temperatures().get(self._sensor) or []
            row["temp_c"] = max(r.current for r in readings) if readings else None
        if self._energy0 is not None:
            now, energy = time.perf_counter(), self.rapl.read_j()
            row["energy_j"] = energy - self._energy0
            if self._last_energy is not None:
                t_last, e_last = self._last_energy
                row["power_w"] = (energy - e_last) / (now - t_last) if now > t_last else None
            self._last_energy = (now, energy)
        return row

    def gpm_poll(self, now: float) -> None:
        return None

    def info(self) -> dict:
        return {"counters": "cpu", "logical_cpus": self.psutil.cpu_count(),
                "rapl_zones": [str(p.parent.name) for p, _ in self.rapl.zones],
                "temperature_sensor": self._sensor}

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------ sampler

@dataclass
class Phase:
    """A named window of the run (times in seconds since the sampler started)."""

    name: str
    kind: str
    start_s: float
    end_s: float | None = None
    energy_start_j: float | None = None
    energy_end_j: float | None = None
    meta: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return (self.end_s if self.end_s is not None else math.nan) - self.start_s


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "p95": float(np.percentile(arr, 95)),
            "min": float(arr.min()), "max": float(arr.max()), "first": float(arr[0]),
            "last": float(arr[-1]), "n": int(arr.size)}


class Sampler:
    """Samples ``backend`` on a background thread every ``interval_s`` seconds.

    Use as a context manager (or :meth:`start` / :meth:`stop`); mark windows with
    :meth:`phase`. ``samples`` holds one dict per sample: ``t`` (seconds since start),
    ``phase`` (the window open at that moment, or None) and one value per metric (None when
    it could not be read). GPM values appear only on the samples that complete a GPM pair;
    ``gpm_windows`` lists those pairs with their time span.
    """

    def __init__(self, backend, *, interval_s: float = DEFAULT_INTERVAL_S):
        if not interval_s > 0:
            raise UsageError(f"the sampling interval must be positive, got {interval_s} s")
        self.backend = backend
        self.interval_s = float(interval_s)
        self.samples: list[dict] = []
        self.gpm_windows: list[tuple[float, float, dict]] = []
        self.phases: list[Phase] = []
        self.origin = None
        self.origin_unix = None
        self._current: Phase | None = None
        self._costs: list[float] = []
        self._boundary_costs: list[float] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread_cpu_s = 0.0
        self._elapsed_s = 0.0

    # -- lifecycle
    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.backend.metrics]

    @property
    def unavailable(self) -> dict[str, str]:
        return dict(self.backend.unavailable)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def now(self) -> float:
        return time.perf_counter() - self.origin

    def start(self) -> Sampler:
        if self._thread is not None:
            raise RuntimeError("a Sampler starts once")
        self.origin = time.perf_counter()
        self.origin_unix = time.time()
        self._thread = threading.Thread(target=self._run, name="tritonlab-counters",
                                         daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and release the backend (once); re-raises a failure of the
        thread."""
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._elapsed_s = self.now()
        self.backend.close()
        if self._error is not None:
            raise RuntimeError(f"the counter sampler failed: {self._error!r}") from self._error

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        cpu0 = time.thread_time()
        next_t = time.perf_counter()
        try:
            while True:
                t0 = time.perf_counter()
                current = self._current
                row = {"t": t0 - self.origin, "phase": current.name if current else None}
                row.update(self.backend.read())
                pair = self.backend.gpm_poll(t0)
                if pair is not None:
                    start, end, values = pair
                    row.update(values)
                    self.gpm_windows.append((start - self.origin, end - self.origin, values))
                t1 = time.perf_counter()
                self.samples.append(row)
                self._costs.append(t1 - t0)
                next_t += self.interval_s
                if next_t <= t1:  # fell behind by a whole interval: skip, never burst
                    next_t = t1 + self.interval_s
                if self._stop.wait(next_t - t1):
                    break
        except BaseException as exc:  # surfaced by stop(); a dead thread must not go unseen
            self._error = exc
        finally:
            self._thread_cpu_s = time.thread_time() - cpu0

    # -- phases
    def _energy(self) -> float | None:
        t0 = time.perf_counter()
        value = self.backend.energy_counter_j()
        self._boundary_costs.append(time.perf_counter() - t0)
        return value

    @contextmanager
    def phase(self, name: str, kind: str | None = None, **meta) -> Iterator[Phase]:
        """Mark a window; the energy counter is read at both edges. Windows do not nest.
        On a GPU, synchronise the device before the window closes, so that its work is
        inside it."""
        if not self.running:
            raise RuntimeError("start the sampler before opening a phase")
        if self._current is not None:
            raise RuntimeError(f"phase {name!r} opened inside phase {self._current.name!r}; "
                               f"phases do not nest")
        ph = Phase(name=name, kind=kind or name, start_s=0.0, meta=dict(meta))
        ph.energy_start_j = self._energy()
        ph.start_s = self.now()
        self._current = ph
        try:
            yield ph
        finally:
            ph.end_s = self.now()
            ph.energy_end_j = self._energy()
            self._current = None
            self.phases.append(ph)

    # -- analysis
    def samples_between(self, t0: float, t1: float) -> list[dict]:
        return [s for s in list(self.samples) if t0 <= s["t"] <= t1]

    def power_metric(self) -> str | None:
        """The power series to integrate and quote: instant power where the device has it
        (the driver's average lags by up to a second), else the average."""
        names = self.metric_names
        for name in ("power_instant_w", "power_w"):
            if name in names and name not in self.backend.unavailable:
                return name
        return None

    def summarize(self, ph: Phase) -> dict:
        """Statistics of one closed phase: per metric mean / p95 / min / max / first / last,
        power, energy (counter and integral, and their disagreement), temperature change and
        time throttled. A metric without a value is None with its reason in ``unavailable``."""
        if ph.end_s is None:
            raise RuntimeError(f"phase {ph.name!r} is still open")
        t0, t1 = ph.start_s, ph.end_s
        rows = self.samples_between(t0, t1)
        unavailable = {k: v for k, v in self.backend.unavailable.items()}
        metrics: dict[str, dict | None] = {}
        gpm_names = {m.name for m in GPM_METRICS}
        for name in self.metric_names:
            if name == "throttle_reasons":  # a bitmask: summarised by _throttle, not averaged
                continue
            if name in gpm_names:
                metrics[name] = self._gpm_stats(name, t0, t1, unavailable)
                continue
            values = [r[name] for r in rows if r.get(name) is not None]
            metrics[name] = _stats(values) if values else None
            if not values and name not in unavailable:
                if rows:
                    unavailable[name] = "every read failed during this phase"
                else:
                    unavailable[name] = (f"no sample in this {t1 - t0:.3f} s phase "
                                         f"(interval {self.interval_s * 1e3:.0f} ms)")
        power = None
        pname = self.power_metric()
        if pname and metrics.get(pname):
            m = metrics[pname]
            power = {"source": pname, "mean_w": m["mean"], "p95_w": m["p95"], "max_w": m["max"]}
        return {
            "name": ph.name, "kind": ph.kind, "meta": ph.meta,
            "start_s": t0, "end_s": t1, "seconds": t1 - t0, "n_samples": len(rows),
            "metrics": metrics,
            "power": power,
            "energy": self._energy_summary(ph, rows, pname, unavailable),
            "temperature": self._temperature(metrics.get("temp_c")),
            "throttle": self._throttle(rows, t1 - t0),
            "unavailable": unavailable,
        }

    def _gpm_stats(self, name: str, t0: float, t1: float, unavailable: dict) -> dict | None:
        if name in unavailable:
            return None
        windows = [(a, b, v[name]) for a, b, v in self.gpm_windows
                   if a >= t0 and b <= t1 and v.get(name) is not None]
        if not windows:
            unavailable[name] = (f"no GPM pair (>= {GPM_MIN_PAIR_S * 1e3:.0f} ms) fits in this "
                                 f"{t1 - t0:.3f} s phase")
            return None
        weights = np.array([b - a for a, b, _ in windows])
        values = np.array([v for _, _, v in windows])
        return {"mean": float((weights * values).sum() / weights.sum()),
                "p95": float(np.percentile(values, 95)), "min": float(values.min()),
                "max": float(values.max()), "first": float(values[0]),
                "last": float(values[-1]), "n": len(windows)}

    def _energy_summary(self, ph: Phase, rows: list[dict], pname: str | None,
                        unavailable: dict) -> dict:
        seconds = ph.end_s - ph.start_s
        counter = None
        if ph.energy_start_j is not None and ph.energy_end_j is not None:
            counter = ph.energy_end_j - ph.energy_start_j
        integrated = None
        points = [(r["t"], r[pname]) for r in rows if pname and r.get(pname) is not None]
        if len(points) >= 2:
            ts = np.array([p[0] for p in points])
            ps = np.array([p[1] for p in points])
            # Trapezoids between samples, the edge values held out to the window's edges.
            integrated = float(np.sum((ps[1:] + ps[:-1]) * np.diff(ts)) / 2
                               + ps[0] * (ts[0] - ph.start_s) + ps[-1] * (ph.end_s - ts[-1]))
        elif pname:
            unavailable.setdefault("energy_integrated_j",
                                   "fewer than 2 power samples in this phase")
        disagreement = None
        if counter is not None and integrated is not None and counter > 0:
            disagreement = 100.0 * (integrated - counter) / counter
        update = self.backend.energy_update_s
        resolution = 100.0 * update / seconds if counter is not None and seconds > 0 else None
        best, source = (counter, "counter") if counter is not None else (integrated, "integrated")
        note = None
        if counter is not None and seconds < 10 * update:
            note = (f"window of {seconds:.3f} s is under 10 updates of the energy counter "
                    f"({update * 1e3:.0f} ms): the counter difference is coarse")
        return {"j": best, "source": source if best is not None else None,
                "counter_j": counter, "integrated_j": integrated,
                "integrated_from": pname if integrated is not None else None,
                "disagreement_pct": disagreement, "counter_resolution_pct": resolution,
                "note": note}

    @staticmethod
    def _temperature(stats: dict | None) -> dict | None:
        if stats is None:
            return None
        return {"start_c": stats["first"], "end_c": stats["last"], "max_c": stats["max"],
                "rise_c": stats["last"] - stats["first"],
                "max_rise_c": stats["max"] - stats["first"]}

    def _throttle(self, rows: list[dict], seconds: float) -> dict | None:
        bits = [int(r["throttle_reasons"]) for r in rows if r.get("throttle_reasons") is not None]
        if not bits:
            return None
        throttled = sum(1 for b in bits if b & THROTTLE_MASK)
        seen = 0
        for b in bits:
            seen |= b
        share = throttled / len(bits)
        return {"throttled_pct": 100.0 * share, "throttled_s": share * seconds,
                "reasons": throttle_names(seen), "bitmask_seen": seen}

    def overhead(self) -> dict:
        """What the sampler itself cost: the time of each sample (the thread holds the GIL
        for part of it), the thread's CPU time as a share of one core, the interval actually
        achieved, and the cost of the energy reads at phase edges (on the caller's thread)."""
        elapsed = self._elapsed_s or (self.now() if self.origin is not None else 0.0)
        costs = np.array(self._costs) if self._costs else np.zeros(1)
        ts = np.array([s["t"] for s in list(self.samples)])
        gaps = np.diff(ts) * 1e3 if ts.size > 1 else None
        edge = np.array(self._boundary_costs) if self._boundary_costs else None
        return {
            "interval_ms": self.interval_s * 1e3,
            "n_samples": len(self._costs),
            "elapsed_s": elapsed,
            "achieved_interval_ms": (None if gaps is None else
                                     {"median": float(np.median(gaps)),
                                      "p95": float(np.percentile(gaps, 95)),
                                      "max": float(gaps.max())}),
            "sample_cost_us": {"mean": float(costs.mean() * 1e6),
                               "p95": float(np.percentile(costs, 95) * 1e6),
                               "max": float(costs.max() * 1e6)},
            "duty_cycle_pct": 100.0 * float(np.sum(self._costs)) / elapsed if elapsed else None,
            "thread_cpu_pct": (100.0 * self._thread_cpu_s / elapsed
                               if elapsed and not self.running else None),
            "phase_edge_read_us": None if edge is None else float(edge.mean() * 1e6),
            "read_errors": dict(self.backend.errors),
        }

    def write_csv(self, path: str | Path) -> Path:
        """counters.csv: t_s, time_unix, phase, then one column per metric (empty = no
        value; the reason is in contrast.json / the summary's ``unavailable``)."""
        path = Path(path)
        names = self.metric_names
        with path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s", "time_unix", "phase", *names])
            for s in list(self.samples):
                w.writerow([f"{s['t']:.6f}", f"{self.origin_unix + s['t']:.6f}", s["phase"] or "",
                            *(_cell(s.get(n)) for n in names)])
        return path


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def open_sampler(kind: str = "auto", *, interval_s: float = DEFAULT_INTERVAL_S,
                 device_index: int | None = None, device_uuid: str | None = None,
                 nvml=None, powercap_root: str | Path = POWERCAP_ROOT,
                 warn: Callable[[str], None] | None = None) -> Sampler:
    """A (not yet started) sampler. ``kind``: ``nvml``, ``cpu``, or ``auto`` (NVML, else a
    warning through ``warn`` and the CPU backend)."""
    if kind not in ("auto", "nvml", "cpu"):
        raise UsageError(f"unknown counter backend {kind!r}; choose one of: auto, nvml, cpu")
    if kind == "cpu":
        return Sampler(CpuBackend(powercap_root=powercap_root), interval_s=interval_s)
    try:
        be = NvmlBackend(index=device_index, uuid=device_uuid, nvml=nvml)
    except CountersUnavailable as exc:
        if kind == "nvml":
            raise
        if warn is not None:
            warn(f"warning: no GPU counters ({exc}); sampling CPU counters (psutil, RAPL) "
                 f"instead")
        return Sampler(CpuBackend(powercap_root=powercap_root), interval_s=interval_s)
    return Sampler(be, interval_s=interval_s)


# --------------------------------------------------------------------- per-point summary

POINT_KEYS = ("avg_power_w", "p95_power_w", "energy_j", "energy_per_call_j", "sm_clock_mhz",
              "temp_c", "throttled_pct", "gpm_sm_util_pct", "gpm_tensor_util_pct",
              "gpm_dram_bw_util_pct")


@dataclass
class PointWindow:
    """What :func:`point_window` yields: set ``calls`` to the number of calls made inside;
    ``summary`` is filled when the window closes."""

    calls: int = 0
    summary: dict | None = None


def _point_from_phase(sampler: Sampler, s: dict, calls: int) -> dict:
    unavailable: dict[str, str] = {}
    out: dict = {"counters": sampler.kind, "calls": calls, "seconds": s["seconds"]}

    def metric(key: str, name: str, stat: str = "mean"):
        m = s["metrics"].get(name)
        out[key] = None if m is None else m[stat]
        if m is None:
            unavailable[key] = s["unavailable"].get(name, f"{sampler.kind} counters have no "
                                                          f"{name}")

    if s["power"] is not None:
        out["avg_power_w"], out["p95_power_w"] = s["power"]["mean_w"], s["power"]["p95_w"]
        out["power_source"] = s["power"]["source"]
    else:
        out["avg_power_w"] = out["p95_power_w"] = None
        reason = s["unavailable"].get("power_w", "no power samples in this window")
        unavailable["avg_power_w"] = unavailable["p95_power_w"] = reason
    energy = s["energy"]
    out["energy_j"] = energy["j"]
    out["energy_source"] = energy["source"]
    out["energy_counter_resolution_pct"] = energy["counter_resolution_pct"]
    if energy["j"] is None:
        unavailable["energy_j"] = unavailable["energy_per_call_j"] = s["unavailable"].get(
            "energy_j", "no energy counter and no power samples")
        out["energy_per_call_j"] = None
    elif calls <= 0:
        out["energy_per_call_j"] = None
        unavailable["energy_per_call_j"] = "no calls were counted in this window"
    else:
        out["energy_per_call_j"] = energy["j"] / calls
    metric("sm_clock_mhz", "sm_clock_mhz")
    metric("temp_c", "temp_c", "max")
    for name in ("gpm_sm_util_pct", "gpm_tensor_util_pct", "gpm_dram_bw_util_pct"):
        metric(name, name)
    if s["throttle"] is not None:
        out["throttled_pct"] = s["throttle"]["throttled_pct"]
    else:
        out["throttled_pct"] = None
        unavailable["throttled_pct"] = s["unavailable"].get(
            "throttle_reasons", f"{sampler.kind} counters have no throttle reasons")
    out["unavailable"] = unavailable
    return out


def _null_point(reason: str, calls: int, seconds: float | None) -> dict:
    return {"counters": None, "calls": calls, "seconds": seconds,
            **{k: None for k in POINT_KEYS}, "unavailable": {k: reason for k in POINT_KEYS}}


NO_SAMPLER = "no counter sampler (no GPU counters on this backend)"


@contextmanager
def point_window(sampler: Sampler | None, *, label: str = "point") -> Iterator[PointWindow]:
    """Counter summary of whatever runs inside (the caller sets ``.calls``). With no sampler
    the summary holds nulls with the reason. On a GPU, synchronise before the block ends."""
    pt = PointWindow()
    if sampler is None:
        t0 = time.perf_counter()
        yield pt
        pt.summary = _null_point(NO_SAMPLER, pt.calls, time.perf_counter() - t0)
        return
    with sampler.phase(label, kind="point") as ph:
        yield pt
    pt.summary = _point_from_phase(sampler, sampler.summarize(ph), pt.calls)


def point_summary(sampler: Sampler | None, fn: Callable[[], object], *,
                  min_seconds: float = 0.5, sync: Callable[[], None] | None = None,
                  label: str = "point") -> dict:
    """Call ``fn`` back to back for at least ``min_seconds`` inside a counter window and
    return {avg_power_w, p95_power_w, energy_j, energy_per_call_j, sm_clock_mhz, temp_c,
    throttled_pct, gpm_*, calls, seconds, unavailable}. ``sync`` (e.g.
    torch.cuda.synchronize) runs before the window closes. The energy counter of NVML moves
    every 100 ms, so ``min_seconds`` bounds the energy's resolution (reported as
    ``energy_counter_resolution_pct``). With no sampler nothing runs and every value is null."""
    if sampler is None:
        return _null_point(NO_SAMPLER, 0, None)
    if not min_seconds > 0:
        raise UsageError(f"min_seconds must be positive, got {min_seconds}")
    with point_window(sampler, label=label) as pt:
        deadline = time.perf_counter() + min_seconds
        while True:
            fn()
            pt.calls += 1
            if time.perf_counter() >= deadline:
                break
        if sync is not None:
            sync()
    return pt.summary


def sweep_hook(sampler: Sampler | None, *, min_seconds: float = 0.5,
               sync: Callable[[], None] | None = None, key: str = "counters"):
    """A hook for the sweep's ``POINT_HOOKS``: ``hook(op, impl, row, run)`` returns
    ``{key: point_summary(...)}`` for each timed implementation (``run`` is its built
    callable; None when it was not timed, and then the hook adds nothing). Each point then
    runs ``min_seconds`` more, inside a counter window labelled with the point."""

    def hook(op, impl, row, run):
        if run is None:
            return None
        shape = row.get("shape") or {}
        label = "/".join(str(x) for x in (row.get("op"), row.get("impl"), row.get("mode"),
                                          row.get("dtype"))) + \
            "/" + "x".join(str(v) for v in shape.values())
        return {key: point_summary(sampler, run, min_seconds=min_seconds, sync=sync,
                                   label=label)}

    return hook
