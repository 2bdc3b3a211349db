"""The terminal summary of a contrast (what ``tritonlab contrast`` prints)."""

from __future__ import annotations

from tritonlab.output import fmt_num, table


def summary_text(doc: dict) -> str:
    """The terminal summary: one table row per phase, the kernel comparison, the verdict."""
    if (doc.get("model") or {}).get("name") == "layer":
        return _layer_text(doc)
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
    mixed = _mixed(doc)
    headers = ["phase", *(["dtype"] if mixed else []), "steps", "samples/s", "p50 ms",
               "p99 ms", flop_head, "J/sample", *(h for h, _ in extra)]
    rows = []
    for r in doc["phases"]:
        head = [r["name"], *([r.get("dtype") or ""] if mixed else [])]
        if r.get("error"):
            rows.append([*head, "failed: " + r["error"]])
            continue
        tflops = r.get("tflops")
        rows.append([*head, r.get("steps"), fmt_num(r.get("throughput_samples_s")),
                     fmt_num(r.get("latency_p50_ms")), fmt_num(r.get("latency_p99_ms")),
                     fmt_num(None if tflops is None else tflops * flop_scale),
                     fmt_num(r.get("energy_per_sample_j")),
                     *(fmt_num(r.get(k)) for _, k in extra)])
    out = [f"backend: {doc['backend_label']}; counters: {doc['verdict']['label']}",
           f"model {doc['model']['size']} (dim {doc['model']['dim']}, hidden "
           f"{doc['model']['hidden']}), {_precision(doc)}; "
           f"{doc['plan']['duration_s']:g} s per phase",
           table(rows, headers)]
    return "\n".join(out + _tail(doc))


def _tail(doc: dict) -> list[str]:
    """The kernel comparison, the verdict, the sampler's overhead and the warnings."""
    out = []
    comp = doc["impl_comparison"]
    if comp:
        out.append("")
        out.append(table([[c["mode"], _point(c), f"{c['impl']} / {c['baseline']}",
                           fmt_num(c["throughput_ratio"]), fmt_num(c["latency_p50_ratio"]),
                           fmt_num(c["energy_per_sample_ratio"])] for c in comp],
                         ["mode", "point" if comp[0].get("point") else "batch", "impl",
                          "throughput x", "p50 latency x",
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
    return out


def _precision(doc: dict) -> str:
    """The dtypes in words (a run written before per-mode dtypes has only ``dtype``)."""
    m = doc["model"]
    return m.get("precision") or m["dtype"]


def _mixed(doc: dict) -> bool:
    """Whether the phases ran in different dtypes (fp8 inference, 16-bit training)."""
    return len(set((doc["model"].get("dtypes") or {}).values())) > 1


def _point(c: dict) -> str:
    """A grid point as a table cell: the batch, or the layer point's axes."""
    point = c.get("point")
    if not point:
        return str(c["batch"])
    return " x ".join(f"{k} {v}" for k, v in point.items())


def _layer_text(doc: dict) -> str:
    """The layer contrast's summary: per phase tokens/s, compute and bandwidth against the
    device's peaks, intensity, energy per token, footprint against the capacity, power."""
    flop_scale, flop_head = (1.0, "TFLOP/s") if doc["backend"] == "cuda" else (1e3, "GFLOP/s")
    # A mixed-dtype run says each phase's dtype: its % peak is against that dtype's peak.
    mixed = _mixed(doc)
    headers = ["phase", *(["dtype"] if mixed else []), "steps", "tok/s", "p50 ms", flop_head,
               "% peak", "GB/s", "% BW", "FLOP/B", "J/token", "footprint MiB", "% cap", "W avg"]
    rows = []
    for r in doc["phases"]:
        head = [r["name"], *([r.get("dtype") or ""] if mixed else [])]
        if r.get("error"):
            rows.append([*head, "failed: " + r["error"]])
            continue
        if r.get("skipped"):
            rows.append([*head, "skipped: " + r["skipped"]])
            continue
        tflops = r.get("tflops")
        fp = r.get("footprint_bytes")
        rows.append([*head, r.get("steps"), fmt_num(r.get("tokens_per_s")),
                     fmt_num(r.get("latency_p50_ms")),
                     fmt_num(None if tflops is None else tflops * flop_scale),
                     fmt_num(r.get("compute_pct")), fmt_num(r.get("achieved_gbps")),
                     fmt_num(r.get("bandwidth_pct")), fmt_num(r.get("arithmetic_intensity")),
                     fmt_num(r.get("energy_per_token_j")),
                     fmt_num(None if fp is None else fp / 2**20),
                     fmt_num(r.get("capacity_pct")), fmt_num(r.get("avg_power_w"))])
    m = doc["model"]
    out = [f"backend: {doc['backend_label']}; counters: {doc['verdict']['label']}",
           f"decoder layer {m['size']} x {m['n_layers']} (dim {m['dim']}, {m['n_heads']} heads, "
           f"{m['n_kv_heads']} kv heads, hidden {m['hidden']}), {_precision(doc)}; "
           f"{doc['plan']['duration_s']:g} s per phase",
           table(rows, headers)]
    return "\n".join(out + _tail(doc))
