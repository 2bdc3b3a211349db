"""What the counter sampler reads: the metrics of each backend with their units, and the
constants of the drivers behind them (refresh intervals, where RAPL lives)."""

from __future__ import annotations

from dataclasses import dataclass

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


class CountersUnavailable(RuntimeError):
    """A backend cannot start here (no NVML library, no driver, no permission, no device)."""
