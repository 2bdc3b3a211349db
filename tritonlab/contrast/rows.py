"""The rows of contrast.json's ``phases``: the workload's numbers for one phase beside the
counters' summary of its window."""

from __future__ import annotations

from typing import TypedDict

import numpy as np

from tritonlab.contrast.phases import PhaseRun
from tritonlab.hw import counters as counters_mod

GPU_KEYS = ("sm_clock_mhz", "sm_clock_min_mhz", "mem_clock_mhz", "gpu_util_pct", "mem_util_pct",
            "gpm_sm_util_pct", "gpm_sm_occupancy_pct", "gpm_tensor_util_pct",
            "gpm_dram_bw_util_pct", "temp_start_c", "temp_max_c", "temp_rise_c",
            "throttled_s", "throttled_pct")
CPU_KEYS = ("proc_cpu_pct", "sys_cpu_pct", "cpu_freq_mhz", "temp_start_c", "temp_max_c",
            "temp_rise_c")


class PhaseRow(TypedDict, total=False):
    """One entry of contrast.json's ``phases``. A key a phase has no use for is absent (the
    idle baseline has no steps, the GPU keys are absent on the CPU backend); a key present
    with None has its reason in ``unavailable``. A failed phase holds only name, mode, impl,
    batch, dtype and ``error``; a skipped one (layer contrast) name, mode, impl, batch,
    dtype, point and ``skipped``. The layer contrast's measured rows also hold the keys of
    :func:`tritonlab.contrast.layer.layer_metrics`."""

    name: str
    mode: str
    impl: str | None
    batch: int | None
    # the dtype the phase ran in (an fp8 plan mixes fp8 inference with 16-bit training);
    # absent from the idle baseline
    dtype: str
    seconds: float
    n_samples: int
    # the workload's numbers (measured phases only)
    steps: int
    throughput_samples_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_mean_ms: float
    flops_per_step: int
    tflops: float
    # power and energy
    avg_power_w: float | None
    p95_power_w: float | None
    power_source: str | None
    power_limit_w: float | None
    power_share_pct: float | None
    energy_j: float | None
    energy_source: str | None
    energy_counter_j: float | None
    energy_integrated_j: float | None
    energy_disagreement_pct: float | None
    energy_counter_resolution_pct: float | None
    energy_above_idle_j: float | None
    energy_per_sample_j: float | None
    energy_per_flop_j: float | None
    # GPU counters (NVML backend)
    sm_clock_mhz: float | None
    sm_clock_min_mhz: float | None
    mem_clock_mhz: float | None
    gpu_util_pct: float | None
    mem_util_pct: float | None
    gpm_sm_util_pct: float | None
    gpm_sm_occupancy_pct: float | None
    gpm_tensor_util_pct: float | None
    gpm_dram_bw_util_pct: float | None
    throttled_s: float | None
    throttled_pct: float | None
    throttle_reasons: list[str]
    # CPU counters (CPU backend)
    proc_cpu_pct: float | None
    sys_cpu_pct: float | None
    cpu_freq_mhz: float | None
    # both
    temp_start_c: float | None
    temp_max_c: float | None
    temp_rise_c: float | None
    peak_mem_mib: float | None
    peak_mem_source: str
    note: str
    unavailable: dict[str, str]
    error: str
    # the layer contrast (tritonlab.contrast.layer.layer_metrics)
    point: dict
    skipped: str


def skipped_row(run: PhaseRun, dtype: str) -> PhaseRow:
    """The row of a phase that was not run (its footprint exceeds the card's memory)."""
    return PhaseRow(name=run.name, mode=run.mode, impl=run.impl, batch=run.batch, dtype=dtype,
                    point=run.point, skipped=run.skipped)


def error_row(run: PhaseRun, dtype: str) -> PhaseRow:
    """The row of a phase that failed before it was measured."""
    return PhaseRow(name=run.name, mode=run.mode, impl=run.impl, batch=run.batch, dtype=dtype,
                    error=run.error)


def phase_row(sampler, ph: counters_mod.Phase, run: PhaseRun | None,
              idle_power_w: float | None, dtype: str | None = None) -> PhaseRow:
    """The flat row of contrast.json for one phase: the workload's numbers (``run``; None for
    the idle baseline) beside the counters' (``sampler.summarize``), and the ``dtype`` the
    phase ran in (None: the idle baseline, which has none). Every null value has its reason
    in the row's ``unavailable``."""
    s = sampler.summarize(ph)
    why = s["unavailable"]
    row = PhaseRow(name=ph.name, mode=run.mode if run else ph.kind,
                   impl=run.impl if run else None, batch=run.batch if run else None,
                   seconds=s["seconds"], n_samples=s["n_samples"])
    if dtype is not None:
        row["dtype"] = dtype
    unavailable: dict[str, str] = {}

    def put(key: str, value, reason: str | None = None) -> None:
        """Store a value, or None with the reason in ``unavailable``."""
        row[key] = value
        if value is None:
            unavailable[key] = reason or "not measured"

    def metric(name: str, stat: str = "mean"):
        """A sampled metric's statistic over the window, or None when it was not sampled."""
        m = s["metrics"].get(name)
        return None if m is None else m[stat]

    if run is not None:
        steps = len(run.latencies_s)
        lat_ms = np.asarray(run.latencies_s) * 1e3
        row["steps"] = steps
        row["throughput_samples_s"] = steps * run.batch / s["seconds"]
        row["latency_p50_ms"] = float(np.percentile(lat_ms, 50))
        row["latency_p99_ms"] = float(np.percentile(lat_ms, 99))
        row["latency_mean_ms"] = float(lat_ms.mean())
        row["flops_per_step"] = run.flops_per_step
        row["tflops"] = steps * run.flops_per_step / s["seconds"] / 1e12
    power = s["power"]
    no_power = why.get("power_w") or why.get("power_instant_w") or "no power samples"
    put("avg_power_w", power and power["mean_w"], no_power)
    put("p95_power_w", power and power["p95_w"], no_power)
    row["power_source"] = power and power["source"]
    limit = metric("power_limit_w")
    put("power_limit_w", limit,
        why.get("power_limit_w", f"no power limit on the {sampler.kind} backend"))
    put("power_share_pct", 100.0 * power["mean_w"] / limit if power and limit else None,
        "needs both power and the power limit")
    energy = s["energy"]
    no_energy = why.get("energy_j", "no energy counter and no power samples")
    put("energy_j", energy["j"], no_energy)
    row["energy_source"] = energy["source"]
    put("energy_counter_j", energy["counter_j"], why.get("energy_j", "no counter reading"))
    put("energy_integrated_j", energy["integrated_j"],
        why.get("energy_integrated_j", no_power))
    put("energy_disagreement_pct", energy["disagreement_pct"],
        "needs both the counter and integrated power")
    put("energy_counter_resolution_pct", energy["counter_resolution_pct"],
        why.get("energy_j", "no counter reading"))
    if energy["j"] is not None and idle_power_w is not None:
        row["energy_above_idle_j"] = energy["j"] - idle_power_w * s["seconds"]
    elif ph.kind != "idle":
        put("energy_above_idle_j", None, "no idle power (no idle baseline, or no power reading)")
    if run is not None:
        samples, flops = len(run.latencies_s) * run.batch, len(run.latencies_s) * run.flops_per_step
        put("energy_per_sample_j", energy["j"] / samples if energy["j"] is not None else None,
            no_energy)
        put("energy_per_flop_j",
            energy["j"] / flops if energy["j"] is not None and flops else None, no_energy)
    temp = s["temperature"]
    keys = GPU_KEYS if sampler.kind == "nvml" else CPU_KEYS
    no_temp = why.get("temp_c", "no temperature reading")
    values = {
        "sm_clock_mhz": metric("sm_clock_mhz"), "sm_clock_min_mhz": metric("sm_clock_mhz", "min"),
        "mem_clock_mhz": metric("mem_clock_mhz"), "gpu_util_pct": metric("gpu_util_pct"),
        "mem_util_pct": metric("mem_util_pct"),
        "temp_start_c": temp and temp["start_c"], "temp_max_c": temp and temp["max_c"],
        "temp_rise_c": temp and temp["max_rise_c"],
        "throttled_s": s["throttle"] and s["throttle"]["throttled_s"],
        "throttled_pct": s["throttle"] and s["throttle"]["throttled_pct"],
        "proc_cpu_pct": metric("proc_cpu_pct"), "sys_cpu_pct": metric("sys_cpu_pct"),
        "cpu_freq_mhz": metric("cpu_freq_mhz"),
    }
    for m in counters_mod.GPM_METRICS:
        values[m.name] = metric(m.name)
    reasons = {"temp_start_c": no_temp, "temp_max_c": no_temp, "temp_rise_c": no_temp,
               "sm_clock_min_mhz": why.get("sm_clock_mhz"),
               "throttled_s": why.get("throttle_reasons", "no throttle samples"),
               "throttled_pct": why.get("throttle_reasons", "no throttle samples")}
    for key in keys:
        put(key, values[key], reasons.get(key) or why.get(key))
    if s["throttle"] is not None:
        row["throttle_reasons"] = s["throttle"]["reasons"]
    if run is not None and run.peak_mem_bytes is not None:
        row["peak_mem_mib"] = run.peak_mem_bytes / counters_mod.MIB
        row["peak_mem_source"] = "torch.cuda.max_memory_allocated"
    elif sampler.kind == "cpu":
        put("peak_mem_mib", metric("rss_mib", "max"), why.get("rss_mib"))
        row["peak_mem_source"] = "process RSS, max over samples"
    elif run is not None:
        put("peak_mem_mib", None, "the workload did not run on a CUDA device")
    if energy["note"]:
        row["note"] = energy["note"]
    row["unavailable"] = unavailable  # last, after the values it explains
    return row
