"""Timers: one interface (:meth:`Timer.measure`), two implementations.

* :class:`CudaTimer`: CUDA events around each call. Before each call, outside the timed
  window, the L2 is flushed (``cache="cold"``: a buffer of at least twice the device's L2 is
  zeroed) and the GPU is kept busy with a short spin kernel sized to the host time of the
  call, so that the call's kernels are all queued before the start event fires: the events
  then measure the GPU's work, never the CPU's launch latency. The host time of each call
  (``perf_counter`` around the Python call, no synchronisation) is recorded beside it; a
  point whose host time exceeds its device time is flagged ``launch_bound`` (back-to-back
  calls would leave the GPU waiting for the CPU). ``graph=True`` captures each callable in a
  CUDA graph after warm-up and times its replay.
* :class:`CpuTimer`: ``time.perf_counter`` around each call (Triton interpreter, torch CPU).

Both warm each callable up first: for at least ``warmup_s`` and ``min_warmup_calls`` calls,
and until a call causes no tuning or compilation (``activity``, a counter the caller
supplies, stops moving), so that autotuning and torch.compile never run inside a timed
window. Then the callables are timed *interleaved*, in rounds (the order reversed every
other round), so they share the same clock and thermal conditions; in each round a
callable makes ``reps`` calls, about (slowest call / its call) and at most
:data:`MAX_REPS`, so a fast baseline beside a slow kernel still gets many samples. Rounds go
on until every callable meets the :class:`~tritonlab.measure.stats.StopRule` (CI of the
median within 1%, or the time budget spent); one that met it early keeps being called, so
all are measured over the same window.

On CUDA each callable's calls of a round run inside an NVTX range (``ranges=`` of
:meth:`Timer.measure` names them; the sweep passes ``tritonlab:op/impl/mode/dtype/shape``), so
an Nsight Systems capture of a sweep shows which kernels belong to which point. The CPU timer
marks nothing. A :class:`RangeMarker` can be given to either timer instead (tests record
the ranges with one).
"""

from __future__ import annotations

import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import psutil
import torch

from tritonlab.hw.nvml import gpu_clocks
from tritonlab.measure.stats import StopRule, StopTracker, Summary, summarize

CACHE_MODES = ("cold", "warm")
# A spin kernel longer than this would mean the call synchronises with the host anyway.
_MAX_COVER_MS = 20.0
# Each batch of rounds is synchronised once; its length adapts to about this much time.
_BATCH_TARGET_S = 0.02
# The most calls one callable makes per interleaved round.
MAX_REPS = 64
# Past this much warm-up, a callable that still tunes or compiles on every call is timed
# anyway and its measurement marked unsettled.
_MAX_WARMUP_S = 120.0


class RangeMarker(Protocol):
    """Opens and closes named ranges on a profiler's timeline (NVTX on CUDA)."""

    def push(self, name: str) -> None: ...

    def pop(self) -> None: ...


class NvtxMarker:
    """NVTX ranges through torch; without a profiler attached each call costs about a
    microsecond of host time, outside the timed window (the spin cover hides it)."""

    def push(self, name: str) -> None:
        torch.cuda.nvtx.range_push(name)

    def pop(self) -> None:
        torch.cuda.nvtx.range_pop()


@dataclass
class Measurement:
    """The timing of one callable. Times are in milliseconds.

    ``samples_ms``: device time per call (CUDA events), or wall time per call on the CPU.
    ``host_samples_ms``: time the host spent issuing each call (equal to ``samples_ms`` on
    the CPU). ``settled``: no tuning or compilation happened during the timed calls.
    """

    name: str
    samples_ms: list[float]
    host_samples_ms: list[float]
    summary: Summary
    host_median_ms: float
    stop_reason: str
    reps: int
    warmup_calls: int
    warmup_s: float
    timer: str
    cache: str
    graph: bool
    graph_error: str | None
    launch_bound: bool | None
    settled: bool

    @property
    def ms(self) -> float:
        return self.summary.median


@dataclass
class _Prepared:
    name: str
    call: Callable[[], object]
    range_name: str = ""
    warmup_calls: int = 0
    warmup_s: float = 0.0
    call_ms: float = 0.0  # wall time of one quiet warm-up call, synchronised
    reps: int = 1
    graph: bool = False
    graph_error: str | None = None
    host_ms: list[float] = field(default_factory=list)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class Timer(ABC):
    """Times callables; see the module docstring. ``cache`` is ``"cold"`` or ``"warm"``;
    ``marker`` opens a range around each callable's calls of a round (None: none)."""

    name: str = ""

    def __init__(self, *, cache: str = "cold", graph: bool = False, warmup_s: float = 0.0,
                 min_warmup_calls: int = 1, marker: RangeMarker | None = None):
        if cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
        self.cache = cache
        self.graph = graph
        self.warmup_s = warmup_s
        self.min_warmup_calls = max(1, min_warmup_calls)
        self.marker = marker

    # -- what each implementation provides
    @abstractmethod
    def _sync(self) -> None: ...

    @abstractmethod
    def _flush(self) -> None: ...

    @abstractmethod
    def _run_rounds(self, prepared: list[_Prepared], rounds: int, first_round: int
                    ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        """Run ``rounds`` interleaved rounds; (device ms, host ms) per callable name."""

    def _capture(self, item: _Prepared) -> None:  # noqa: B027 - a no-op except on CUDA
        """After warm-up: prepare ``item`` for timing (CUDA: spin cover, graph capture)."""

    def clocks(self) -> dict | None:
        """Clock readings for the start/end of a point (None where none can be read)."""
        return None

    def describe(self) -> dict:
        """What a manifest records about this timer."""
        return {"timer": self.name, "cache": self.cache, "graph": self.graph,
                "warmup_s": self.warmup_s, "min_warmup_calls": self.min_warmup_calls}

    # -- the shared procedure
    def _warm(self, name: str, fn: Callable[[], object], activity: Callable[[], int]) -> _Prepared:
        item = _Prepared(name, fn)
        start = time.perf_counter()
        while True:
            before = activity()
            h0 = time.perf_counter()
            fn()
            h1 = time.perf_counter()
            self._sync()
            h2 = time.perf_counter()
            item.warmup_calls += 1
            quiet = activity() == before
            if quiet:
                item.host_ms.append((h1 - h0) * 1e3)
                item.call_ms = (h2 - h0) * 1e3
            elapsed = time.perf_counter() - start
            if (quiet and item.warmup_calls >= self.min_warmup_calls
                    and elapsed >= self.warmup_s) or elapsed > _MAX_WARMUP_S:
                break
        self._capture(item)
        item.warmup_s = time.perf_counter() - start
        return item

    def measure(self, fns: Mapping[str, Callable[[], object]], rule: StopRule,
                activity: Callable[[], int] | None = None,
                ranges: Mapping[str, str] | None = None) -> dict[str, Measurement]:
        """Warm up, then time ``fns`` interleaved until each meets ``rule``.

        ``rule.budget_s`` is per callable: the interleaved loop gets ``budget_s * len(fns)``.
        ``activity`` returns a counter that grows whenever tuning or compilation happens.
        ``ranges`` names the profiler range of each callable's timed calls (default: its
        name in ``fns``).
        """
        if not fns:
            return {}
        activity = activity or (lambda: 0)
        prepared = [self._warm(name, fn, activity) for name, fn in fns.items()]
        for p in prepared:
            p.range_name = (ranges or {}).get(p.name, p.name)
        slowest = max(p.call_ms for p in prepared)
        for p in prepared:
            p.reps = max(1, min(MAX_REPS, int(slowest / p.call_ms))) if p.call_ms > 0 else 1
        shared = replace(rule, budget_s=rule.budget_s * len(prepared))
        trackers = {p.name: StopTracker(shared) for p in prepared}
        samples: dict[str, list[float]] = {p.name: [] for p in prepared}
        host: dict[str, list[float]] = {p.name: [] for p in prepared}
        reasons: dict[str, str] = {}
        before = activity()
        start = time.perf_counter()
        rounds, done = 1, 0
        while len(reasons) < len(prepared):
            t0 = time.perf_counter()
            dev, hst = self._run_rounds(prepared, rounds, done)
            batch_s = time.perf_counter() - t0
            done += rounds
            for name in samples:
                samples[name].extend(dev[name])
                host[name].extend(hst[name])
            elapsed = time.perf_counter() - start
            for name, tracker in trackers.items():
                if name not in reasons:
                    why = tracker.reason(samples[name], elapsed)
                    if why is not None:
                        reasons[name] = why
            rounds = self._next_rounds(rounds, batch_s)
        settled = activity() == before
        out = {}
        for p in prepared:
            summary = summarize(samples[p.name])
            host_median = statistics.median(host[p.name])
            out[p.name] = Measurement(
                name=p.name, samples_ms=samples[p.name], host_samples_ms=host[p.name],
                summary=summary, host_median_ms=host_median, stop_reason=reasons[p.name],
                reps=p.reps, warmup_calls=p.warmup_calls, warmup_s=p.warmup_s, timer=self.name,
                cache=self.cache, graph=p.graph, graph_error=p.graph_error,
                launch_bound=self._launch_bound(summary.median, host_median),
                settled=settled)
        return out

    def _next_rounds(self, rounds: int, batch_s: float) -> int:
        return 1

    def _launch_bound(self, device_ms: float, host_ms: float) -> bool | None:
        return None


# ----------------------------------------------------------------------------------- CPU

def _cpu_cache_bytes() -> int:
    """The largest CPU cache (usually the LLC) from sysfs, or 32 MiB when unknown."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
        except OSError:
            continue
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * mult)
    return max(sizes) if sizes else 32 << 20


class CpuTimer(Timer):
    """``time.perf_counter`` around each call. ``cache="cold"`` writes a buffer twice the
    largest CPU cache between calls."""

    name = "perf_counter"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.flush_bytes = 2 * _cpu_cache_bytes() if self.cache == "cold" else 0
        self._buffer = None

    def _sync(self) -> None:
        pass

    def _flush(self) -> None:
        if self._buffer is None:
            self._buffer = torch.empty(self.flush_bytes // 4, dtype=torch.int32)
        self._buffer.zero_()

    def _run_rounds(self, prepared, rounds, first_round):
        dev: dict[str, list[float]] = {p.name: [] for p in prepared}
        for r in range(first_round, first_round + rounds):
            for p in (prepared if r % 2 == 0 else reversed(prepared)):
                if self.marker:
                    self.marker.push(p.range_name)
                for _ in range(p.reps):
                    if self.cache == "cold":
                        self._flush()
                    t0 = time.perf_counter()
                    p.call()
                    t1 = time.perf_counter()
                    dev[p.name].append((t1 - t0) * 1e3)
                if self.marker:
                    self.marker.pop()
        return dev, {k: list(v) for k, v in dev.items()}

    def clocks(self) -> dict | None:
        try:
            freq = psutil.cpu_freq()
        except Exception:  # no cpufreq on this platform
            return None
        return {"cpu_freq_mhz": float(freq.current)} if freq else None

    def describe(self) -> dict:
        return {**super().describe(), "flush_bytes": self.flush_bytes}


# ---------------------------------------------------------------------------------- CUDA

class CudaTimer(Timer):
    """CUDA events; see the module docstring."""

    name = "cuda_events"

    def __init__(self, *, device: int | None = None, **kw):
        kw.setdefault("marker", NvtxMarker())
        super().__init__(**kw)
        self.device = torch.cuda.current_device() if device is None else device
        props = torch.cuda.get_device_properties(self.device)
        self.l2_bytes = int(getattr(props, "L2_cache_size", 0) or 0)
        # Unknown L2: 128 MiB is more than twice every current GPU's L2.
        self.flush_bytes = 2 * self.l2_bytes if self.l2_bytes else 128 << 20
        self._buffer = (torch.empty(self.flush_bytes // 4, dtype=torch.int32, device=self.device)
                        if self.cache == "cold" else None)
        self._events: list = []
        self._cycles_per_ms = self._calibrate_spin()
        self._cover: dict[str, int] = {}

    def _sync(self) -> None:
        torch.cuda.synchronize(self.device)

    def _flush(self) -> None:
        self._buffer.zero_()

    def _calibrate_spin(self) -> float | None:
        """Clock cycles per millisecond of ``torch.cuda._sleep`` (None if unavailable)."""
        sleep = getattr(torch.cuda, "_sleep", None)
        if sleep is None:
            return None
        try:
            # An idle GPU sits at a low clock (an H100 idles near 345 MHz) and ramps up under
            # load: spin first so the clock is at its working speed, then keep the fastest of
            # a few measurements. Too few cycles per ms would make the cover too short at
            # boost clocks and let launch gaps into the timed window.
            sleep(100_000_000)
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            cycles = 5_000_000
            rates = []
            for _ in range(3):
                start.record()
                sleep(cycles)
                end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
                if ms > 0:
                    rates.append(cycles / ms)
        except RuntimeError:
            return None
        return max(rates) if rates else None

    def _capture(self, item: _Prepared) -> None:
        if item.host_ms:
            self._set_cover(item)
        if not self.graph:
            return
        fn = item.call
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                fn()
            graph.replay()
            self._sync()
        except Exception as exc:  # not capturable (host sync, allocation, CPU work): eager
            self._sync()
            item.graph_error = _first_line(exc)
            return
        item.call, item.graph = graph.replay, True
        item.host_ms = []
        for _ in range(3):
            h0 = time.perf_counter()
            graph.replay()
            item.host_ms.append((time.perf_counter() - h0) * 1e3)
            self._sync()
        self._set_cover(item)

    def _set_cover(self, item: _Prepared) -> None:
        """Spin long enough (1.5x the slowest recent host time, plus 20 us) that all of a
        call's launches are queued before its start event runs."""
        if self._cycles_per_ms is None:
            self._cover[item.name] = 0
            return
        cover_ms = min(_MAX_COVER_MS, 1.5 * max(item.host_ms[-5:]) + 0.02)
        self._cover[item.name] = int(cover_ms * self._cycles_per_ms)

    def _event_pairs(self, n: int) -> list:
        while len(self._events) < n:
            self._events.append((torch.cuda.Event(enable_timing=True),
                                 torch.cuda.Event(enable_timing=True)))
        return self._events[:n]

    def _run_rounds(self, prepared, rounds, first_round):
        sleep = getattr(torch.cuda, "_sleep", None)
        pairs = iter(self._event_pairs(rounds * sum(p.reps for p in prepared)))
        used: dict[str, list] = {p.name: [] for p in prepared}
        host: dict[str, list[float]] = {p.name: [] for p in prepared}
        cold = self.cache == "cold"
        for r in range(first_round, first_round + rounds):
            for p in (prepared if r % 2 == 0 else reversed(prepared)):
                cycles = self._cover.get(p.name, 0)
                if self.marker:
                    self.marker.push(p.range_name)
                for _ in range(p.reps):
                    if cold:
                        self._flush()
                    if cycles:
                        sleep(cycles)
                    start, end = next(pairs)
                    start.record()
                    h0 = time.perf_counter()
                    p.call()
                    h1 = time.perf_counter()
                    end.record()
                    host[p.name].append((h1 - h0) * 1e3)
                    used[p.name].append((start, end))
                if self.marker:
                    self.marker.pop()
        self._sync()
        dev = {name: [s.elapsed_time(e) for s, e in ev] for name, ev in used.items()}
        return dev, host

    def _next_rounds(self, rounds: int, batch_s: float) -> int:
        if batch_s <= 0:
            return min(256, rounds * 2)
        return max(1, min(256, int(rounds * _BATCH_TARGET_S / batch_s)))

    def _launch_bound(self, device_ms: float, host_ms: float) -> bool | None:
        return bool(host_ms > device_ms)

    def clocks(self) -> dict | None:
        return gpu_clocks(self.device)

    def describe(self) -> dict:
        return {**super().describe(), "l2_bytes": self.l2_bytes, "flush_bytes": self.flush_bytes,
                "spin_cycles_per_ms": self._cycles_per_ms}


# ------------------------------------------------------------------------------ factories

def make_timer(backend_name: str, *, cache: str | None = None, graph: bool = False) -> Timer:
    """The timer for a backend (``"cuda"`` or ``"interpreter"``) with its default warm-up:
    on CUDA at least 25 ms and 3 calls (clocks ramp, caches fill); on the CPU one call.
    ``cache`` defaults to cold on CUDA and warm on the CPU (interpreter timings are Python
    overhead, not memory traffic)."""
    if backend_name == "cuda":
        return CudaTimer(cache=cache or "cold", graph=graph, warmup_s=0.025, min_warmup_calls=3)
    if graph:
        raise ValueError("CUDA graphs need the cuda backend")
    return CpuTimer(cache=cache or "warm", warmup_s=0.0, min_warmup_calls=1)


def default_rule(backend_name: str, budget_s: float | None = None) -> StopRule:
    """The stop rule per backend: CI within 1%, else ``budget_s`` per callable (1 s on
    CUDA; 0.2 s on the interpreter, whose timings are only for a relative picture)."""
    if backend_name == "cuda":
        return StopRule(budget_s=budget_s or 1.0, min_samples=10, max_samples=5000)
    return StopRule(budget_s=budget_s or 0.2, min_samples=5, max_samples=1000)
