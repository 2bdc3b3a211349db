"""The sampling thread, the named windows (phases) of a run, and their statistics.

A background thread samples a backend every ``interval_s`` (20 ms by default: the driver
refreshes most values no faster; docs/reference.md, "NVML and GPM").
``with sampler.phase("train"): ...`` marks a named window; :meth:`Sampler.summarize` turns a
window into statistics. Energy per window is measured twice: by differencing the energy
counter (read synchronously at the window's edges) and by integrating the power samples; the
disagreement is reported, never hidden. A metric the device lacks is ``None`` with the reason
in ``unavailable``, never 0. The sampler times itself: :meth:`Sampler.overhead` reports the
cost of each sample, the thread's CPU time and the interval actually achieved.
"""

from __future__ import annotations

import csv
import io
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tritonlab.errors import UsageError
from tritonlab.hw.counters.cpu_backend import CpuBackend
from tritonlab.hw.counters.metrics import (
    DEFAULT_INTERVAL_S,
    GPM_METRICS,
    GPM_MIN_PAIR_S,
    POWERCAP_ROOT,
    CountersUnavailable,
)
from tritonlab.hw.counters.nvml_backend import NvmlBackend
from tritonlab.hw.nvml import THROTTLE_MASK, throttle_names


@dataclass
class Phase:
    """A named window of the run (times in seconds since the sampler started)."""

    name: str
    kind: str
    start_s: float
    end_s: float | None = None
    energy_start_j: float | None = None
    energy_end_j: float | None = None
    meta: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return (self.end_s if self.end_s is not None else math.nan) - self.start_s


def _stats(values: list[float]) -> dict:
    arr = np.asarray(values, dtype=float)
    return {"mean": float(arr.mean()), "p95": float(np.percentile(arr, 95)),
            "min": float(arr.min()), "max": float(arr.max()), "first": float(arr[0]),
            "last": float(arr[-1]), "n": int(arr.size)}


class Sampler:
    """Samples ``backend`` on a background thread every ``interval_s`` seconds.

    Use as a context manager (or :meth:`start` / :meth:`stop`); mark windows with
    :meth:`phase`. ``samples`` holds one dict per sample: ``t`` (seconds since start),
    ``phase`` (the window open at that moment, or None) and one value per metric (None when
    it could not be read). GPM values appear only on the samples that complete a GPM pair;
    ``gpm_windows`` lists those pairs with their time span.
    """

    def __init__(self, backend, *, interval_s: float = DEFAULT_INTERVAL_S):
        if not interval_s > 0:
            raise UsageError(f"the sampling interval must be positive, got {interval_s} s")
        self.backend = backend
        self.interval_s = float(interval_s)
        self.samples: list[dict] = []
        self.gpm_windows: list[tuple[float, float, dict]] = []
        self.phases: list[Phase] = []
        self.origin = None
        self.origin_unix = None
        self._current: Phase | None = None
        self._costs: list[float] = []
        self._boundary_costs: list[float] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread_cpu_s = 0.0
        self._elapsed_s = 0.0

    # -- lifecycle
    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def metric_names(self) -> list[str]:
        return [m.name for m in self.backend.metrics]

    @property
    def unavailable(self) -> dict[str, str]:
        return dict(self.backend.unavailable)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def now(self) -> float:
        return time.perf_counter() - self.origin

    def start(self) -> Sampler:
        if self._thread is not None:
            raise RuntimeError("a Sampler starts once")
        self.origin = time.perf_counter()
        self.origin_unix = time.time()
        self._thread = threading.Thread(target=self._run, name="tritonlab-counters",
                                         daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and release the backend (once); re-raises a failure of the
        thread."""
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        self._elapsed_s = self.now()
        self.backend.close()
        if self._error is not None:
            raise RuntimeError(f"the counter sampler failed: {self._error!r}") from self._error

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        cpu0 = time.thread_time()
        next_t = time.perf_counter()
        try:
            while True:
                t0 = time.perf_counter()
                current = self._current
                row = {"t": t0 - self.origin, "phase": current.name if current else None}
                row.update(self.backend.read())
                pair = self.backend.gpm_poll(t0)
                if pair is not None:
                    start, end, values = pair
                    row.update(values)
                    self.gpm_windows.append((start - self.origin, end - self.origin, values))
                t1 = time.perf_counter()
                self.samples.append(row)
                self._costs.append(t1 - t0)
                next_t += self.interval_s
                if next_t <= t1:  # fell behind by a whole interval: skip, never burst
                    next_t = t1 + self.interval_s
                if self._stop.wait(next_t - t1):
                    break
        except BaseException as exc:  # surfaced by stop(); a dead thread must not go unseen
            self._error = exc
        finally:
            self._thread_cpu_s = time.thread_time() - cpu0

    # -- phases
    def _energy(self) -> float | None:
        t0 = time.perf_counter()
        value = self.backend.energy_counter_j()
        self._boundary_costs.append(time.perf_counter() - t0)
        return value

    @contextmanager
    def phase(self, name: str, kind: str | None = None, **meta) -> Iterator[Phase]:
        """Mark a window; the energy counter is read at both edges. Windows do not nest.
        On a GPU, synchronise the device before the window closes, so that its work is
        inside it."""
        if not self.running:
            raise RuntimeError("start the sampler before opening a phase")
        if self._current is not None:
            raise RuntimeError(f"phase {name!r} opened inside phase {self._current.name!r}; "
                               f"phases do not nest")
        ph = Phase(name=name, kind=kind or name, start_s=0.0, meta=dict(meta))
        ph.energy_start_j = self._energy()
        ph.start_s = self.now()
        self._current = ph
        try:
            yield ph
        finally:
            ph.end_s = self.now()
            ph.energy_end_j = self._energy()
            self._current = None
            self.phases.append(ph)

    # -- analysis
    def samples_between(self, t0: float, t1: float) -> list[dict]:
        return [s for s in list(self.samples) if t0 <= s["t"] <= t1]

    def power_metric(self) -> str | None:
        """The power series to integrate and quote: instant power where the device has it
        (the driver's average lags by up to a second), else the average."""
        names = self.metric_names
        for name in ("power_instant_w", "power_w"):
            if name in names and name not in self.backend.unavailable:
                return name
        return None

    def summarize(self, ph: Phase) -> dict:
        """Statistics of one closed phase: per metric mean / p95 / min / max / first / last,
        power, energy (counter and integral, and their disagreement), temperature change and
        time throttled. A metric without a value is None with its reason in ``unavailable``."""
        if ph.end_s is None:
            raise RuntimeError(f"phase {ph.name!r} is still open")
        t0, t1 = ph.start_s, ph.end_s
        rows = self.samples_between(t0, t1)
        unavailable = {k: v for k, v in self.backend.unavailable.items()}
        metrics: dict[str, dict | None] = {}
        gpm_names = {m.name for m in GPM_METRICS}
        for name in self.metric_names:
            if name == "throttle_reasons":  # a bitmask: summarised by _throttle, not averaged
                continue
            if name in gpm_names:
                metrics[name] = self._gpm_stats(name, t0, t1, unavailable)
                continue
            values = [r[name] for r in rows if r.get(name) is not None]
            metrics[name] = _stats(values) if values else None
            if not values and name not in unavailable:
                if rows:
                    unavailable[name] = "every read failed during this phase"
                else:
                    unavailable[name] = (f"no sample in this {t1 - t0:.3f} s phase "
                                         f"(interval {self.interval_s * 1e3:.0f} ms)")
        power = None
        pname = self.power_metric()
        if pname and metrics.get(pname):
            m = metrics[pname]
            power = {"source": pname, "mean_w": m["mean"], "p95_w": m["p95"], "max_w": m["max"]}
        return {
            "name": ph.name, "kind": ph.kind, "meta": ph.meta,
            "start_s": t0, "end_s": t1, "seconds": t1 - t0, "n_samples": len(rows),
            "metrics": metrics,
            "power": power,
            "energy": self._energy_summary(ph, rows, pname, unavailable),
            "temperature": self._temperature(metrics.get("temp_c")),
            "throttle": self._throttle(rows, t1 - t0),
            "unavailable": unavailable,
        }

    def _gpm_stats(self, name: str, t0: float, t1: float, unavailable: dict) -> dict | None:
        if name in unavailable:
            return None
        windows = [(a, b, v[name]) for a, b, v in self.gpm_windows
                   if a >= t0 and b <= t1 and v.get(name) is not None]
        if not windows:
            unavailable[name] = (f"no GPM pair (>= {GPM_MIN_PAIR_S * 1e3:.0f} ms) fits in this "
                                 f"{t1 - t0:.3f} s phase")
            return None
        weights = np.array([b - a for a, b, _ in windows])
        values = np.array([v for _, _, v in windows])
        return {"mean": float((weights * values).sum() / weights.sum()),
                "p95": float(np.percentile(values, 95)), "min": float(values.min()),
                "max": float(values.max()), "first": float(values[0]),
                "last": float(values[-1]), "n": len(windows)}

    def _energy_summary(self, ph: Phase, rows: list[dict], pname: str | None,
                        unavailable: dict) -> dict:
        seconds = ph.end_s - ph.start_s
        counter = None
        if ph.energy_start_j is not None and ph.energy_end_j is not None:
            counter = ph.energy_end_j - ph.energy_start_j
        integrated = None
        points = [(r["t"], r[pname]) for r in rows if pname and r.get(pname) is not None]
        if len(points) >= 2:
            ts = np.array([p[0] for p in points])
            ps = np.array([p[1] for p in points])
            # Trapezoids between samples, the edge values held out to the window's edges.
            integrated = float(np.sum((ps[1:] + ps[:-1]) * np.diff(ts)) / 2
                               + ps[0] * (ts[0] - ph.start_s) + ps[-1] * (ph.end_s - ts[-1]))
        elif pname:
            unavailable.setdefault("energy_integrated_j",
                                   "fewer than 2 power samples in this phase")
        disagreement = None
        if counter is not None and integrated is not None and counter > 0:
            disagreement = 100.0 * (integrated - counter) / counter
        update = self.backend.energy_update_s
        resolution = 100.0 * update / seconds if counter is not None and seconds > 0 else None
        best, source = (counter, "counter") if counter is not None else (integrated, "integrated")
        note = None
        if counter is not None and seconds < 10 * update:
            note = (f"window of {seconds:.3f} s is under 10 updates of the energy counter "
                    f"({update * 1e3:.0f} ms): the counter difference is coarse")
        return {"j": best, "source": source if best is not None else None,
                "counter_j": counter, "integrated_j": integrated,
                "integrated_from": pname if integrated is not None else None,
                "disagreement_pct": disagreement, "counter_resolution_pct": resolution,
                "note": note}

    @staticmethod
    def _temperature(stats: dict | None) -> dict | None:
        if stats is None:
            return None
        return {"start_c": stats["first"], "end_c": stats["last"], "max_c": stats["max"],
                "rise_c": stats["last"] - stats["first"],
                "max_rise_c": stats["max"] - stats["first"]}

    def _throttle(self, rows: list[dict], seconds: float) -> dict | None:
        bits = [int(r["throttle_reasons"]) for r in rows if r.get("throttle_reasons") is not None]
        if not bits:
            return None
        throttled = sum(1 for b in bits if b & THROTTLE_MASK)
        seen = 0
        for b in bits:
            seen |= b
        share = throttled / len(bits)
        return {"throttled_pct": 100.0 * share, "throttled_s": share * seconds,
                "reasons": throttle_names(seen), "bitmask_seen": seen}

    def overhead(self) -> dict:
        """What the sampler itself cost: the time of each sample (the thread holds the GIL
        for part of it), the thread's CPU time as a share of one core, the interval actually
        achieved, and the cost of the energy reads at phase edges (on the caller's thread)."""
        elapsed = self._elapsed_s or (self.now() if self.origin is not None else 0.0)
        costs = np.array(self._costs) if self._costs else np.zeros(1)
        ts = np.array([s["t"] for s in list(self.samples)])
        gaps = np.diff(ts) * 1e3 if ts.size > 1 else None
        edge = np.array(self._boundary_costs) if self._boundary_costs else None
        return {
            "interval_ms": self.interval_s * 1e3,
            "n_samples": len(self._costs),
            "elapsed_s": elapsed,
            "achieved_interval_ms": (None if gaps is None else
                                     {"median": float(np.median(gaps)),
                                      "p95": float(np.percentile(gaps, 95)),
                                      "max": float(gaps.max())}),
            "sample_cost_us": {"mean": float(costs.mean() * 1e6),
                               "p95": float(np.percentile(costs, 95) * 1e6),
                               "max": float(costs.max() * 1e6)},
            "duty_cycle_pct": 100.0 * float(np.sum(self._costs)) / elapsed if elapsed else None,
            "thread_cpu_pct": (100.0 * self._thread_cpu_s / elapsed
                               if elapsed and not self.running else None),
            "phase_edge_read_us": None if edge is None else float(edge.mean() * 1e6),
            "read_errors": dict(self.backend.errors),
        }

    def write_csv(self, path: str | Path) -> Path:
        """counters.csv: t_s, time_unix, phase, then one column per metric (empty = no
        value; the reason is in contrast.json / the summary's ``unavailable``)."""
        path = Path(path)
        path.write_text(self.csv_text(), newline="")
        return path

    def csv_text(self, *, header: bool = True, t_offset_s: float = 0.0) -> str:
        """The text of :meth:`write_csv`; ``t_offset_s`` is added to ``t_s`` (a resumed run
        keeps the time axis of its first part)."""
        names = self.metric_names
        buf = io.StringIO()
        w = csv.writer(buf)
        if header:
            w.writerow(["t_s", "time_unix", "phase", *names])
        for s in list(self.samples):
            w.writerow([f"{s['t'] + t_offset_s:.6f}", f"{self.origin_unix + s['t']:.6f}",
                        s["phase"] or "", *(_cell(s.get(n)) for n in names)])
        return buf.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{value:.6g}"


def open_sampler(kind: str = "auto", *, interval_s: float = DEFAULT_INTERVAL_S,
                 device_index: int | None = None, device_uuid: str | None = None,
                 device_pci_bus_id: str | None = None, nvml=None,
                 powercap_root: str | Path = POWERCAP_ROOT,
                 warn: Callable[[str], None] | None = None) -> Sampler:
    """A (not yet started) sampler. ``kind``: ``nvml``, ``cpu``, or ``auto`` (NVML, else a
    warning through ``warn`` and the CPU backend). The GPU is named by ``device_uuid``,
    ``device_pci_bus_id`` and NVML ``device_index`` (:func:`tritonlab.hw.nvml.find_device`)."""
    if kind not in ("auto", "nvml", "cpu"):
        raise UsageError(f"unknown counter backend {kind!r}; choose one of: auto, nvml, cpu")
    if kind == "cpu":
        return Sampler(CpuBackend(powercap_root=powercap_root), interval_s=interval_s)
    try:
        be = NvmlBackend(index=device_index, uuid=device_uuid, pci_bus_id=device_pci_bus_id,
                         nvml=nvml)
    except CountersUnavailable as exc:
        if kind == "nvml":
            raise
        if warn is not None:
            warn(f"warning: no GPU counters ({exc}); sampling CPU counters (psutil, RAPL) "
                 f"instead")
        return Sampler(CpuBackend(powercap_root=powercap_root), interval_s=interval_s)
    return Sampler(be, interval_s=interval_s)

