"""The counter sampler: the NVML backend against a stand-in pynvml (tests/fake_pynvml.py),
the CPU backend for real, RAPL against a fake powercap tree, and the per-point summary."""

from __future__ import annotations

import csv
import json
import time

import fake_pynvml as fake
import numpy as np
import pytest

from tritonlab.errors import UsageError
from tritonlab.hw import counters


@pytest.fixture
def nvml():
    fake.reset()
    yield fake
    fake.reset()


def _nvml_sampler(interval_s=0.02, **config):
    fake.reset(**config)
    return counters.Sampler(counters.NvmlBackend(nvml=fake), interval_s=interval_s)


def _busy(seconds: float) -> int:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n


# ------------------------------------------------------------------------- NVML: energy

def test_energy_by_counter_and_by_integration_agree_with_the_true_energy(nvml):
    s = _nvml_sampler(power_w=100.0)
    with s:
        with s.phase("idle") as idle:
            time.sleep(1.0)
        fake.set_load(power_w=400.0)
        with s.phase("busy", kind="train") as busy:
            time.sleep(1.2)
    for ph, watts in ((idle, 100.0), (busy, 400.0)):
        e = s.summarize(ph)["energy"]
        truth = watts * ph.seconds
        # The counter moves in 100 ms steps: its difference is within one step of power.
        assert abs(e["counter_j"] - truth) <= watts * 0.1 + 1.0, (ph.name, e, truth)
        assert e["source"] == "counter" and e["j"] == e["counter_j"]
        # Instant power is exact here, so the integral is close to the truth ...
        assert e["integrated_from"] == "power_instant_w"
        assert e["integrated_j"] == pytest.approx(truth, rel=0.03)
        # ... and the reported disagreement is the two numbers' actual difference.
        assert e["disagreement_pct"] == pytest.approx(
            100 * (e["integrated_j"] - e["counter_j"]) / e["counter_j"])
        assert e["counter_resolution_pct"] == pytest.approx(100 * 0.1 / ph.seconds)
    summary = s.summarize(busy)
    assert summary["power"]["source"] == "power_instant_w"
    assert summary["power"]["mean_w"] == pytest.approx(400.0)
    # The driver's 1 s average lags the step from 100 W to 400 W: its mean is in between.
    assert 100.0 < summary["metrics"]["power_w"]["mean"] < 400.0


def test_energy_column_moves_only_with_the_counter_updates(nvml):
    s = _nvml_sampler(power_w=250.0)
    with s:
        time.sleep(0.8)
    ts = [r["t"] for r in s.samples]
    energy = [r["energy_j"] for r in s.samples]
    assert energy == sorted(energy) and energy[-1] > 0
    changes = [t for t, a, b in zip(ts[1:], energy, energy[1:]) if b != a]
    assert len(changes) >= 4
    # Between two updates the counter reads the same value for ~100 ms (5 samples of 20 ms):
    # it changes at most once per 100 ms boundary crossed, however late a sample comes.
    assert len(changes) <= (ts[-1] - ts[0]) / 0.1 + 1 < len(ts) / 2
    # Each step is 100 ms of 250 W = 25 J.
    steps = {round(b - a, 3) for a, b in zip(energy, energy[1:]) if b != a}
    assert all(abs(d - 25.0) < 0.5 or abs(d - 50.0) < 0.5 for d in steps), steps


def test_short_window_is_flagged_as_coarse(nvml):
    s = _nvml_sampler(power_w=300.0)
    with s:
        with s.phase("blip") as ph:
            time.sleep(0.05)
    e = s.summarize(ph)["energy"]
    # A 50 ms window can read 0 or one 100 ms step of the counter: never trusted silently.
    assert e["counter_j"] in (pytest.approx(0.0), pytest.approx(30.0, abs=1.0))
    assert "coarse" in e["note"]


# ------------------------------------------------------------- NVML: unavailable metrics

def test_metrics_the_device_lacks_are_null_with_the_reason_never_zero(nvml, tmp_path):
    s = _nvml_sampler(unsupported={"nvmlDeviceGetTotalEnergyConsumption",
                                   "field:186", "nvmlDeviceGetCurrentClocksEventReasons"},
                      gpm=False, power_w=150.0)
    with s:
        with s.phase("work") as ph:
            time.sleep(0.4)
    why = s.unavailable
    assert "Not Supported" in why["energy_j"] and "TotalEnergy" in why["energy_j"]
    assert "POWER_INSTANT" in why["power_instant_w"]
    assert "Hopper" in why["gpm_sm_util_pct"]
    assert all(r["energy_j"] is None and r["power_instant_w"] is None for r in s.samples)
    # The unsupported calls were made once (the probe), not on every sample.
    assert fake.state.calls["nvmlDeviceGetTotalEnergyConsumption"] == 1
    summary = s.summarize(ph)
    for name in ("energy_j", "power_instant_w", "gpm_sm_util_pct", "gpm_tensor_util_pct"):
        assert summary["metrics"][name] is None and summary["unavailable"][name]
    assert summary["throttle"] is None
    # Energy falls back to integrating the 1 s average power, and says so.
    e = summary["energy"]
    assert e["counter_j"] is None and e["source"] == "integrated"
    assert e["integrated_from"] == "power_w" and e["j"] > 0
    s.write_csv(tmp_path / "c.csv")
    with open(tmp_path / "c.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(r["energy_j"] == "" and r["gpm_sm_util_pct"] == "" for r in rows)
    assert all(float(r["power_w"]) > 0 for r in rows)


def test_throttle_time_counts_only_real_throttle_bits(nvml):
    s = _nvml_sampler(throttle=0x1)  # idle bit only: not throttling
    with s:
        with s.phase("cool") as cool:
            time.sleep(0.3)
        fake.set_load(throttle=0x4 | 0x20)  # SW power cap + SW thermal
        with s.phase("hot") as hot:
            time.sleep(0.3)
    assert s.summarize(cool)["throttle"]["throttled_pct"] == 0.0
    t = s.summarize(hot)["throttle"]
    assert t["throttled_pct"] == 100.0
    assert t["throttled_s"] == pytest.approx(hot.seconds)
    assert t["reasons"] == ["sw_power_cap", "sw_thermal"]


# -------------------------------------------------------------------------------- GPM

def test_gpm_pairs_are_100ms_apart_and_attributed_to_their_phase(nvml):
    s = _nvml_sampler(gpm_unsupported={fake.NVML_GPM_METRIC_ANY_TENSOR_UTIL},
                      sm_util=20.0, dram_util=70.0)
    with s:
        with s.phase("decode") as a:
            time.sleep(0.6)
        fake.set_load(sm_util=90.0, dram_util=30.0)
        with s.phase("prefill") as b:
            time.sleep(0.6)
        with s.phase("blip") as c:
            time.sleep(0.03)
    assert fake.state.short_pairs == []  # never asked for a pair under 100 ms
    assert len(fake.state.gpm_pairs) >= 8 and min(fake.state.gpm_pairs) >= 0.1
    # GPM values appear only on the samples that closed a pair, not on every sample.
    with_gpm = [r for r in s.samples if r.get("gpm_sm_util_pct") is not None]
    assert 0 < len(with_gpm) < len(s.samples) / 3
    sa, sb, sc = s.summarize(a), s.summarize(b), s.summarize(c)
    assert sa["metrics"]["gpm_sm_util_pct"]["mean"] == pytest.approx(20.0)
    assert sa["metrics"]["gpm_dram_bw_util_pct"]["mean"] == pytest.approx(70.0)
    assert sb["metrics"]["gpm_sm_util_pct"]["mean"] == pytest.approx(90.0)
    assert sb["metrics"]["gpm_dram_bw_util_pct"]["mean"] == pytest.approx(30.0)
    assert sa["metrics"]["gpm_tensor_util_pct"] is None
    assert "Not Supported" in sa["unavailable"]["gpm_tensor_util_pct"]
    assert sc["metrics"]["gpm_sm_util_pct"] is None
    assert "100 ms" in sc["unavailable"]["gpm_sm_util_pct"]
    # Windows that span a load change average it, weighted by time, like the driver.
    spanning = [v["gpm_sm_util_pct"] for x, y, v in s.gpm_windows
                if x < a.end_s < y and v["gpm_sm_util_pct"] is not None]
    assert all(20.0 <= v <= 90.0 for v in spanning)


# ----------------------------------------------------------------------- thread timing

@pytest.mark.parametrize("interval_ms", [20, 50])
def test_thread_samples_at_the_configured_interval_and_reports_its_cost(nvml, interval_ms):
    s = _nvml_sampler(interval_s=interval_ms / 1e3)
    with s:
        time.sleep(0.6)
    ts = np.array([r["t"] for r in s.samples])
    assert np.all(np.diff(ts) > 0)
    expected = 0.6 / (interval_ms / 1e3)
    assert 0.5 * expected <= len(ts) <= expected + 2
    o = s.overhead()
    assert o["n_samples"] == len(ts)
    assert interval_ms * 0.9 <= o["achieved_interval_ms"]["median"] <= interval_ms * 1.6
    assert 0 < o["sample_cost_us"]["mean"] < interval_ms * 1e3
    assert 0 <= o["duty_cycle_pct"] < 50 and 0 <= o["thread_cpu_pct"] < 100
    assert o["phase_edge_read_us"] is None and o["read_errors"] == {}


def test_phases_do_not_nest_and_need_a_running_sampler(nvml):
    s = _nvml_sampler()
    with pytest.raises(RuntimeError, match="start the sampler"):
        with s.phase("early"):
            pass
    with s:
        with s.phase("outer"):
            with pytest.raises(RuntimeError, match="do not nest"):
                with s.phase("inner"):
                    pass
    assert [p.name for p in s.phases] == ["outer"]
    assert {r["phase"] for r in s.samples} <= {"outer", None}
    s.stop()  # a second stop is harmless: NVML was shut down exactly once
    assert fake.state.initialized == 0
    with pytest.raises(UsageError):
        counters.Sampler(counters.CpuBackend(), interval_s=0)


def test_a_failing_thread_is_reported_at_stop():
    class Broken(counters.CpuBackend):
        def read(self):
            raise ValueError("sensor vanished")

    s = counters.Sampler(Broken(), interval_s=0.01)
    s.start()
    time.sleep(0.05)
    with pytest.raises(RuntimeError, match="sensor vanished"):
        s.stop()


# ----------------------------------------------------------------------- no NVML at all

@pytest.mark.parametrize("code", [fake.NVML_ERROR_LIBRARY_NOT_FOUND,
                                  fake.NVML_ERROR_NO_PERMISSION,
                                  fake.NVML_ERROR_DRIVER_NOT_LOADED])
def test_no_nvml_warns_and_falls_back_to_the_cpu_backend(code):
    fake.reset(init_error=code)
    warnings = []
    s = counters.open_sampler("auto", nvml=fake, warn=warnings.append)
    assert s.kind == "cpu"
    assert len(warnings) == 1 and str(fake.NVMLError(code)) in warnings[0]
    assert "CPU counters" in warnings[0]
    with pytest.raises(counters.CountersUnavailable):
        counters.open_sampler("nvml", nvml=fake)
    fake.reset()


def test_real_pynvml_without_a_gpu_falls_back_with_a_warning():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("NVML works here (a GPU machine): nothing to fall back from")
    warnings = []
    s = counters.open_sampler("auto", warn=warnings.append)
    assert s.kind == "cpu" and "NVML did not start" in warnings[0]


def test_device_chosen_by_uuid_falls_back_to_index(nvml):
    fake.reset(devices=2)
    be = counters.NvmlBackend(nvml=fake, uuid=fake.state.devices[1].uuid)
    assert be.handle is fake.state.devices[1]
    be.close()
    be = counters.NvmlBackend(nvml=fake, uuid="GPU-unknown", index=0)
    assert be.handle is fake.state.devices[0]
    info = be.info()
    assert info["name"] == "NVIDIA H100 80GB HBM3" and info["gpm"] is True
    assert info["power_limit_w"] == 700.0
    be.close()
    with pytest.raises(counters.CountersUnavailable, match="GPU-unknown"):
        counters.NvmlBackend(nvml=fake, uuid="GPU-unknown")
    assert fake.state.initialized == 0  # every init was matched by a shutdown


# ------------------------------------------------------------------------ CPU, for real

def test_cpu_backend_measures_this_process():
    import torch

    s = counters.open_sampler("cpu", interval_s=0.02)
    with s:
        with s.phase("idle") as idle:
            time.sleep(0.4)
        with s.phase("busy") as busy:
            _busy(0.5)
            keep = torch.ones(96 * 1024 * 1024 // 4)  # 96 MiB, touched
            time.sleep(0.1)
        del keep
    si, sb = s.summarize(idle), s.summarize(busy)
    assert s.kind == "cpu" and si["n_samples"] >= 8 and sb["n_samples"] >= 8
    # A spinning main thread shows as process CPU time; sleeping does not.
    assert sb["metrics"]["proc_cpu_pct"]["mean"] > si["metrics"]["proc_cpu_pct"]["mean"] + 20
    assert 0 <= sb["metrics"]["sys_cpu_pct"]["mean"] <= 100
    rss = sb["metrics"]["rss_mib"]
    assert rss["max"] - si["metrics"]["rss_mib"]["max"] > 64
    if "cpu_freq_mhz" not in s.unavailable:
        assert sb["metrics"]["cpu_freq_mhz"]["mean"] > 0
    for name in ("power_w", "energy_j", "temp_c"):
        if name in s.unavailable:
            assert sb["metrics"][name] is None and sb["unavailable"][name]
    info = s.backend.info()
    assert info["counters"] == "cpu" and info["logical_cpus"] >= 1


def _powercap(root, packages=(("intel-rapl:0", 1_000_000, 2**32),)):
    for zone, energy, span in packages:
        d = root / zone
        d.mkdir(parents=True)
        (d / "name").write_text(f"package-{zone[-1]}\n")
        (d / "energy_uj").write_text(f"{energy}\n")
        (d / "max_energy_range_uj").write_text(f"{span}\n")
    core = root / "intel-rapl:0:0"  # a sub-zone: part of the package, never added to it
    core.mkdir()
    (core / "name").write_text("core\n")
    (core / "energy_uj").write_text("5\n")
    (core / "max_energy_range_uj").write_text(f"{2**32}\n")


def test_rapl_sums_packages_and_survives_a_counter_wrap(tmp_path):
    span = 10_000_000
    _powercap(tmp_path, (("intel-rapl:0", 9_000_000, span), ("intel-rapl:1", 100, span)))
    rapl = counters.RaplReader(tmp_path)
    assert rapl.reason is None and len(rapl.zones) == 2
    assert rapl.read_j() == 0.0
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("500000\n")  # wrapped: +1.5 J
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("2000100\n")  # +2 J
    assert rapl.read_j() == pytest.approx(3.5)


def test_rapl_missing_or_unreadable_gives_a_reason(tmp_path):
    assert "not exposed" in counters.RaplReader(tmp_path / "absent").reason
    (tmp_path / "other").mkdir()
    assert "no RAPL package zone" in counters.RaplReader(tmp_path).reason


def test_cpu_backend_power_from_rapl(tmp_path):
    _powercap(tmp_path)
    be = counters.CpuBackend(powercap_root=tmp_path)
    assert "power_w" not in be.unavailable
    be.read()
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("3000000\n")  # +2 J
    t0 = time.perf_counter()
    time.sleep(0.05)
    row = be.read()
    assert row["energy_j"] == pytest.approx(2.0)
    assert 0 < row["power_w"] <= 2.0 / (time.perf_counter() - t0 - 0.01)


# -------------------------------------------------------------------- per-point summary

def test_point_summary_without_a_sampler_is_nulls_with_reasons():
    calls = []
    out = counters.point_summary(None, lambda: calls.append(1))
    assert calls == [] and out["counters"] is None
    for key in counters.POINT_KEYS:
        assert out[key] is None and out["unavailable"][key]


def test_point_summary_on_nvml_gives_power_energy_per_call_and_clock(nvml):
    s = _nvml_sampler(power_w=320.0, sm_clock_mhz=1755, sm_util=60.0)
    calls = []
    with s:
        out = counters.point_summary(s, lambda: calls.append(time.sleep(0.002)),
                                     min_seconds=0.5)
    assert out["counters"] == "nvml" and out["calls"] == len(calls) > 50
    assert out["avg_power_w"] == pytest.approx(320.0)
    assert out["sm_clock_mhz"] == 1755
    assert out["gpm_sm_util_pct"] == pytest.approx(60.0)
    assert out["energy_per_call_j"] == pytest.approx(out["energy_j"] / out["calls"])
    assert out["energy_j"] == pytest.approx(320.0 * out["seconds"], abs=320 * 0.1 + 1)
    assert out["throttled_pct"] == 0.0 and out["unavailable"] == {}
    json.dumps(out)


def test_point_window_on_cpu_names_what_the_cpu_lacks():
    s = counters.open_sampler("cpu")
    with s:
        with counters.point_window(s, label="pt") as pt:
            _busy(0.2)
            pt.calls = 10
    out = pt.summary
    assert out["counters"] == "cpu" and out["calls"] == 10
    assert out["sm_clock_mhz"] is None and "sm_clock_mhz" in out["unavailable"]["sm_clock_mhz"]
    assert out["throttled_pct"] is None and out["unavailable"]["throttled_pct"]
    if "power_w" in s.unavailable:
        assert out["avg_power_w"] is None and out["energy_per_call_j"] is None
        assert out["unavailable"]["energy_per_call_j"]


def test_sweep_hook_adds_a_counter_summary_to_timed_rows(nvml):
    s = _nvml_sampler(power_w=200.0)
    hook = counters.sweep_hook(s, min_seconds=0.3)
    row = {"op": "matmul", "impl": "triton", "mode": "fwd", "dtype": "float16",
           "shape": {"M": 64, "N": 64, "K": 64}}
    calls = []
    with s:
        assert hook(None, None, row, None) is None  # an untimed (failed) implementation
        out = hook(None, None, row, lambda: calls.append(time.sleep(0.001)))["counters"]
    assert out["calls"] == len(calls) > 0
    assert out["avg_power_w"] == pytest.approx(200.0)
    assert [p.name for p in s.phases] == ["matmul/triton/fwd/float16/64x64x64"]
    assert counters.sweep_hook(None)(None, None, row, lambda: None)["counters"]["counters"] \
        is None


def test_gpm_refused_by_the_driver_becomes_unavailable(nvml):
    s = _nvml_sampler(unsupported={"nvmlGpmSampleGet"})
    with s:
        with s.phase("work") as ph:
            time.sleep(0.3)
    summary = s.summarize(ph)
    assert summary["metrics"]["gpm_sm_util_pct"] is None
    assert "nvmlGpmSampleGet: Not Supported" in summary["unavailable"]["gpm_sm_util_pct"]
    assert fake.state.calls["nvmlGpmSampleGet"] == 1  # asked once, then left alone


def test_timeline_png_and_trace_from_nvml_counters(nvml, tmp_path):
    import matplotlib.image

    from tritonlab.report import timeline

    s = _nvml_sampler(power_w=80.0)
    with s:
        with s.phase("idle", kind="idle"):
            time.sleep(0.3)
        fake.set_load(power_w=500.0, sm_util=80.0, sm_clock_mhz=1700)
        with s.phase("train/torch/b64", kind="train", batch=64):
            time.sleep(0.4)
    png = timeline.plot_timeline(s, tmp_path / "t.png", title="fake H100")
    img = matplotlib.image.imread(png)
    assert img.shape[0] > 300 and img.std() > 0.01
    doc = json.loads(timeline.write_trace(s, tmp_path / "t.json",
                                          metadata={"device": "fake"}).read_text())
    events = doc["traceEvents"]
    power = [e for e in events if e["ph"] == "C" and e["name"] == "power (W)"]
    assert len(power) == len(s.samples)
    assert power[-1]["args"]["power_instant_w"] == 500.0
    assert power[-1]["args"]["power_limit_w"] == 700.0
    gpm = [e for e in events if e["name"] == "GPM (%)"]
    assert gpm and gpm[-1]["args"]["gpm_sm_util_pct"] == pytest.approx(80.0)
    (train,) = [e for e in events if e["ph"] == "X" and e["name"] == "train/torch/b64"]
    assert train["cat"] == "train" and train["args"] == {"batch": 64}
    assert train["dur"] == pytest.approx(s.phases[1].seconds * 1e6)
    assert doc["otherData"]["device"] == "fake" and doc["displayTimeUnit"] == "ms"


# ------------------------------------------------------------------- GPU lane (real NVML)

@pytest.mark.gpu
def test_real_nvml_sampler_sees_a_matmul_load(gpu):
    import torch

    props = torch.cuda.get_device_properties(gpu)
    uuid = str(props.uuid)
    s = counters.open_sampler("nvml", device_uuid=uuid if uuid.startswith("GPU-")
                              else f"GPU-{uuid}")
    a = torch.randn(8192, 8192, device=gpu, dtype=torch.bfloat16)
    with s:
        with s.phase("idle", kind="idle") as idle:
            time.sleep(1.5)
        with s.phase("matmul", kind="train") as busy:
            end = time.perf_counter() + 2.0
            while time.perf_counter() < end:
                for _ in range(10):
                    a @ a
                torch.cuda.synchronize()
        point = counters.point_summary(s, lambda: a @ a, min_seconds=1.0,
                                       sync=torch.cuda.synchronize)
    si, sb = s.summarize(idle), s.summarize(busy)
    assert sb["power"]["mean_w"] > si["power"]["mean_w"]
    assert sb["metrics"]["gpu_util_pct"]["mean"] > 50
    assert sb["metrics"]["sm_clock_mhz"]["mean"] > 0
    e = sb["energy"]
    assert e["counter_j"] > 0 and e["integrated_j"] > 0
    assert abs(e["disagreement_pct"]) < 25  # both measure the same 2 s of board energy
    if "gpm_tensor_util_pct" not in s.unavailable:  # Hopper and newer
        assert sb["metrics"]["gpm_tensor_util_pct"]["mean"] > si["metrics"][
            "gpm_tensor_util_pct"]["mean"]
    assert point["counters"] == "nvml" and point["energy_per_call_j"] > 0
    assert point["sm_clock_mhz"] > 0
    o = s.overhead()
    assert o["thread_cpu_pct"] < 50 and o["achieved_interval_ms"]["median"] < 40
