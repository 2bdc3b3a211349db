"""NVML (nvidia-ml-py, imported as ``pynvml``): finding a GPU and reading it, for everything in
the lab that asks the driver about a device.

One lookup policy, :func:`find_device`: by UUID, then by PCI bus id, then by NVML index. CUDA
and NVML number devices differently (CUDA_VISIBLE_DEVICES renumbers CUDA's; NVML always
counts in PCI order), so a CUDA index is never taken for an NVML index: an index is used only
when the caller names one, when no identifier was given at all, or when NVML sees a single
device and there is nothing else it could be.

:class:`CudaNvml` keeps one handle per CUDA device for the life of the process and reads what
a manifest records: clocks, throttle reasons, temperature and power (:meth:`CudaNvml.clocks`,
:func:`gpu_clocks`) and the driver, power limit and maximum clocks (:meth:`CudaNvml.facts`,
:func:`device_facts`). The counter sampler (:mod:`tritonlab.hw.counters`) initialises NVML
itself with :func:`start` and :func:`find_device`. Both take the pynvml module as an argument
(default: the real one), so the tests run them against a stand-in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pynvml
import torch

# Clocks-event bits that mean the clocks were held down (pynvml nvmlClocksEventReason*).
# 0x1 idle, 0x2 application clocks, 0x10 sync boost and 0x100 display clocks are not throttling.
THROTTLE_REASONS = {0x4: "sw_power_cap", 0x8: "hw_slowdown", 0x20: "sw_thermal",
                    0x40: "hw_thermal", 0x80: "hw_power_brake"}
THROTTLE_MASK = sum(THROTTLE_REASONS)


class NvmlUnavailable(RuntimeError):
    """NVML cannot be used here: no driver, no permission, or no such device."""


def throttle_names(bits: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS.items() if bits & bit]


def text(value) -> str:
    """A string NVML returned (bytes from older nvidia-ml-py releases)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def clocks_event_reasons(nv) -> Callable | None:
    """The throttle-reason reader: nvmlDeviceGetCurrentClocksEventReasons, or the name older
    releases gave it; None where the binding has neither."""
    return (getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
            or getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None))


def nvml_uuid(uuid: str) -> str:
    """A device UUID as NVML spells it: torch prints it bare, NVML wants the ``GPU-`` (or
    ``MIG-``) prefix."""
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


@dataclass(frozen=True)
class DeviceIds:
    """What names one device to NVML; any may be None (see :func:`find_device`)."""

    uuid: str | None = None
    pci_bus_id: str | None = None
    index: int | None = None


def cuda_device_ids(device_index: int) -> DeviceIds:
    """UUID and PCI bus id of CUDA device ``device_index`` as torch reports them (no NVML
    index: the two numberings differ, see the module docstring)."""
    props = torch.cuda.get_device_properties(device_index)
    uuid = str(getattr(props, "uuid", "") or "") or None
    bus = None
    if hasattr(props, "pci_bus_id"):
        bus = (f"{getattr(props, 'pci_domain_id', 0):08x}:{props.pci_bus_id:02x}:"
               f"{getattr(props, 'pci_device_id', 0):02x}.0")
    return DeviceIds(uuid=uuid, pci_bus_id=bus)


def start(nv=None):
    """Start NVML (``nvmlInit``) through ``nv`` (default: pynvml) and return the module;
    NvmlUnavailable with the driver's words where it does not start. Each start is matched
    by one ``nvmlShutdown`` (NVML counts them)."""
    nv = pynvml if nv is None else nv
    try:
        nv.nvmlInit()
    except nv.NVMLError as exc:
        raise NvmlUnavailable(f"NVML did not start: {exc}") from exc
    return nv


def find_device(nv, ids: DeviceIds):
    """The NVML handle of the device ``ids`` names, trying in turn its UUID, its PCI bus id
    and an NVML index: ``ids.index`` when given, index 0 when nothing else was given, or the
    only device when NVML sees one. NvmlUnavailable listing every failed try otherwise."""
    tries: list[tuple[str, Callable]] = []
    if ids.uuid:
        uuid = nvml_uuid(ids.uuid)
        tries.append((f"uuid {uuid}", lambda: nv.nvmlDeviceGetHandleByUUID(uuid)))
    if ids.pci_bus_id:
        tries.append((f"PCI bus id {ids.pci_bus_id}",
                      lambda: nv.nvmlDeviceGetHandleByPciBusId(ids.pci_bus_id)))
    named = bool(tries)
    if ids.index is not None or not named:
        index = ids.index or 0
        tries.append((f"index {index}", lambda: nv.nvmlDeviceGetHandleByIndex(index)))
    failures = []
    for which, get in tries:
        try:
            return get()
        except nv.NVMLError as exc:
            failures.append(f"{which}: {exc}")
    if named and ids.index is None:
        try:
            count = nv.nvmlDeviceGetCount()
            if count == 1:
                return nv.nvmlDeviceGetHandleByIndex(0)
            failures.append(f"no index to fall back to among {count} devices")
        except nv.NVMLError as exc:
            failures.append(f"the only device: {exc}")
    raise NvmlUnavailable(f"NVML found no such device ({'; '.join(failures)})")


class CudaNvml:
    """NVML handles of CUDA devices, each looked up once (:func:`cuda_device_ids`, then
    :func:`find_device`) and kept, with NVML started once and left running for the process.
    A device NVML cannot find, and every device where NVML does not start (no driver, a
    container without NVML), has no handle, and its readings are None. ``nvml`` is the
    pynvml module and ``ids`` the way to name a CUDA device; tests pass stand-ins."""

    def __init__(self, nvml=None, *, ids: Callable[[int], DeviceIds] = cuda_device_ids):
        self.nv = pynvml if nvml is None else nvml
        self._ids = ids
        self._started: bool | None = None
        self._handles: dict[int, object] = {}

    def _start(self) -> bool:
        if self._started is None:
            try:
                start(self.nv)
                self._started = True
            except NvmlUnavailable:
                self._started = False
        return self._started

    def handle(self, device_index: int):
        """The handle of CUDA device ``device_index``, or None."""
        if device_index not in self._handles:
            handle = None
            if self._start():
                try:
                    handle = find_device(self.nv, self._ids(device_index))
                except (NvmlUnavailable, RuntimeError, AssertionError):
                    # NVML has no such device, or torch sees no such CUDA device.
                    handle = None
            self._handles[device_index] = handle
        return self._handles[device_index]

    def _reader(self, device_index: int) -> Callable | None:
        """``read(fn, *args)``: ``fn(*args)``, or None for a query the device or driver does
        not answer; None where the device has no handle."""
        if self.handle(device_index) is None:
            return None
        nv = self.nv

        def read(fn, *args):
            try:
                return fn(*args)
            except nv.NVMLError:
                return None

        return read

    def clocks(self, device_index: int) -> dict | None:
        """SM and memory clocks, throttle reasons, temperature and power of a CUDA device;
        None where it has no handle, None per field that cannot be read."""
        read = self._reader(device_index)
        if read is None:
            return None
        nv, h = self.nv, self.handle(device_index)
        reasons = clocks_event_reasons(nv)
        bits = read(reasons, h) if reasons else None
        power = read(nv.nvmlDeviceGetPowerUsage, h)
        return {
            "sm_clock_mhz": read(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
            "mem_clock_mhz": read(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_MEM),
            "throttle_reasons": bits,
            "throttle": None if bits is None else throttle_names(bits),
            "slowdown": None if bits is None else bool(bits & THROTTLE_MASK),
            "temperature_c": read(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
            "power_w": None if power is None else power / 1000.0,
        }

    def facts(self, device_index: int) -> dict:
        """Driver version, enforced power limit and maximum clocks of a CUDA device ({} where
        it has no handle; None for a query the device or driver does not answer)."""
        read = self._reader(device_index)
        if read is None:
            return {}
        nv, h = self.nv, self.handle(device_index)
        driver = read(nv.nvmlSystemGetDriverVersion)
        limit = read(nv.nvmlDeviceGetEnforcedPowerLimit, h)
        return {
            "driver": None if driver is None else text(driver),
            "power_limit_w": None if limit is None else limit / 1000.0,
            "max_sm_clock_mhz": read(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM),
            "max_mem_clock_mhz": read(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_MEM),
        }


# The process's handles: what the timers and the run manifests read.
CUDA = CudaNvml()


def gpu_clocks(device_index: int) -> dict | None:
    """:meth:`CudaNvml.clocks` of CUDA device ``device_index`` through :data:`CUDA`."""
    return CUDA.clocks(device_index)


def device_facts(device_index: int) -> dict:
    """:meth:`CudaNvml.facts` of CUDA device ``device_index`` through :data:`CUDA`."""
    return CUDA.facts(device_index)
