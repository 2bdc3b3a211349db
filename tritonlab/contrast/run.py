"""Training vs inference on one model: which pushes the hardware harder, and on which resource
(``tritonlab contrast``).

The feed-forward block of :mod:`tritonlab.workloads.model` runs as training
(``TrainingWorkload``: forward, loss, backward, optimizer step, on the lab's linear kernels)
and as inference (``InferenceWorkload``: the fused inference MLP block), with each
implementation (``triton``: the lab's kernels; ``torch``: the baseline), at several batch
sizes (tokens per step), from real time (1) to throughput (thousands). The run is

    idle baseline, then for each mode, batch and impl: warm-up, measured phase, cool-down

while :mod:`tritonlab.hw.counters` samples the device. A measured phase runs steps back
to back for a fixed duration; each step is synchronised, so its latency is what a caller
waits for. Per phase: throughput, latency p50/p99, FLOP/s, energy per sample and per FLOP,
average and p95 power and its share of the power limit, clocks, utilisation, GPM metrics,
peak memory, temperature rise and time throttled. :func:`verdict` then compares the modes
resource by resource from those numbers (the rule is in its docstring); on the CPU backend it
is about the CPU counters that exist, and says so.

Outputs (DESIGN.md "Run directory"): manifest.json, counters.csv, contrast.json, and a
timeline (timeline.png) and Chrome/Perfetto trace (trace.json) of the counters.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from tritonlab import backend as backend_mod
from tritonlab.errors import UsageError
from tritonlab.hw import counters as counters_mod
from tritonlab.ops.contract import DTYPES
from tritonlab.output import dumps, fmt_num, table

MODES = ("train", "infer")
IMPLS = ("triton", "torch")
# Ten updates of the NVML energy counter (100 ms each): the counter difference over a phase
# is then within about 10% whatever the phase's alignment with the updates.
MIN_PHASE_S = 1.0
# Warm-up steps at least: on a GPU the first step compiles and autotunes every kernel and the
# second shows it is done; the interpreter compiles nothing.
MIN_WARMUP_STEPS = {"cuda": 2, "interpreter": 1}

DEFAULTS = {
    # A GPU gets batches from one token (decode) to a large prefill-sized batch; the
    # interpreter (about 1 ms per Triton program) keeps to the tiny model and two batches.
    "cuda": dict(batches=(1, 16, 256, 4096), duration_s=10.0, model_size="base",
                 dtype="bfloat16", warmup_s=2.0, idle_s=5.0, cooldown_s=3.0),
    "interpreter": dict(batches=(1, 64), duration_s=2.0, model_size="tiny",
                        dtype="float32", warmup_s=0.2, idle_s=1.0, cooldown_s=0.2),
}
INTERPRETER_SIZES = ("tiny", "small")

WorkloadFactory = Callable[..., object]


@dataclass(frozen=True)
class Plan:
    batches: tuple[int, ...]
    duration_s: float
    model_size: str
    impls: tuple[str, ...]
    modes: tuple[str, ...]
    dtype: str
    warmup_s: float
    idle_s: float
    cooldown_s: float
    interval_ms: float
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(backend_name: str, *, batches: Sequence[int] | None = None,
              duration_s: float | None = None, model_size: str | None = None,
              impls: Sequence[str] = IMPLS, modes: Sequence[str] = MODES,
              dtype: str | None = None, warmup_s: float | None = None,
              idle_s: float | None = None, cooldown_s: float | None = None,
              interval_ms: float = 1e3 * counters_mod.DEFAULT_INTERVAL_S,
              seed: int = 0) -> tuple[Plan, list[str]]:
    """Validate the options (UsageError naming the valid choices) and fill the backend's
    defaults. Returns the plan and warnings (a duration lengthened to the minimum)."""
    from tritonlab.workloads.model import SIZES

    d = DEFAULTS["cuda" if backend_name == "cuda" else "interpreter"]
    warnings: list[str] = []
    batches = tuple(dict.fromkeys(batches)) if batches else d["batches"]
    bad = [b for b in batches if not isinstance(b, int) or isinstance(b, bool) or b <= 0]
    if bad:
        raise UsageError(f"batch sizes must be positive integers (tokens per step); got "
                         f"{', '.join(map(str, bad))}")
    duration_s = d["duration_s"] if duration_s is None else float(duration_s)
    if not duration_s > 0:
        raise UsageError(f"--duration must be positive, got {duration_s} s (minimum "
                         f"{MIN_PHASE_S} s per phase)")
    if duration_s < MIN_PHASE_S:
        warnings.append(f"a {duration_s} s phase is too short for the energy counter (it "
                        f"moves every {counters_mod.NVML_ENERGY_UPDATE_S * 1e3:.0f} ms); "
                        f"lengthened to the minimum of {MIN_PHASE_S} s")
        duration_s = MIN_PHASE_S
    model_size = model_size or d["model_size"]
    if model_size not in SIZES:
        raise UsageError(f"unknown model size {model_size!r}; valid sizes: {', '.join(SIZES)}")
    if backend_name != "cuda" and model_size not in INTERPRETER_SIZES:
        raise UsageError(f"model size {model_size!r} needs a GPU; under the interpreter use "
                         f"one of: {', '.join(INTERPRETER_SIZES)}")
    impls = tuple(dict.fromkeys(impls)) or IMPLS
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        raise UsageError(f"unknown impl {', '.join(map(repr, unknown))}; valid impls: "
                         f"{', '.join(IMPLS)}")
    modes = tuple(dict.fromkeys(modes)) or MODES
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise UsageError(f"unknown mode {', '.join(map(repr, unknown))}; valid modes: "
                         f"{', '.join(MODES)}")
    dtype = dtype or d["dtype"]
    if dtype not in DTYPES:
        raise UsageError(f"unsupported dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    if backend_name != "cuda" and dtype == "bfloat16":
        raise UsageError("bfloat16 is wrong under the Triton interpreter (its bf16 dot returns "
                         "garbage); use float32 or float16, or run on a GPU")
    timing = {}
    for name, value in (("warmup", warmup_s), ("idle", idle_s), ("cooldown", cooldown_s)):
        value = d[f"{name}_s"] if value is None else float(value)
        if value < 0:
            raise UsageError(f"--{name} must be >= 0 seconds, got {value}")
        timing[name] = value
    if 0 < timing["idle"] < MIN_PHASE_S:
        warnings.append(f"an idle baseline of {timing['idle']} s is too short for the energy "
                        f"counter; lengthened to {MIN_PHASE_S} s")
        timing["idle"] = MIN_PHASE_S
    if not interval_ms > 0:
        raise UsageError(f"--interval-ms must be positive, got {interval_ms}")
    plan = Plan(batches=batches, duration_s=duration_s, model_size=model_size, impls=impls,
                modes=modes, dtype=dtype, warmup_s=timing["warmup"], idle_s=timing["idle"],
                cooldown_s=timing["cooldown"], interval_ms=float(interval_ms), seed=seed)
    return plan, warnings


def lab_workloads(mode: str, cfg, *, impl: str, dtype, device, seed: int):
    """The lab's workloads: TrainingWorkload for ``train``, InferenceWorkload for ``infer``."""
    if mode == "train":
        from tritonlab.workloads.train import TrainingWorkload

        return TrainingWorkload(cfg, impl=impl, dtype=dtype, device=device, seed=seed)
    from tritonlab.workloads.infer import InferenceWorkload

    return InferenceWorkload(cfg, impl=impl, dtype=dtype, device=device, seed=seed)


# ------------------------------------------------------------------------------- measuring

@dataclass
class PhaseRun:
    """What the workload side of one measured phase recorded."""

    name: str
    mode: str
    impl: str | None
    batch: int | None
    phase: counters_mod.Phase | None = None
    latencies_s: list[float] = field(default_factory=list)
    flops_per_step: int | None = None
    peak_mem_bytes: int | None = None
    error: str | None = None


def _sleep_phase(sampler, name: str, kind: str, seconds: float) -> counters_mod.Phase | None:
    if seconds <= 0:
        return None
    with sampler.phase(name, kind=kind) as ph:
        time.sleep(seconds)
    return ph


def _build_step(factory: WorkloadFactory, mode: str, cfg, *, impl: str, batch: int,
                data_seed: int, seed: int, dtype, device) -> tuple[Callable[[], object], int]:
    """One step of the workload on a fixed batch (data loading is not what is measured),
    and its FLOPs."""
    workload = factory(mode, cfg, impl=impl, dtype=dtype, device=device, seed=seed)
    data = workload.make_batch(batch, data_seed)
    flops = int(workload.flops(batch))
    if mode == "train":
        x, target = data
        return (lambda: workload.step(x, target)), flops
    return (lambda: workload.step(data)), flops


def _measure(sampler, factory: WorkloadFactory, plan: Plan, cfg, mode: str, impl: str,
             batch: int, index: int, *, dtype, device, backend_name: str) -> PhaseRun:
    """Warm-up, measured phase, cool-down for one (mode, impl, batch). A failure (OOM, a
    compile error) is recorded on the phase and the run goes on."""
    import torch

    is_gpu = backend_name == "cuda"
    sync = torch.cuda.synchronize if is_gpu else (lambda: None)
    name = f"{mode}/{impl}/b{batch}"
    run = PhaseRun(name=name, mode=mode, impl=impl, batch=batch)
    step = None
    try:
        with sampler.phase(f"setup {name}", kind="setup", mode=mode, impl=impl, batch=batch):
            step, run.flops_per_step = _build_step(factory, mode, cfg, impl=impl, batch=batch,
                                                   data_seed=plan.seed + index, seed=plan.seed,
                                                   dtype=dtype, device=device)
        with sampler.phase(f"warmup {name}", kind="warmup", mode=mode, impl=impl, batch=batch):
            steps, deadline = 0, time.perf_counter() + plan.warmup_s
            while steps < MIN_WARMUP_STEPS[backend_name] or time.perf_counter() < deadline:
                step()
                sync()
                steps += 1
        if is_gpu:
            torch.cuda.reset_peak_memory_stats()
        with sampler.phase(name, kind=mode, mode=mode, impl=impl, batch=batch) as ph:
            run.phase = ph
            deadline = time.perf_counter() + plan.duration_s
            while True:
                t0 = time.perf_counter()
                step()
                sync()
                t1 = time.perf_counter()
                run.latencies_s.append(t1 - t0)
                if t1 >= deadline:
                    break
        if is_gpu:
            run.peak_mem_bytes = int(torch.cuda.max_memory_allocated())
    except Exception as exc:  # OOM, Triton compile/resource errors: recorded, the run goes on
        run.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        run.phase = None
    finally:
        step = None  # frees the workload (weights, optimizer state) before the next phase
        gc.collect()
        if is_gpu:
            torch.cuda.empty_cache()
    _sleep_phase(sampler, f"cooldown after {name}", "cooldown", plan.cooldown_s)
    return run


# ----------------------------------------------------------------------------- phase rows

GPU_KEYS = ("sm_clock_mhz", "sm_clock_min_mhz", "mem_clock_mhz", "gpu_util_pct", "mem_util_pct",
            "gpm_sm_util_pct", "gpm_sm_occupancy_pct", "gpm_tensor_util_pct",
            "gpm_dram_bw_util_pct", "temp_start_c", "temp_max_c", "temp_rise_c",
            "throttled_s", "throttled_pct")
CPU_KEYS = ("proc_cpu_pct", "sys_cpu_pct", "cpu_freq_mhz", "temp_start_c", "temp_max_c",
            "temp_rise_c")


class _Row(dict):
    """A phase row: ``put`` stores a value, or None with the reason in ``unavailable``."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self["unavailable"] = {}

    def put(self, key: str, value, reason: str | None = None) -> None:
        self[key] = value
        if value is None:
            self["unavailable"][key] = reason or "not measured"


def phase_row(sampler, ph: counters_mod.Phase, run: PhaseRun | None,
              idle_power_w: float | None) -> dict:
    """The flat row of contrast.json for one phase: the workload's numbers (``run``; None for
    the idle baseline) beside the counters' (``sampler.summarize``). Every null value has
    its reason in the row's ``unavailable``."""
    s = sampler.summarize(ph)
    why = s["unavailable"]
    row = _Row(name=ph.name, mode=run.mode if run else ph.kind,
               impl=run.impl if run else None, batch=run.batch if run else None,
               seconds=s["seconds"], n_samples=s["n_samples"])

    def metric(name: str, stat: str = "mean"):
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
    row.put("avg_power_w", power and power["mean_w"], no_power)
    row.put("p95_power_w", power and power["p95_w"], no_power)
    row["power_source"] = power and power["source"]
    limit = metric("power_limit_w")
    row.put("power_limit_w", limit, why.get("power_limit_w", "no power limit on the "
                                                              f"{sampler.kind} backend"))
    row.put("power_share_pct", 100.0 * power["mean_w"] / limit if power and limit else None,
            "needs both power and the power limit")
    energy = s["energy"]
    no_energy = why.get("energy_j", "no energy counter and no power samples")
    row.put("energy_j", energy["j"], no_energy)
    row["energy_source"] = energy["source"]
    row.put("energy_counter_j", energy["counter_j"], why.get("energy_j", "no counter reading"))
    row.put("energy_integrated_j", energy["integrated_j"],
            why.get("energy_integrated_j", no_power))
    row.put("energy_disagreement_pct", energy["disagreement_pct"],
            "needs both the counter and integrated power")
    row.put("energy_counter_resolution_pct", energy["counter_resolution_pct"],
            why.get("energy_j", "no counter reading"))
    if energy["j"] is not None and idle_power_w is not None:
        row["energy_above_idle_j"] = energy["j"] - idle_power_w * s["seconds"]
    elif ph.kind != "idle":
        row.put("energy_above_idle_j", None,
                "no idle power (no idle baseline, or no power reading)")
    if run is not None:
        samples, flops = len(run.latencies_s) * run.batch, len(run.latencies_s) * run.flops_per_step
        row.put("energy_per_sample_j", energy["j"] / samples if energy["j"] is not None else None,
                no_energy)
        row.put("energy_per_flop_j",
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
        row.put(key, values[key], reasons.get(key) or why.get(key))
    if s["throttle"] is not None:
        row["throttle_reasons"] = s["throttle"]["reasons"]
    if run is not None and run.peak_mem_bytes is not None:
        row["peak_mem_mib"] = run.peak_mem_bytes / counters_mod.MIB
        row["peak_mem_source"] = "torch.cuda.max_memory_allocated"
    elif sampler.kind == "cpu":
        row.put("peak_mem_mib", metric("rss_mib", "max"), why.get("rss_mib"))
        row["peak_mem_source"] = "process RSS, max over samples"
    elif run is not None:
        row.put("peak_mem_mib", None, "the workload did not run on a CUDA device")
    if energy["note"]:
        row["note"] = energy["note"]
    out = dict(row)
    out["unavailable"] = out.pop("unavailable")  # last, after the values it explains
    return out


# ------------------------------------------------------------------------------- verdict

@dataclass(frozen=True)
class Resource:
    """One resource the verdict compares: the first of ``keys`` measured in both modes is
    used; ``higher_is_harder`` False means a lower value is the harder push (clocks held
    down). A difference within max(tol_abs, tol_rel * larger value) is a tie."""

    name: str
    keys: tuple[str, ...]
    higher_is_harder: bool
    tol_abs: float
    tol_rel: float
    unit: str


NVML_RESOURCES = (
    Resource("power", ("avg_power_w",), True, 0.0, 0.05, "W"),
    Resource("SM activity", ("gpm_sm_util_pct", "gpu_util_pct"), True, 2.0, 0.0, "%"),
    Resource("tensor cores", ("gpm_tensor_util_pct",), True, 2.0, 0.0, "%"),
    Resource("memory bandwidth", ("gpm_dram_bw_util_pct", "mem_util_pct"), True, 2.0, 0.0, "%"),
    Resource("heat", ("temp_rise_c",), True, 1.0, 0.0, "C"),
    Resource("clocks", ("sm_clock_mhz",), False, 0.0, 0.01, "MHz"),
    Resource("throttling", ("throttled_pct",), True, 1.0, 0.0, "% of time"),
    Resource("memory capacity", ("peak_mem_mib",), True, 0.0, 0.05, "MiB"),
)
CPU_RESOURCES = (
    Resource("power", ("avg_power_w",), True, 0.0, 0.05, "W"),
    Resource("CPU time", ("proc_cpu_pct",), True, 5.0, 0.0, "% of a core"),
    Resource("system CPU", ("sys_cpu_pct",), True, 5.0, 0.0, "%"),
    Resource("clocks", ("cpu_freq_mhz",), False, 0.0, 0.01, "MHz"),
    Resource("heat", ("temp_rise_c",), True, 1.0, 0.0, "C"),
    Resource("memory capacity", ("peak_mem_mib",), True, 0.0, 0.05, "MiB"),
)
METRIC_LABELS = {
    "avg_power_w": "average power", "gpm_sm_util_pct": "GPM SM utilisation",
    "gpu_util_pct": "GPU utilisation (time any kernel ran)",
    "gpm_tensor_util_pct": "GPM tensor-pipe utilisation",
    "gpm_dram_bw_util_pct": "GPM DRAM bandwidth utilisation",
    "mem_util_pct": "memory-controller busy time", "temp_rise_c": "temperature rise",
    "sm_clock_mhz": "mean SM clock", "throttled_pct": "time throttled",
    "peak_mem_mib": "peak memory", "proc_cpu_pct": "process CPU utilisation",
    "sys_cpu_pct": "system CPU utilisation", "cpu_freq_mhz": "mean CPU frequency",
}


def _pick(rows: list[dict], key: str, higher: bool) -> dict | None:
    have = [r for r in rows if r.get(key) is not None]
    if not have:
        return None
    best = (max if higher else min)(have, key=lambda r: r[key])
    return {"phase": best["name"], "value": best[key]}


def _compare(res: Resource, by_mode: dict[str, list[dict]]) -> dict:
    for key in res.keys:
        picks = {m: _pick(rows, key, res.higher_is_harder) for m, rows in by_mode.items()}
        if all(picks.values()):
            break
    else:
        missing = [m for m, p in picks.items() if p is None]
        return {"resource": res.name, "metric": res.keys[0], "winner": None,
                "reason": f"{' / '.join(res.keys)} not measured in {', '.join(missing)} phases"}
    a, b = picks["train"]["value"], picks["infer"]["value"]
    tol = max(res.tol_abs, res.tol_rel * max(abs(a), abs(b)))
    if abs(a - b) <= tol:
        winner = "tie"
    elif (a > b) == res.higher_is_harder:
        winner = "train"
    else:
        winner = "infer"
    return {"resource": res.name, "metric": key, "unit": res.unit,
            "higher_is_harder": res.higher_is_harder, "train": picks["train"],
            "infer": picks["infer"], "winner": winner, "difference": a - b,
            "ratio": a / b if b else None, "tolerance": tol}


def _fmt(value, unit: str) -> str:
    return f"{fmt_num(value, '.4g')} {unit}".strip()


def verdict(rows: list[dict], *, counters: str, device: str, idle: dict | None,
            backend: str = "interpreter") -> dict:
    """Which mode pushes the device harder, decided from the measured phase rows.

    For every resource (power; SM, tensor-pipe and DRAM activity; heat; clocks; throttling;
    memory capacity; on the CPU backend: power, CPU time, frequency, heat, memory), the
    hardest-pushing phase of each mode is taken (highest value, or lowest clock) and the two
    compared; a difference within the resource's tolerance is a tie. The overall answer is the
    winner on power, the one measure every unit of the chip adds to; when power is tied or
    not measured, the mode that wins more resources; else a tie. Every sentence of the
    explanation is built from those numbers.
    """
    by_mode = {m: [r for r in rows if r.get("mode") == m and not r.get("error")]
               for m in MODES}
    if counters == "nvml":
        label = "GPU counters (NVML)"
    else:
        rapl = ", RAPL" if any(r.get("avg_power_w") is not None for r in rows) else ""
        label = (f"CPU counters only (psutil{rapl}): "
                 + ("the kernels ran on the CPU, so this is about CPU load, not a GPU"
                    if backend != "cuda" else
                    "no GPU counters were available, so this is about the host CPU, not "
                    "the GPU"))
    if not all(by_mode.values()):
        missing = [m for m, r in by_mode.items() if not r]
        return {"counters": counters, "label": label, "harder": None, "decided_by": None,
                "resources": [],
                "explanation": [f"No measured {' or '.join(missing)} phase: nothing to "
                                f"compare."]}
    resources = [_compare(res, by_mode)
                 for res in (NVML_RESOURCES if counters == "nvml" else CPU_RESOURCES)]
    measured = [r for r in resources if r["winner"] is not None]
    power = next((r for r in measured if r["resource"] == "power"), None)
    wins = {m: sum(r["winner"] == m for r in measured) for m in MODES}
    if power is not None and power["winner"] != "tie":
        harder, decided_by = power["winner"], "power"
    elif wins["train"] != wins["infer"]:
        harder = max(wins, key=wins.get)
        decided_by = (f"resources won ({wins['train']} train, {wins['infer']} infer), power "
                      + ("tied" if power else "not measured"))
    else:
        harder, decided_by = "tie", (f"resources won ({wins['train']} each), power "
                                     + ("tied" if power else "not measured"))
    names = {"train": "training", "infer": "inference"}
    lines = [f"Measured with {label}, on {device}."]
    if harder == "tie":
        lines.append(f"Neither mode pushes harder: {decided_by}.")
    else:
        other = "infer" if harder == "train" else "train"
        lead = power if decided_by == "power" else None
        if lead:
            lines.append(
                f"{names[harder].capitalize()} pushes harder: its hardest phase "
                f"({lead[harder]['phase']}) averaged {_fmt(lead[harder]['value'], 'W')} "
                f"against {_fmt(lead[other]['value'], 'W')} for {names[other]} "
                f"({lead[other]['phase']}).")
        else:
            lines.append(f"{names[harder].capitalize()} pushes harder, by {decided_by}.")
    for r in measured:
        if r["resource"] == "power" and decided_by == "power":
            continue
        what = METRIC_LABELS.get(r["metric"], r["metric"])
        t, i = r["train"], r["infer"]
        if r["winner"] == "tie":
            head = f"{r['resource']}: tie"
        else:
            head = f"{r['resource']}: {names[r['winner']]} pushes harder"
        lines.append(f"{head} ({what} {_fmt(t['value'], r['unit'])} in {t['phase']} vs "
                     f"{_fmt(i['value'], r['unit'])} in {i['phase']}).")
    for r in resources:
        if r["winner"] is None:
            lines.append(f"{r['resource']}: not compared ({r['reason']}).")
    lines += _busy_host(idle, counters)
    lines += _power_context(by_mode, idle, names)
    lines += _character(by_mode, names)
    lines += _energy_per_sample(by_mode)
    return {"counters": counters, "label": label, "harder": harder, "decided_by": decided_by,
            "resources": resources, "explanation": lines}


# Above these, the idle baseline was not idle: someone else was using the device.
BUSY_IDLE_SYS_CPU_PCT = 50.0
BUSY_IDLE_GPU_UTIL_PCT = 10.0


def _busy_host(idle: dict | None, counters: str) -> list[str]:
    if not idle:
        return []
    if counters == "nvml" and (idle.get("gpu_util_pct") or 0.0) > BUSY_IDLE_GPU_UTIL_PCT:
        return [f"Caution: the GPU was busy during the idle baseline (utilisation "
                f"{fmt_num(idle['gpu_util_pct'], '.3g')}%): another process shares it, so "
                f"power and utilisation include its work."]
    if counters == "cpu" and (idle.get("sys_cpu_pct") or 0.0) > BUSY_IDLE_SYS_CPU_PCT:
        return [f"Caution: the host was busy during the idle baseline (system CPU "
                f"{fmt_num(idle['sys_cpu_pct'], '.3g')}%): other processes compete for the "
                f"cores, so this process's CPU shares and step times vary with their load."]
    return []


def _power_context(by_mode: dict, idle: dict | None, names: dict) -> list[str]:
    lines = []
    if idle and idle.get("avg_power_w") is not None:
        lines.append(f"Idle baseline: {_fmt(idle['avg_power_w'], 'W')}.")
    for mode, rows in by_mode.items():
        have = sorted((r for r in rows if r.get("avg_power_w") is not None),
                      key=lambda r: (r["batch"], r["impl"]))
        if len(have) < 2:
            continue
        lo = min((r for r in have if r["batch"] == have[0]["batch"]),
                 key=lambda r: r["avg_power_w"])
        hi = max(have, key=lambda r: r["avg_power_w"])
        share = (f" ({fmt_num(hi['power_share_pct'], '.3g')}% of the power limit)"
                 if hi.get("power_share_pct") is not None else "")
        lines.append(f"{names[mode].capitalize()} power ranges from "
                     f"{_fmt(lo['avg_power_w'], 'W')} at batch {lo['batch']} ({lo['name']}) to "
                     f"{_fmt(hi['avg_power_w'], 'W')}{share} ({hi['name']}).")
    return lines


def _character(by_mode: dict, names: dict) -> list[str]:
    """Which of tensor pipes and DRAM bandwidth is busier in each mode's highest-power phase
    (GPM only)."""
    lines = []
    for mode, rows in by_mode.items():
        have = [r for r in rows if r.get("gpm_tensor_util_pct") is not None
                and r.get("gpm_dram_bw_util_pct") is not None]
        if not have:
            continue
        r = max(have, key=lambda r: r.get("avg_power_w") or 0.0)
        tensor, dram = r["gpm_tensor_util_pct"], r["gpm_dram_bw_util_pct"]
        busier = "tensor pipes" if tensor >= dram else "DRAM bandwidth"
        lines.append(f"In {r['name']} ({names[mode]}) the busier resource is {busier}: "
                     f"tensor pipes {fmt_num(tensor, '.3g')}%, DRAM bandwidth "
                     f"{fmt_num(dram, '.3g')}%.")
    return lines


def _energy_per_sample(by_mode: dict) -> list[str]:
    lines = []
    infer = {(r["impl"], r["batch"]): r for r in by_mode["infer"]}
    for t in by_mode["train"]:
        i = infer.get((t["impl"], t["batch"]))
        if i is None or t.get("energy_per_sample_j") is None or \
                i.get("energy_per_sample_j") is None or not i["energy_per_sample_j"]:
            continue
        ratio = t["energy_per_sample_j"] / i["energy_per_sample_j"]
        lines.append(f"Energy per sample at batch {t['batch']} ({t['impl']}): training "
                     f"{fmt_num(t['energy_per_sample_j'], '.3g')} J, inference "
                     f"{fmt_num(i['energy_per_sample_j'], '.3g')} J ({ratio:.2f}x; a training "
                     f"step does {fmt_num(t['flops_per_step'] / i['flops_per_step'], '.3g')}x "
                     f"the FLOPs).")
    return lines


def impl_comparison(rows: list[dict], baseline: str = "torch") -> list[dict]:
    """The lab's kernels against the baseline in each regime (mode, batch): ratios > 1 mean
    the Triton impl has more throughput / more latency / more energy per sample."""
    base = {(r["mode"], r["batch"]): r for r in rows
            if r.get("impl") == baseline and not r.get("error")}
    out = []
    for r in rows:
        if r.get("impl") in (None, baseline) or r.get("error"):
            continue
        b = base.get((r["mode"], r["batch"]))
        if b is None:
            continue

        def ratio(key, r=r, b=b):
            x, y = r.get(key), b.get(key)
            return x / y if x is not None and y else None

        out.append({"mode": r["mode"], "batch": r["batch"], "impl": r["impl"],
                    "baseline": baseline,
                    "throughput_ratio": ratio("throughput_samples_s"),
                    "latency_p50_ratio": ratio("latency_p50_ms"),
                    "energy_per_sample_ratio": ratio("energy_per_sample_j"),
                    "avg_power_ratio": ratio("avg_power_w")})
    return out


# ------------------------------------------------------------------------------ the run

def run_contrast(out_dir, *, batches: Sequence[int] | None = None,
                 duration_s: float | None = None, model_size: str | None = None,
                 impls: Sequence[str] = IMPLS, modes: Sequence[str] = MODES,
                 dtype: str | None = None, warmup_s: float | None = None,
                 idle_s: float | None = None, cooldown_s: float | None = None,
                 interval_ms: float = 1e3 * counters_mod.DEFAULT_INTERVAL_S,
                 counters: str = "auto", seed: int = 0,
                 progress: Callable[[str], None] | None = None,
                 argv: Sequence[str] | None = None,
                 workloads: WorkloadFactory = lab_workloads) -> dict:
    """Run the contrast and write the run directory ``out_dir``; returns contrast.json's
    document. Options left None take the backend's defaults (:data:`DEFAULTS`); bad options
    and an unwritable ``out_dir`` raise UsageError before anything runs. ``counters``:
    ``auto`` (NVML on a GPU, with a warning and the CPU backend when NVML is missing),
    ``nvml`` or ``cpu``. ``workloads(mode, cfg, impl=, dtype=, device=, seed=)`` builds a
    workload (default: the lab's). ``progress`` receives one line per phase of the run."""
    from tritonlab.hw import devices
    from tritonlab.report import timeline as timeline_mod
    from tritonlab.runs import store as runstore
    from tritonlab.workloads.model import MLPConfig

    be = backend_mod.current()
    say = progress or (lambda _msg: None)
    if counters not in ("auto", "nvml", "cpu"):
        raise UsageError(f"unknown counter backend {counters!r}; choose one of: auto, nvml, cpu")
    if counters == "nvml" and not be.is_gpu:
        raise UsageError("NVML counters need the cuda backend: under the interpreter the "
                         "kernels run on the CPU, so use --counters cpu (or auto)")
    plan, warnings = make_plan(be.name, batches=batches, duration_s=duration_s,
                               model_size=model_size, impls=impls, modes=modes, dtype=dtype,
                               warmup_s=warmup_s, idle_s=idle_s, cooldown_s=cooldown_s,
                               interval_ms=interval_ms, seed=seed)
    for w in warnings:
        say(f"warning: {w}")
    device_info = devices.describe(be)
    manifest = runstore.build_manifest(kind="contrast", backend=be, device=device_info,
                                       argv=argv if argv is not None else runstore.command_argv(),
                                       options=plan.to_dict())
    try:
        run_dir = runstore.RunDir.create(out_dir, manifest)
    except OSError as exc:
        raise UsageError(f"cannot write the run directory {str(out_dir)!r}: "
                         f"{exc.strerror or exc}") from None

    cfg = MLPConfig.from_size(plan.model_size)
    torch_dtype = DTYPES[plan.dtype]
    # Under the interpreter the kernels run on the CPU: the CPU is what is measured.
    kind = counters if be.is_gpu else "cpu"
    uuid = device_info.get("uuid")
    if uuid and not uuid.startswith(("GPU-", "MIG-")):
        uuid = f"GPU-{uuid}"  # torch prints the bare UUID; NVML wants the prefix

    def warn(message: str) -> None:
        warnings.append(message)
        say(message)

    sampler = counters_mod.open_sampler(kind, interval_s=plan.interval_ms / 1e3,
                                        device_uuid=uuid, device_index=device_info.get("index"),
                                        warn=warn)
    runs: list[PhaseRun] = []
    idle_phase = None
    total = len(plan.modes) * len(plan.batches) * len(plan.impls)
    with sampler:
        counter_info = sampler.backend.info()
        if plan.idle_s > 0:
            say(f"idle baseline ({plan.idle_s:g} s)")
            idle_phase = _sleep_phase(sampler, "idle", "idle", plan.idle_s)
        index = 0
        for mode in plan.modes:
            for batch in plan.batches:
                for impl in plan.impls:
                    index += 1
                    say(f"[{index}/{total}] {mode}/{impl}/b{batch}: warm-up, "
                        f"{plan.duration_s:g} s measured, {plan.cooldown_s:g} s cool-down")
                    run = _measure(sampler, workloads, plan, cfg, mode, impl, batch, index,
                                   dtype=torch_dtype, device=be.device,
                                   backend_name=be.name)
                    if run.error:
                        say(f"  failed: {run.error}")
                    runs.append(run)
    run_dir.update_manifest(counters=counter_info)

    idle = phase_row(sampler, idle_phase, None, None) if idle_phase else None
    idle_power = idle.get("avg_power_w") if idle else None
    rows = []
    for run in runs:
        if run.error:
            rows.append({"name": run.name, "mode": run.mode, "impl": run.impl,
                         "batch": run.batch, "error": run.error})
        else:
            rows.append(phase_row(sampler, run.phase, run, idle_power))
    device_name = device_info.get("name") or "this device"
    doc = {
        "schema_version": runstore.SCHEMA_VERSION,
        "kind": "contrast",
        "run_id": manifest["run_id"],
        "backend": be.name,
        "backend_label": be.label,
        "device": device_name,
        "counters": sampler.kind,
        "counters_info": counter_info,
        "model": {"size": plan.model_size, **cfg.to_dict(), "dtype": plan.dtype},
        "plan": plan.to_dict(),
        "warnings": warnings,
        "phases": ([idle] if idle else []) + rows,
        "impl_comparison": impl_comparison(rows),
        "verdict": verdict(rows, counters=sampler.kind, device=device_name, idle=idle,
                           backend=be.name),
        "sampler": {"interval_ms": plan.interval_ms, "overhead": sampler.overhead(),
                    "unavailable": sampler.unavailable,
                    "metrics": {m.name: {"unit": m.unit, "description": m.description}
                                for m in sampler.backend.metrics}},
    }
    sampler.write_csv(run_dir.counters_path)
    title = f"contrast on {device_name} ({be.label}), model {plan.model_size}, {plan.dtype}"
    files = {"manifest": runstore.MANIFEST, "counters": runstore.COUNTERS,
             "contrast": "contrast.json",
             "timeline": timeline_mod.plot_timeline(sampler, run_dir.path / "timeline.png",
                                                    title=title).name,
             "trace": timeline_mod.write_trace(sampler, run_dir.path / "trace.json",
                                               metadata={"run_id": manifest["run_id"],
                                                         "device": device_name,
                                                         "backend": be.name}).name}
    doc["files"] = files
    (run_dir.path / "contrast.json").write_text(dumps(doc) + "\n")
    run_dir.update_manifest(status="complete", end_time=runstore.now_iso(), files=files)
    doc["out"] = str(run_dir.path)
    return doc


# ---------------------------------------------------------------------------- the summary

def summary_text(doc: dict) -> str:
    """The terminal summary: one table row per phase, the kernel comparison, the verdict."""
    gpu = doc["counters"] == "nvml"
    flop_scale, flop_head = (1.0, "TFLOP/s") if doc["backend"] == "cuda" else (1e3, "GFLOP/s")
    if gpu:
        extra = [("W avg", "avg_power_w"), ("W p95", "p95_power_w"),
                 ("% limit", "power_share_pct"), ("SM MHz", "sm_clock_mhz"),
                 ("SM %", "gpm_sm_util_pct"), ("tensor %", "gpm_tensor_util_pct"),
                 ("DRAM %", "gpm_dram_bw_util_pct"), ("util %", "gpu_util_pct"),
                 ("peak MiB", "peak_mem_mib"), ("dT C", "temp_rise_c"),
                 ("thr %", "throttled_pct")]
    else:
        extra = [("CPU %", "proc_cpu_pct"), ("sys %", "sys_cpu_pct"),
                 ("MHz", "cpu_freq_mhz"), ("W avg", "avg_power_w"),
                 ("peak RSS MiB", "peak_mem_mib")]
    headers = ["phase", "steps", "samples/s", "p50 ms", "p99 ms", flop_head, "J/sample",
               *(h for h, _ in extra)]
    rows = []
    for r in doc["phases"]:
        if r.get("error"):
            rows.append([r["name"], "failed: " + r["error"]])
            continue
        tflops = r.get("tflops")
        rows.append([r["name"], r.get("steps"), fmt_num(r.get("throughput_samples_s")),
                     fmt_num(r.get("latency_p50_ms")), fmt_num(r.get("latency_p99_ms")),
                     fmt_num(None if tflops is None else tflops * flop_scale),
                     fmt_num(r.get("energy_per_sample_j")),
                     *(fmt_num(r.get(k)) for _, k in extra)])
    out = [f"backend: {doc['backend_label']}; counters: {doc['verdict']['label']}",
           f"model {doc['model']['size']} (dim {doc['model']['dim']}, hidden "
           f"{doc['model']['hidden']}), {doc['model']['dtype']}; "
           f"{doc['plan']['duration_s']:g} s per phase",
           table(rows, headers)]
    comp = doc["impl_comparison"]
    if comp:
        out.append("")
        out.append(table([[c["mode"], c["batch"], f"{c['impl']} / {c['baseline']}",
                           fmt_num(c["throughput_ratio"]), fmt_num(c["latency_p50_ratio"]),
                           fmt_num(c["energy_per_sample_ratio"])] for c in comp],
                         ["mode", "batch", "impl", "throughput x", "p50 latency x",
                          "energy/sample x"]))
    v = doc["verdict"]
    out.append("")
    out.append(f"verdict: {v['harder'] or 'none'}"
               + (f" (decided by {v['decided_by']})" if v["decided_by"] else ""))
    out += [f"  - {line}" for line in v["explanation"]]
    o = doc["sampler"]["overhead"]
    out.append(f"sampler: {o['n_samples']} samples every {o['interval_ms']:g} ms "
               f"(achieved median {fmt_num((o['achieved_interval_ms'] or {}).get('median'))} "
               f"ms), {fmt_num(o['sample_cost_us']['mean'])} us per sample, thread CPU "
               f"{fmt_num(o['thread_cpu_pct'])}% of a core")
    for w in doc["warnings"]:
        out.append(w if w.startswith("warning") else f"warning: {w}")
    return "\n".join(out)
