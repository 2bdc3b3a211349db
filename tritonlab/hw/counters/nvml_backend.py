"""GPU counters through NVML: board power (the driver's average, and the instant field where
the device has it), the total-energy counter, SM and memory clocks, GPU and memory
utilisation, memory used, temperature, enforced power limit, the clocks-event (throttle)
bitmask, and on Hopper and newer the GPM metrics (SM utilisation, SM occupancy, tensor-pipe
utilisation, DRAM bandwidth utilisation), each GPM value computed from a pair of GPM samples
at least :data:`~tritonlab.hw.counters.metrics.GPM_MIN_PAIR_S` apart."""

from __future__ import annotations

import threading
import time

from tritonlab.hw import nvml as nvml_mod
from tritonlab.hw.counters.metrics import (
    GPM_IDS,
    GPM_METRICS,
    GPM_MIN_PAIR_S,
    MIB,
    NVML_ENERGY_UPDATE_S,
    NVML_METRICS,
    CountersUnavailable,
)

# nvmlValueType_t -> the member of the c_nvmlValue_t union holding the value.
_VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal",
                  6: "usVal"}


class NvmlBackend:
    """GPU counters through NVML. ``nvml`` is the pynvml module (tests pass a stand-in).

    The device is found by :func:`tritonlab.hw.nvml.find_device` from ``uuid`` (what torch
    reports, robust to CUDA_VISIBLE_DEVICES), ``pci_bus_id`` and NVML ``index``. Each metric
    is probed once: one the device or driver does not support is recorded in ``unavailable``
    with the NVML error, and never read again.
    """

    kind = "nvml"
    energy_update_s = NVML_ENERGY_UPDATE_S

    def __init__(self, *, index: int | None = None, uuid: str | None = None,
                 pci_bus_id: str | None = None, nvml=None):
        try:
            self.nv = nv = nvml_mod.start(nvml)
        except nvml_mod.NvmlUnavailable as exc:
            raise CountersUnavailable(str(exc)) from exc
        try:
            self.handle = nvml_mod.find_device(
                nv, nvml_mod.DeviceIds(uuid=uuid, pci_bus_id=pci_bus_id, index=index))
        except nvml_mod.NvmlUnavailable as exc:
            nv.nvmlShutdown()
            raise CountersUnavailable(str(exc)) from exc
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
        reasons = nvml_mod.clocks_event_reasons(nv)

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
            "name": get(nv.nvmlDeviceGetName, h, convert=nvml_mod.text),
            "uuid": get(nv.nvmlDeviceGetUUID, h, convert=nvml_mod.text),
            "driver_version": get(nv.nvmlSystemGetDriverVersion, convert=nvml_mod.text),
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

