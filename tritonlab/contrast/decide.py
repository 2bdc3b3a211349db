"""The verdict of a contrast: which mode pushes the device harder, resource by resource, and
the lab's kernels against the baseline in each regime."""

from __future__ import annotations

from dataclasses import dataclass

from tritonlab.contrast.plan import MODES
from tritonlab.output import fmt_num


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
    """The row with the highest (or lowest) ``key``: its phase name and value; None if none
    has it."""
    have = [r for r in rows if r.get(key) is not None]
    if not have:
        return None
    best = (max if higher else min)(have, key=lambda r: r[key])
    return {"phase": best["name"], "value": best[key]}


def _compare(res: Resource, by_mode: dict[str, list[dict]]) -> dict:
    """One resource compared between the two modes' hardest phases, with the tolerance that
    makes a tie."""
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
    """A value with its unit."""
    return f"{fmt_num(value, '.4g')} {unit}".strip()


def counters_label(rows: list[dict], counters: str, backend: str) -> str:
    """What the counters measured, as the verdict's first sentence says it."""
    if counters == "nvml":
        return "GPU counters (NVML)"
    rapl = ", RAPL" if any(r.get("avg_power_w") is not None for r in rows) else ""
    return (f"CPU counters only (psutil{rapl}): "
            + ("the kernels ran on the CPU, so this is about CPU load, not a GPU"
               if backend != "cuda" else
               "no GPU counters were available, so this is about the host CPU, not "
               "the GPU"))


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
    label = counters_label(rows, counters, backend)
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
    """A caution when the idle baseline shows another user of the device."""
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
    """The idle power, and each mode's power range from its smallest batch to its hardest
    phase."""
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
    """Energy per sample of training against inference at each (impl, batch) both ran."""
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
    """The lab's kernels against the baseline in each regime (mode and grid point: batch,
    and for the layer contrast seq, prompt or context): ratios > 1 mean the Triton impl has
    more throughput / more latency / more energy per sample."""
    def regime(r: dict) -> tuple:
        """(mode, grid point): the layer contrast's point, else the batch."""
        point = r.get("point")
        return r["mode"], tuple(sorted(point.items())) if point else r["batch"]

    usable = [r for r in rows if not r.get("error") and not r.get("skipped")]
    base = {regime(r): r for r in usable if r.get("impl") == baseline}
    out = []
    for r in usable:
        if r.get("impl") in (None, baseline):
            continue
        b = base.get(regime(r))
        if b is None:
            continue

        def ratio(key, r=r, b=b):
            """r[key] / b[key], or None when either is missing or the baseline's is 0."""
            x, y = r.get(key), b.get(key)
            return x / y if x is not None and y else None

        out.append({"mode": r["mode"], "batch": r["batch"],
                    **({"point": r["point"]} if "point" in r else {}), "impl": r["impl"],
                    "baseline": baseline,
                    "throughput_ratio": ratio("throughput_samples_s"),
                    "latency_p50_ratio": ratio("latency_p50_ms"),
                    "energy_per_sample_ratio": ratio("energy_per_sample_j"),
                    "avg_power_ratio": ratio("avg_power_w")})
    return out
