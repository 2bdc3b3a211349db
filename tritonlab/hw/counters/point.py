"""A counter summary of one timed point of a sweep (average power, energy per call, SM clock
...), with nulls and reasons where no GPU counters exist, and the sweep's hook that takes it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tritonlab.errors import UsageError
from tritonlab.hw.counters.sampler import Sampler

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
