"""The timers (tritonlab/measure/timing.py): the CPU timer on callables of known duration here, the CUDA
timer (events, L2 flush, graph mode, host time, clocks) in the GPU lane."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from triton.testing import do_bench

from tritonlab.measure import timing
from tritonlab.measure.stats import StopRule
from tritonlab.measure.timing import CpuTimer, default_rule, make_timer


def spin(ms: float):
    """A callable that busy-waits ``ms`` milliseconds of wall time."""
    def fn():
        end = time.perf_counter() + ms / 1e3
        while time.perf_counter() < end:
            pass
    return fn


FAST = StopRule(rel_ci=0.02, budget_s=0.3, min_samples=8)


def test_cpu_timer_measures_a_known_duration():
    m = CpuTimer(cache="warm").measure({"a": spin(2.0)}, FAST)["a"]
    # The busy-wait lasts at least 2 ms; preemption on a busy machine only adds time, so
    # the least disturbed sample is the work itself.
    assert 2.0 <= min(m.samples_ms) < 2.3 and m.ms >= 2.0
    assert m.summary.ci[0] <= m.ms <= m.summary.ci[1]
    assert m.samples_ms == m.host_samples_ms and len(m.samples_ms) == m.summary.n >= 8
    assert m.stop_reason in ("ci", "budget") and m.timer == "perf_counter"
    assert m.launch_bound is None and m.settled


def test_interleaved_callables_alternate_and_keep_their_ratio():
    calls: list[str] = []

    def tagged(name, ms):
        inner = spin(ms)

        def fn():
            calls.append(name)
            inner()
        return fn

    out = CpuTimer(cache="warm").measure({"a": tagged("a", 1.0), "b": tagged("b", 2.0)}, FAST)
    assert min(out["b"].samples_ms) / min(out["a"].samples_ms) == pytest.approx(2.0, rel=0.15)
    reps = {k: m.reps for k, m in out.items()}
    timed = calls[2:]  # one warm-up call each, then the rounds
    size = reps["a"] + reps["b"]
    rounds = [timed[i:i + size] for i in range(0, len(timed), size)]
    first = ["a"] * reps["a"] + ["b"] * reps["b"]
    # The order flips every round, so neither always runs first.
    assert rounds[0::2] == [first] * len(rounds[0::2])
    assert rounds[1::2] == [first[::-1]] * len(rounds[1::2])
    assert len(out["a"].samples_ms) == reps["a"] * len(rounds)
    assert len(out["b"].samples_ms) == len(rounds)


def test_a_fast_callable_gets_more_calls_per_round_than_a_slow_one():
    out = CpuTimer(cache="warm").measure({"slow": spin(8.0), "fast": spin(0.25)}, FAST)
    assert out["slow"].reps == 1
    # About 8 / 0.25 = 32, give or take the preemption of a warm-up call; never above the cap.
    assert 2 <= out["fast"].reps <= timing.MAX_REPS
    assert len(out["fast"].samples_ms) == out["fast"].reps * len(out["slow"].samples_ms)


def test_warm_up_runs_until_tuning_is_done_and_no_tuning_is_timed():
    activity = {"n": 0}
    calls = {"n": 0}

    def tuning_fn():
        # The first three calls "autotune": slow, and they move the activity counter.
        calls["n"] += 1
        if calls["n"] <= 3:
            activity["n"] += 1
            spin(30.0)()
        else:
            spin(1.0)()

    m = CpuTimer(cache="warm").measure({"k": tuning_fn}, FAST, lambda: activity["n"])["k"]
    assert m.warmup_calls == 4  # three tuning calls, then one quiet call
    assert m.settled
    assert max(m.samples_ms) < 20.0


def test_tuning_inside_the_window_is_flagged():
    activity = {"n": 0}
    calls = {"n": 0}

    def late_tuner():
        calls["n"] += 1
        if calls["n"] == 5:
            activity["n"] += 1

    m = CpuTimer(cache="warm").measure({"k": late_tuner}, FAST, lambda: activity["n"])["k"]
    assert not m.settled


def test_budget_bounds_a_noisy_measurement():
    import random

    rng = random.Random(0)

    def noisy():
        spin(rng.uniform(0.2, 2.0))()

    rule = StopRule(rel_ci=0.001, budget_s=0.25, min_samples=5)
    t0 = time.perf_counter()
    m = CpuTimer(cache="warm").measure({"n": noisy}, rule)["n"]
    elapsed = time.perf_counter() - t0
    assert m.stop_reason == "budget"
    assert 0.25 <= elapsed < 1.0


def test_budget_is_per_callable_when_interleaved():
    rule = StopRule(rel_ci=1e-9, budget_s=0.15, min_samples=5)
    t0 = time.perf_counter()
    out = CpuTimer(cache="warm").measure({"a": spin(0.5), "b": spin(0.5), "c": spin(0.5)}, rule)
    elapsed = time.perf_counter() - t0
    assert {m.stop_reason for m in out.values()} == {"budget"}
    assert 0.45 <= elapsed < 1.2


def test_cold_cache_flushes_before_every_timed_call():
    flushes = {"n": 0}
    calls = {"n": 0}

    class Counting(CpuTimer):
        def _flush(self):
            flushes["n"] += 1

    def fn():
        calls["n"] += 1

    timer = Counting(cache="cold")
    m = timer.measure({"f": fn}, FAST)["f"]
    assert flushes["n"] == len(m.samples_ms) == calls["n"] - m.warmup_calls
    assert timer.flush_bytes >= 2 * 1024 * 1024  # twice the largest CPU cache
    assert timer.describe()["flush_bytes"] == timer.flush_bytes


def test_cold_cpu_flush_writes_its_buffer():
    timer = CpuTimer(cache="cold")
    timer._flush()
    assert timer._buffer.numel() * 4 == timer.flush_bytes
    timer._buffer.fill_(7)
    timer._flush()
    assert int(timer._buffer.abs().sum()) == 0


def test_factories_and_bad_options():
    cpu = make_timer("interpreter")
    assert isinstance(cpu, CpuTimer) and cpu.cache == "warm"
    assert make_timer("interpreter", cache="cold").cache == "cold"
    with pytest.raises(ValueError, match="cuda backend"):
        make_timer("interpreter", graph=True)
    with pytest.raises(ValueError, match="cache"):
        CpuTimer(cache="lukewarm")
    assert default_rule("cuda").budget_s == 1.0 and default_rule("cuda").rel_ci == 0.01
    assert default_rule("interpreter", 0.05).budget_s == 0.05
    assert CpuTimer().measure({}, FAST) == {}


def test_gpu_clocks_are_none_without_nvml():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: covered by test_cuda_timer_records_clocks")
    assert timing.gpu_clocks(0) is None


class RangeRecorder:
    """A :class:`~tritonlab.measure.timing.RangeMarker` that keeps what it was asked to do."""

    def __init__(self):
        self.events: list[tuple[str, str | None]] = []

    def push(self, name):
        self.events.append(("push", name))

    def pop(self):
        self.events.append(("pop", None))


def test_timed_calls_run_inside_named_ranges():
    recorder = RangeRecorder()
    calls = {"a": 0, "b": 0}

    def count(name):
        def fn():
            calls[name] += 1
        return fn

    timer = CpuTimer(marker=recorder)
    out = timer.measure({"a": count("a"), "b": count("b")}, FAST,
                        ranges={"a": "tritonlab:x/a/fwd/float32/1x2x3"})
    pushes = [name for what, name in recorder.events if what == "push"]
    # "b" has no range name given: it falls back to its own name.
    assert set(pushes) == {"tritonlab:x/a/fwd/float32/1x2x3", "b"}
    assert [what for what, _ in recorder.events] == ["push", "pop"] * len(pushes)
    rounds = len(out["a"].samples_ms) // out["a"].reps
    assert pushes.count("b") == rounds == len(out["b"].samples_ms) // out["b"].reps
    # Warm-up calls are outside every range.
    assert calls["a"] == out["a"].warmup_calls + len(out["a"].samples_ms)


def test_the_interpreter_timer_marks_nothing(monkeypatch):
    def refuse(*args):
        raise AssertionError("an NVTX call on the interpreter")

    monkeypatch.setattr(torch.cuda.nvtx, "range_push", refuse)
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", refuse)
    timer = make_timer("interpreter")
    assert timer.marker is None
    timer.measure({"f": lambda: None}, FAST)


# ---------------------------------------------------------------------------- GPU lane

def _cuda_spin(cycles: int):
    return lambda: torch.cuda._sleep(cycles)


@pytest.mark.gpu
def test_cuda_timer_measures_device_time_proportionally(gpu):
    timer = make_timer("cuda", cache="warm")
    rule = StopRule(rel_ci=0.01, budget_s=1.0, min_samples=20)
    out = timer.measure({"one": _cuda_spin(1_000_000), "two": _cuda_spin(2_000_000)}, rule)
    assert out["two"].ms / out["one"].ms == pytest.approx(2.0, rel=0.05)
    # The spin-cycle calibration predicts the absolute time too.
    assert out["one"].ms == pytest.approx(1_000_000 / timer._cycles_per_ms, rel=0.1)
    for m in out.values():
        assert m.timer == "cuda_events" and m.launch_bound is False
        assert len(m.host_samples_ms) == len(m.samples_ms)
        assert m.host_median_ms < m.ms


@pytest.mark.gpu
def test_flush_buffer_is_at_least_twice_l2(gpu):
    timer = make_timer("cuda", cache="cold")
    l2 = torch.cuda.get_device_properties(torch.cuda.current_device()).L2_cache_size
    assert timer.l2_bytes == l2 > 0
    assert timer.flush_bytes >= 2 * l2
    assert timer._buffer.numel() * timer._buffer.element_size() >= 2 * l2
    assert make_timer("cuda", cache="warm")._buffer is None


@pytest.mark.gpu
def test_cold_cache_reads_are_slower_than_warm(gpu):
    # 16 MB fits in the L2 of an A100/H100 (40-50 MB): warm reads come from L2.
    x = torch.randn(4 * 1024 * 1024, device="cuda")
    rule = StopRule(rel_ci=0.01, budget_s=0.5, min_samples=50)
    cold = make_timer("cuda", cache="cold").measure({"sum": x.sum}, rule)["sum"]
    warm = make_timer("cuda", cache="warm").measure({"sum": x.sum}, rule)["sum"]
    assert warm.ms < cold.ms


@pytest.mark.gpu
def test_launch_bound_flag(gpu):
    one = torch.ones(1, device="cuda")

    def many_tiny():
        for _ in range(50):
            one.add_(0.0)

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    rule = StopRule(rel_ci=0.02, budget_s=0.5, min_samples=10)
    out = make_timer("cuda").measure({"tiny": many_tiny, "big": lambda: a @ a}, rule)
    assert out["tiny"].launch_bound is True
    assert out["big"].launch_bound is False
    # The spin cover keeps host launch time out of the device window: 50 adds take far
    # less GPU time than the host needs to issue them.
    assert out["tiny"].ms < out["tiny"].host_median_ms


@pytest.mark.gpu
def test_graph_mode_matches_eager_and_cuts_host_time(gpu):
    from tritonlab.kernels.matmul import matmul

    a = torch.randn(1024, 1024, device="cuda", dtype=torch.float16)
    b = torch.randn(1024, 1024, device="cuda", dtype=torch.float16)
    out = torch.empty(1024, 1024, device="cuda", dtype=torch.float16)
    fn = lambda: matmul(a, b, out=out)  # noqa: E731
    rule = StopRule(rel_ci=0.01, budget_s=0.5, min_samples=20)
    eager = make_timer("cuda", cache="cold").measure({"mm": fn}, rule)["mm"]
    graph = make_timer("cuda", cache="cold", graph=True).measure({"mm": fn}, rule)["mm"]
    assert graph.graph is True and graph.graph_error is None and eager.graph is False
    assert graph.ms == pytest.approx(eager.ms, rel=0.1)
    assert graph.host_median_ms < eager.host_median_ms
    torch.testing.assert_close(out, (a.float() @ b.float()).half(), rtol=2e-2, atol=2e-2)


_CAPTURE_FAILURE = """
import json, torch
from tritonlab.measure.stats import StopRule
from tritonlab.measure.timing import make_timer
x = torch.ones(4, device="cuda")
m = make_timer("cuda", graph=True).measure(
    {"sync": lambda: x.sum().item()}, StopRule(budget_s=0.2, min_samples=5))["sync"]
y = (x * 2).sum().item()  # the process can still use the GPU after the failed capture
print(json.dumps({"graph": m.graph, "graph_error": m.graph_error, "ms": m.ms, "y": y}))
"""


@pytest.mark.gpu
def test_graph_capture_failure_falls_back_to_eager(gpu):
    # In a subprocess: a failed capture must not leave this test process's CUDA context
    # in doubt for the tests that follow.
    r = subprocess.run([sys.executable, "-c", _CAPTURE_FAILURE], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["graph"] is False and doc["graph_error"]  # a host sync cannot be captured
    assert doc["ms"] > 0 and doc["y"] == 8.0


@pytest.mark.gpu
def test_no_autotuning_inside_the_timed_window(gpu):
    from tritonlab.kernels.matmul import matmul
    from tritonlab.kernels.tuning import TUNING_LOG, autotune_enabled
    from tritonlab.runs.sweep import _activity

    if not autotune_enabled():
        pytest.skip("TRITONLAB_AUTOTUNE=0")
    # An odd shape nobody tuned yet in this process: the first warm-up call tunes.
    a = torch.randn(1000, 1016, device="cuda", dtype=torch.float16)
    b = torch.randn(1016, 1032, device="cuda", dtype=torch.float16)
    before = len(TUNING_LOG)
    m = make_timer("cuda").measure({"mm": lambda: matmul(a, b)}, FAST, _activity)["mm"]
    assert len(TUNING_LOG) == before + 1
    assert m.settled and m.warmup_calls >= 3


@pytest.mark.gpu
def test_cuda_timer_records_clocks(gpu):
    pytest.importorskip("pynvml")
    c = make_timer("cuda").clocks()
    if c is None:
        pytest.skip("NVML is not usable in this container")
    assert c["sm_clock_mhz"] and c["sm_clock_mhz"] > 100
    assert isinstance(c["throttle_reasons"], int)


@pytest.mark.gpu
def test_lab_timer_agrees_with_triton_do_bench(gpu):
    """The lab's matmul at 4096^3 fp16, timed by the lab's timer and by Triton's own
    ``do_bench`` (both flush the L2 before each call): the medians agree within 5%."""
    from tritonlab.kernels import matmul

    gen = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16, generator=gen)
    b = torch.randn(4096, 4096, device="cuda", dtype=torch.float16, generator=gen)

    def run():
        return matmul(a, b)

    lab = make_timer("cuda", cache="cold").measure(
        {"mm": run}, StopRule(rel_ci=0.005, budget_s=2.0, min_samples=50))["mm"]
    theirs = do_bench(run, warmup=100, rep=1000, return_mode="median")
    assert lab.ms == pytest.approx(theirs, rel=0.05), (lab.ms, theirs)
