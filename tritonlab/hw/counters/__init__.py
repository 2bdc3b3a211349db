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

A background thread samples the backend and marks named windows (phases); see
:mod:`~tritonlab.hw.counters.sampler` for the sampling rules and how energy is measured.

For the sweep, :func:`point_window` / :func:`point_summary` give a counter summary of one
timed point (average power, energy per call, SM clock ...), with nulls and reasons when no
GPU counters exist.

The modules: :mod:`~tritonlab.hw.counters.metrics` (what is sampled, in which unit),
:mod:`~tritonlab.hw.counters.nvml_backend`, :mod:`~tritonlab.hw.counters.cpu_backend`,
:mod:`~tritonlab.hw.counters.sampler` (the thread, phases, statistics, counters.csv,
:func:`open_sampler`) and :mod:`~tritonlab.hw.counters.point` (the sweep's per-point
summary). This package exposes what callers use.
"""

from tritonlab.hw.counters.cpu_backend import CpuBackend, RaplReader
from tritonlab.hw.counters.metrics import (
    CPU_METRICS,
    DEFAULT_INTERVAL_S,
    GPM_METRICS,
    GPM_MIN_PAIR_S,
    MIB,
    NVML_ENERGY_UPDATE_S,
    NVML_METRICS,
    POWERCAP_ROOT,
    CountersUnavailable,
    Metric,
)
from tritonlab.hw.counters.nvml_backend import NvmlBackend
from tritonlab.hw.counters.point import (
    NO_SAMPLER,
    POINT_KEYS,
    PointWindow,
    point_summary,
    point_window,
    sweep_hook,
)
from tritonlab.hw.counters.sampler import Phase, Sampler, open_sampler
from tritonlab.hw.nvml import THROTTLE_MASK, THROTTLE_REASONS, throttle_names

__all__ = [
    "CPU_METRICS", "DEFAULT_INTERVAL_S", "GPM_METRICS", "GPM_MIN_PAIR_S", "MIB",
    "NO_SAMPLER", "NVML_ENERGY_UPDATE_S", "NVML_METRICS", "POINT_KEYS", "POWERCAP_ROOT",
    "THROTTLE_MASK", "THROTTLE_REASONS", "CountersUnavailable", "CpuBackend", "Metric",
    "NvmlBackend", "Phase", "PointWindow", "RaplReader", "Sampler", "open_sampler",
    "point_summary", "point_window", "sweep_hook", "throttle_names",
]
