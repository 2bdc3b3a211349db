"""A stand-in for nvidia-ml-py's ``pynvml`` that models the behaviour the counter sampler
relies on, so the NVML backend is tested on a machine without a GPU.

What it models (from the real API and docs/reference.md, "NVML and GPM"):

- ``nvmlInit`` fails with an NVMLError when configured to (no library, no permission); every
  device call before ``nvmlInit`` fails with NVML_ERROR_UNINITIALIZED.
- NVMLError(code) returns the subclass for that code (``NVMLError_NotSupported`` ...), and
  its text is the driver's text ("Not Supported").
- The device's power is piecewise constant in time (``set_load`` changes it). The total
  energy counter (mJ since "driver load", with a large offset) is the exact integral of that
  power, but it only moves every ``energy_update_s`` (100 ms): a window shorter than that
  can read 0. ``nvmlDeviceGetPowerUsage`` is the 1 s average; the instant power is the field
  NVML_FI_DEV_POWER_INSTANT (186) of ``nvmlDeviceGetFieldValues``.
- A function listed in ``unsupported`` raises NVMLError_NotSupported; a field listed as
  ``"field:<id>"`` fails in its own ``nvmlReturn`` while the call succeeds (as the real
  nvmlDeviceGetFieldValues does).
- GPM: ``nvmlGpmQueryDeviceSupport`` says whether the device has it (Hopper+); samples taken
  by ``nvmlGpmSampleGet`` hold the integral of each activity metric; ``nvmlGpmMetricsGet`` on
  a pair gives the time-weighted mean over the pair. Stricter than the driver on purpose, a
  pair closer than 100 ms fails (NVML_ERROR_INVALID_ARGUMENT) and is logged in
  ``state.short_pairs``, so a test proves the sampler never makes one. A metric id listed in
  ``gpm_unsupported`` fails in its own ``nvmlReturn``.
"""

from __future__ import annotations

import itertools
import threading
import time
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25

_ERROR_TEXT = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH: "Argument version mismatch",
}

NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_TEMPERATURE_GPU = 0
NVML_FI_DEV_POWER_AVERAGE = 185
NVML_FI_DEV_POWER_INSTANT = 186
NVML_VALUE_TYPE_UNSIGNED_INT = 1

NVML_GPM_METRIC_SM_UTIL = 2
NVML_GPM_METRIC_SM_OCCUPANCY = 3
NVML_GPM_METRIC_ANY_TENSOR_UTIL = 5
NVML_GPM_METRIC_DRAM_BW_UTIL = 10
NVML_GPM_METRIC_MAX = 477
NVML_GPM_METRICS_GET_VERSION = 1

_GPM_STATE = {NVML_GPM_METRIC_SM_UTIL: "sm_util", NVML_GPM_METRIC_SM_OCCUPANCY: "sm_occupancy",
              NVML_GPM_METRIC_ANY_TENSOR_UTIL: "tensor_util",
              NVML_GPM_METRIC_DRAM_BW_UTIL: "dram_util"}
GPM_MIN_PAIR_S = 0.1
MIB = 1024 * 1024


class NVMLError(Exception):
    _subclasses: dict[int, type] = {}

    def __new__(cls, value):
        if cls is NVMLError:
            cls = NVMLError._subclasses.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, value):
        super().__init__(value)

    def __str__(self):
        return _ERROR_TEXT.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other):
        return isinstance(other, NVMLError) and self.value == other.value

    __hash__ = Exception.__hash__


# The subclass names pynvml derives from its NVML_ERROR_* constants.
for _code, _name in {NVML_ERROR_UNINITIALIZED: "Uninitialized",
                     NVML_ERROR_INVALID_ARGUMENT: "InvalidArgument",
                     NVML_ERROR_NOT_SUPPORTED: "NotSupported",
                     NVML_ERROR_NO_PERMISSION: "NoPermission",
                     NVML_ERROR_NOT_FOUND: "NotFound",
                     NVML_ERROR_DRIVER_NOT_LOADED: "DriverNotLoaded",
                     NVML_ERROR_LIBRARY_NOT_FOUND: "LibraryNotFound",
                     NVML_ERROR_ARGUMENT_VERSION_MISMATCH: "ArgumentVersionMismatch"}.items():
    NVMLError._subclasses[_code] = globals()[f"NVMLError_{_name}"] = type(
        f"NVMLError_{_name}", (NVMLError,), {})


class _Device:
    """Piecewise-constant state over time; integrals of any numeric state key."""

    def __init__(self, index: int, t0: float, state: dict):
        self.index = index
        self.uuid = f"GPU-{index:08d}-fake-4e1f-9c2a-{index:012d}"
        self.history: list[tuple[float, dict]] = [(t0, dict(state))]

    def state(self) -> dict:
        return self.history[-1][1]

    def integral(self, key: str, a: float, b: float) -> float:
        total = 0.0
        for (t, st), nxt in itertools.zip_longest(self.history, self.history[1:]):
            end = nxt[0] if nxt else float("inf")
            lo, hi = max(a, t), min(b, end)
            if hi > lo:
                total += st[key] * (hi - lo)
        return total


class _State:
    def __init__(self, *, init_error=None, devices=1, name="NVIDIA H100 80GB HBM3", gpm=True,
                 unsupported=(), gpm_unsupported=(), energy_update_s=0.1,
                 energy_offset_mj=987_654_321, **state):
        self.lock = threading.Lock()
        self.init_error = init_error
        self.initialized = 0
        self.name = name
        self.gpm = gpm
        self.unsupported = set(unsupported)
        self.gpm_unsupported = set(gpm_unsupported)
        self.energy_update_s = energy_update_s
        self.energy_offset_mj = energy_offset_mj
        self.t0 = time.monotonic()
        base = dict(power_w=70.0, power_limit_w=700.0, sm_clock_mhz=1980, mem_clock_mhz=2619,
                    gpu_util=0, mem_util=0, mem_used_mib=600.0, temp_c=35, throttle=0x1,
                    sm_util=0.0, sm_occupancy=0.0, tensor_util=0.0, dram_util=0.0)
        base.update(state)
        self.devices = [_Device(i, self.t0, base) for i in range(devices)]
        self.gpm_pairs: list[float] = []
        self.short_pairs: list[float] = []
        self.calls: dict[str, int] = {}


state = _State()


def reset(**config) -> _State:
    """Start over with a new device configuration (see _State for the keys)."""
    global state
    state = _State(**config)
    return state


def set_load(index: int = 0, **changes) -> None:
    """Change the device's state from now on (power_w, sm_util, temp_c, throttle ...)."""
    with state.lock:
        dev = state.devices[index]
        dev.history.append((time.monotonic(), {**dev.state(), **changes}))


def _enter(api: str, handle=None) -> _Device | None:
    with state.lock:
        state.calls[api] = state.calls.get(api, 0) + 1
    if not state.initialized:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    if api in state.unsupported:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return handle


# ------------------------------------------------------------------------- library / system

def nvmlInit():
    if state.init_error is not None:
        raise NVMLError(state.init_error)
    state.initialized += 1


def nvmlShutdown():
    if not state.initialized:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)
    state.initialized -= 1


def nvmlSystemGetDriverVersion():
    _enter("nvmlSystemGetDriverVersion")
    return "570.86.15"


def nvmlDeviceGetCount():
    _enter("nvmlDeviceGetCount")
    return len(state.devices)


def nvmlDeviceGetHandleByIndex(index):
    _enter("nvmlDeviceGetHandleByIndex")
    if not 0 <= index < len(state.devices):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    return state.devices[index]


def nvmlDeviceGetHandleByUUID(uuid):
    _enter("nvmlDeviceGetHandleByUUID")
    for dev in state.devices:
        if dev.uuid == uuid:
            return dev
    raise NVMLError(NVML_ERROR_NOT_FOUND)


def nvmlDeviceGetName(handle):
    _enter("nvmlDeviceGetName")
    return state.name


def nvmlDeviceGetUUID(handle):
    _enter("nvmlDeviceGetUUID")
    return handle.uuid


def nvmlDeviceGetCudaComputeCapability(handle):
    _enter("nvmlDeviceGetCudaComputeCapability")
    return (9, 0) if state.gpm else (8, 0)


# ---------------------------------------------------------------------------- power, energy

def _now() -> float:
    return time.monotonic()


def nvmlDeviceGetTotalEnergyConsumption(handle):
    """mJ since driver load; moves only at multiples of energy_update_s."""
    _enter("nvmlDeviceGetTotalEnergyConsumption", handle)
    with state.lock:
        upd = state.energy_update_s
        tick = state.t0 + int((_now() - state.t0) / upd) * upd
        joules = handle.integral("power_w", state.t0, tick)
    return state.energy_offset_mj + int(joules * 1e3)


def nvmlDeviceGetPowerUsage(handle):
    """mW averaged over the last second (Ampere and newer)."""
    _enter("nvmlDeviceGetPowerUsage", handle)
    with state.lock:
        now = _now()
        start = max(state.t0, now - 1.0)
        if now <= start:
            return int(handle.state()["power_w"] * 1e3)
        return int(handle.integral("power_w", start, now) / (now - start) * 1e3)


def nvmlDeviceGetEnforcedPowerLimit(handle):
    _enter("nvmlDeviceGetEnforcedPowerLimit", handle)
    return int(handle.state()["power_limit_w"] * 1e3)


def nvmlDeviceGetFieldValues(handle, fieldIds):
    _enter("nvmlDeviceGetFieldValues", handle)
    out = []
    for fid in fieldIds:
        value = SimpleNamespace(dVal=0.0, uiVal=0, ulVal=0, ullVal=0, sllVal=0, siVal=0, usVal=0)
        ret = NVML_SUCCESS
        if f"field:{fid}" in state.unsupported or fid != NVML_FI_DEV_POWER_INSTANT:
            ret = NVML_ERROR_NOT_SUPPORTED
        else:
            value.uiVal = int(handle.state()["power_w"] * 1e3)
        out.append(SimpleNamespace(fieldId=fid, scopeId=0, timestamp=int(_now() * 1e6),
                                   latencyUsec=0, valueType=NVML_VALUE_TYPE_UNSIGNED_INT,
                                   nvmlReturn=ret, value=value))
    return out


# --------------------------------------------------------------- clocks, utilisation, etc.

def nvmlDeviceGetClockInfo(handle, type):
    _enter("nvmlDeviceGetClockInfo", handle)
    return int(handle.state()["sm_clock_mhz" if type == NVML_CLOCK_SM else "mem_clock_mhz"])


def nvmlDeviceGetMaxClockInfo(handle, type):
    _enter("nvmlDeviceGetMaxClockInfo", handle)
    return 1980 if type == NVML_CLOCK_SM else 2619


def nvmlDeviceGetUtilizationRates(handle):
    _enter("nvmlDeviceGetUtilizationRates", handle)
    st = handle.state()
    return SimpleNamespace(gpu=int(st["gpu_util"]), memory=int(st["mem_util"]))


def nvmlDeviceGetMemoryInfo(handle, version=None):
    _enter("nvmlDeviceGetMemoryInfo", handle)
    used = int(handle.state()["mem_used_mib"] * MIB)
    total = 80 * 1024 * MIB
    return SimpleNamespace(total=total, used=used, free=total - used)


def nvmlDeviceGetTemperature(handle, sensor):
    _enter("nvmlDeviceGetTemperature", handle)
    return int(handle.state()["temp_c"])


def nvmlDeviceGetCurrentClocksEventReasons(handle):
    _enter("nvmlDeviceGetCurrentClocksEventReasons", handle)
    return int(handle.state()["throttle"])


nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons


# ----------------------------------------------------------------------------------- GPM

def nvmlGpmQueryDeviceSupport(device):
    _enter("nvmlGpmQueryDeviceSupport", device)
    return SimpleNamespace(version=1, isSupportedDevice=1 if state.gpm else 0)


def nvmlGpmSampleAlloc():
    _enter("nvmlGpmSampleAlloc")
    return SimpleNamespace(device=None, t=None, integrals=None, freed=False)


def nvmlGpmSampleFree(gpmSample):
    _enter("nvmlGpmSampleFree")
    gpmSample.freed = True


def nvmlGpmSampleGet(device, gpmSample):
    _enter("nvmlGpmSampleGet", device)
    if not state.gpm:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    with state.lock:
        t = _now()
        gpmSample.device, gpmSample.t = device, t
        gpmSample.integrals = {k: device.integral(k, state.t0, t) for k in _GPM_STATE.values()}
    return gpmSample


class c_nvmlGpmMetricsGet_t:
    def __init__(self):
        self.version = 0
        self.numMetrics = 0
        self.sample1 = None
        self.sample2 = None
        self.metrics = [SimpleNamespace(metricId=0, nvmlReturn=NVML_SUCCESS, value=0.0,
                                        metricInfo=None) for _ in range(NVML_GPM_METRIC_MAX)]


def nvmlGpmMetricsGet(metricsGet):
    _enter("nvmlGpmMetricsGet")
    if metricsGet.version != NVML_GPM_METRICS_GET_VERSION:
        raise NVMLError(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
    s1, s2 = metricsGet.sample1, metricsGet.sample2
    if s1 is None or s2 is None or s1.t is None or s2.t is None or s1.freed or s2.freed:
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    dt = s2.t - s1.t
    with state.lock:
        if dt < GPM_MIN_PAIR_S:
            state.short_pairs.append(dt)
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        state.gpm_pairs.append(dt)
    for i in range(metricsGet.numMetrics):
        m = metricsGet.metrics[i]
        key = _GPM_STATE.get(m.metricId)
        if key is None or m.metricId in state.gpm_unsupported:
            m.nvmlReturn, m.value = NVML_ERROR_NOT_SUPPORTED, 0.0
            continue
        m.nvmlReturn = NVML_SUCCESS
        m.value = (s2.integrals[key] - s1.integrals[key]) / dt
    return metricsGet
