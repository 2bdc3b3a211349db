"""`tritonlab contrast`: option checking, the per-phase rows and the verdict (on counters
from the stand-in pynvml, so the GPU path is exercised without a GPU), and the run end to
end on the CPU backend, with the lab's workloads, with every output file validated."""

from __future__ import annotations

import csv
import json
import math
import time
from contextlib import contextmanager

import fake_pynvml as fake
import pytest
import torch
from click.testing import CliRunner
from conftest import run_cli

from tritonlab import contrast
from tritonlab.cli import cli
from tritonlab.contrast import plan as plan_mod
from tritonlab.errors import UsageError
from tritonlab.hw import counters
from tritonlab.workloads.model import MLPConfig

# ------------------------------------------------------------------------------ options

def test_plan_fills_backend_defaults():
    plan, warnings = contrast.make_plan("interpreter")
    assert plan.model_size == "tiny" and plan.dtype == "float32" and warnings == []
    assert plan.batches[0] == 1 and plan.impls == ("triton", "torch")
    plan, _ = contrast.make_plan("cuda")
    assert plan.model_size == "base" and plan.dtype == "bfloat16" and max(plan.batches) >= 1024


@pytest.mark.parametrize("kwargs, message", [
    (dict(batches=(1, 0)), "positive integers"),
    (dict(batches=(-4,)), "positive integers"),
    (dict(duration_s=0), "--duration must be positive"),
    (dict(model_size="huge"), "valid sizes: tiny, small, base, large"),
    (dict(model_size="large"), "needs a GPU"),
    (dict(dtype="bfloat16"), "bfloat16 is wrong under the Triton interpreter"),
    (dict(impls=("cutlass",)), "valid impls: triton, torch"),
    (dict(modes=("serve",)), "valid modes: train, infer"),
    (dict(cooldown_s=-1), "--cooldown must be >= 0"),
    (dict(warmup_s=float("nan")), "--warmup must be >= 0 seconds and finite"),
    (dict(duration_s=float("inf")), "--duration must be positive"),
    (dict(interval_ms=0), "--interval-ms must be positive"),
])
def test_plan_refuses_bad_options(kwargs, message):
    with pytest.raises(UsageError, match=message):
        contrast.make_plan("interpreter", **kwargs)


def test_too_short_duration_is_lengthened_with_a_warning():
    plan, warnings = contrast.make_plan("interpreter", duration_s=0.3, idle_s=0.2)
    assert plan.duration_s == contrast.MIN_PHASE_S and plan.idle_s == contrast.MIN_PHASE_S
    assert len(warnings) == 2 and "energy counter" in warnings[0]


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "batch sizes must be positive"),
    (["--duration", "-1"], "--duration must be positive"),
    (["--model-size", "huge"], "valid sizes"),
    (["--counters", "nvml"], "NVML counters need the cuda backend"),
])
def test_cli_bad_input_exits_2_with_a_message(args, message, tmp_path):
    result = CliRunner().invoke(cli, ["contrast", *args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "error: " in result.stderr and message in result.stderr
    assert not (tmp_path / "run").exists()


def test_cli_unwritable_out_exits_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(cli, ["contrast", "--out", str(blocker / "run")])
    assert result.exit_code == 2 and "cannot write the run directory" in result.stderr
    result = CliRunner().invoke(cli, ["contrast", "--out", str(tmp_path)])  # not empty
    assert result.exit_code == 2 and "not an empty directory" in result.stderr


# -------------------------------------------------- rows and verdict on NVML (stand-in)

def _run(name, mode, impl, batch, ph, steps, step_s, flops):
    run = contrast.PhaseRun(name=name, mode=mode, impl=impl, batch=batch, phase=ph,
                            latencies_s=[step_s] * steps, flops_per_step=flops,
                            peak_mem_bytes=(3 if mode == "train" else 1) << 30)
    return run


def test_rows_and_verdict_from_nvml_counters():
    fake.reset(power_w=90.0, temp_c=35, sm_clock_mhz=1980, throttle=0x1)
    s = counters.Sampler(counters.NvmlBackend(nvml=fake), interval_s=0.02)
    with s:
        with s.phase("idle", kind="idle") as idle_ph:
            time.sleep(1.0)
        fake.set_load(power_w=620.0, sm_util=92.0, tensor_util=71.0, dram_util=35.0,
                      gpu_util=100, sm_clock_mhz=1755, throttle=0x4, temp_c=38)
        with s.phase("train/triton/b4096", kind="train") as train_ph:
            time.sleep(0.5)
            fake.set_load(temp_c=44)  # the board heats up during the phase
            time.sleep(0.5)
        fake.set_load(power_w=260.0, sm_util=38.0, tensor_util=9.0, dram_util=82.0,
                      gpu_util=100, sm_clock_mhz=1980, throttle=0x1, temp_c=40)
        with s.phase("infer/triton/b1", kind="infer") as infer_ph:
            time.sleep(1.0)
    idle = contrast.phase_row(s, idle_ph, None, None)
    assert idle["avg_power_w"] == pytest.approx(90.0)
    train = contrast.phase_row(s, train_ph, _run("train/triton/b4096", "train", "triton",
                                                 4096, train_ph, 20, 0.05, 10**12), 90.0)
    infer = contrast.phase_row(s, infer_ph, _run("infer/triton/b1", "infer", "triton", 1,
                                                 infer_ph, 2000, 0.0005, 10**7), 90.0)
    assert train["power_share_pct"] == pytest.approx(100 * 620 / 700)
    assert train["throughput_samples_s"] == pytest.approx(20 * 4096 / train["seconds"])
    assert train["tflops"] == pytest.approx(20 * 10**12 / train["seconds"] / 1e12)
    assert train["latency_p50_ms"] == pytest.approx(50.0)
    assert train["energy_per_sample_j"] == pytest.approx(train["energy_j"] / (20 * 4096))
    assert train["energy_per_flop_j"] == pytest.approx(train["energy_j"] / (20 * 10**12))
    assert train["energy_above_idle_j"] == pytest.approx(
        train["energy_j"] - 90.0 * train["seconds"])
    assert train["energy_j"] == pytest.approx(620 * train["seconds"], abs=62 + 1)
    assert train["gpm_tensor_util_pct"] == pytest.approx(71.0)
    assert train["throttled_pct"] == 100.0 and train["throttle_reasons"] == ["sw_power_cap"]
    assert train["temp_start_c"] == 38 and train["temp_rise_c"] == pytest.approx(6.0)
    assert train["sm_clock_min_mhz"] == 1755
    assert train["peak_mem_mib"] == 3 * 1024
    assert train["unavailable"] == {}  # every metric of this device was measured
    v = contrast.verdict([train, infer], counters="nvml", device="NVIDIA H100 80GB HBM3",
                         idle=idle)
    assert v["harder"] == "train" and v["decided_by"] == "power"
    res = {r["resource"]: r for r in v["resources"]}
    assert res["power"]["winner"] == "train"
    assert res["memory bandwidth"]["winner"] == "infer"
    assert res["memory bandwidth"]["metric"] == "gpm_dram_bw_util_pct"
    assert res["tensor cores"]["winner"] == "train"
    assert res["clocks"]["winner"] == "train"  # held down to 1755 MHz under training
    assert res["throttling"]["winner"] == "train"
    text = " ".join(v["explanation"])
    assert "620 W" in text and "260 W" in text and "train/triton/b4096" in text
    assert "busier resource is DRAM bandwidth" in text  # inference at batch 1
    assert "busier resource is tensor pipes" in text
    assert "Idle baseline: 90" in text and "Caution" not in text
    # The same rows as JSON: strict, with no NaN.
    json.loads(json.dumps([idle, train, infer, v]), parse_constant=_no_nan)


def _no_nan(token):
    raise AssertionError(f"non-standard JSON constant {token}")


def _row(name, mode, impl, batch, **values):
    return {"name": name, "mode": mode, "impl": impl, "batch": batch, **values}


def test_verdict_ties_and_falls_back_to_resource_count():
    rows = [_row("train/torch/b8", "train", "torch", 8, avg_power_w=300.0, proc_cpu_pct=99.0,
                 peak_mem_mib=900.0),
            _row("infer/torch/b8", "infer", "torch", 8, avg_power_w=290.0, proc_cpu_pct=60.0,
                 peak_mem_mib=300.0)]
    busy = {"name": "idle", "mode": "idle", "sys_cpu_pct": 97.0}
    v = contrast.verdict(rows, counters="cpu", device="cpu", idle=busy)
    assert any(line.startswith("Caution: the host was busy") for line in v["explanation"])
    # 300 vs 290 W is within 5%: power ties, so the resources won decide.
    assert v["resources"][0]["winner"] == "tie"
    assert v["harder"] == "train" and "power tied" in v["decided_by"]
    assert "CPU counters only" in v["label"] and "not a GPU" in v["label"]
    rows[0]["proc_cpu_pct"], rows[0]["peak_mem_mib"] = 60.0, 300.0
    assert contrast.verdict(rows, counters="cpu", device="cpu", idle=None)["harder"] == "tie"
    v = contrast.verdict(rows[:1], counters="cpu", device="cpu", idle=None)
    assert v["harder"] is None and "No measured infer phase" in v["explanation"][0]


def test_impl_comparison_ratios():
    rows = [_row("a", "infer", "triton", 1, throughput_samples_s=50.0, latency_p50_ms=2.0,
                 energy_per_sample_j=0.4, avg_power_w=100.0),
            _row("b", "infer", "torch", 1, throughput_samples_s=100.0, latency_p50_ms=1.0,
                 energy_per_sample_j=0.2, avg_power_w=100.0),
            _row("c", "train", "triton", 1, error="RuntimeError: OOM")]
    (c,) = contrast.impl_comparison(rows)
    assert (c["mode"], c["batch"], c["impl"], c["baseline"]) == ("infer", 1, "triton", "torch")
    assert c["throughput_ratio"] == 0.5 and c["latency_p50_ratio"] == 2.0
    assert c["energy_per_sample_ratio"] == 2.0 and c["avg_power_ratio"] == 1.0


# ---------------------------------------------------------------- end to end on the CPU

def _triton_fails(mode, cfg, *, impl, **kw):
    """The lab's workloads, except that building the triton impl fails like an OOM."""
    if impl == "triton":
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    return contrast.lab_workloads(mode, cfg, impl=impl, **kw)


def _lab_flops(mode, batch):
    from tritonlab.workloads.infer import InferenceWorkload
    from tritonlab.workloads.train import TrainingWorkload

    kind = TrainingWorkload if mode == "train" else InferenceWorkload
    return kind(MLPConfig.from_size("tiny"), impl="torch", dtype=torch.float32,
                device="cpu").flops(batch)


def check_run_dir(path, doc, *, flops_of):
    """Every output of a contrast run directory is valid and agrees with contrast.json."""
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["schema_version"] == 1 and manifest["kind"] == "contrast"
    assert manifest["status"] == "complete" and manifest["end_time"]
    assert manifest["device"]["name"] and manifest["backend"] == doc["backend"]
    assert manifest["counters"]["counters"] == doc["counters"]

    on_disk = json.loads((path / "contrast.json").read_text(), parse_constant=_no_nan)
    assert on_disk["schema_version"] == 1 and on_disk["run_id"] == manifest["run_id"]
    phases = on_disk["phases"]
    assert phases[0]["name"] == "idle" and phases[0]["mode"] == "idle"
    measured = [p for p in phases[1:] if not p.get("error")]
    assert measured
    labels = {"impl", "batch", "power_source", "energy_source", "peak_mem_source"}
    for p in phases:
        for key, value in p.items():
            if value is None and key not in labels:  # a measurement is never a silent null
                assert p["unavailable"].get(key), (p["name"], key)
    for p in measured:
        assert p["steps"] >= 1 and p["seconds"] >= on_disk["plan"]["duration_s"]
        assert p["throughput_samples_s"] == pytest.approx(p["steps"] * p["batch"] / p["seconds"])
        assert p["flops_per_step"] == flops_of(p["mode"], p["batch"])
        assert p["tflops"] == pytest.approx(p["steps"] * p["flops_per_step"] / p["seconds"]
                                            / 1e12)
        assert p["latency_p50_ms"] <= p["latency_p99_ms"]
        # The workload keeps the main thread busy; the idle baseline sleeps.
        assert p["proc_cpu_pct"] > phases[0]["proc_cpu_pct"] + 10
        assert p["peak_mem_mib"] > 0
    v = on_disk["verdict"]
    assert v["counters"] == "cpu" and "not a GPU" in v["label"]
    assert v["harder"] in ("train", "infer", "tie") and all(v["explanation"])
    overhead = on_disk["sampler"]["overhead"]
    assert overhead["n_samples"] > 10 and overhead["thread_cpu_pct"] is not None

    with open(path / "counters.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames[:3] == ["t_s", "time_unix", "phase"]
    assert reader.fieldnames[3:] == list(on_disk["sampler"]["metrics"])
    ts = [float(r["t_s"]) for r in rows]
    assert ts == sorted(ts)
    names = {p["name"] for p in phases}
    seen = {r["phase"] for r in rows}
    assert {p["name"] for p in measured} | {"idle"} <= seen
    assert all(r["phase"] == "" or r["phase"] in names or r["phase"].split(" ")[0] in
               ("warmup", "setup", "cooldown") for r in rows)

    import matplotlib.image

    img = matplotlib.image.imread(path / "timeline.png")
    assert img.shape[0] > 300 and img.shape[1] > 600 and img.std() > 0.01

    trace = json.loads((path / "trace.json").read_text())
    events = trace["traceEvents"]
    assert {e["ph"] for e in events} == {"M", "C", "X"}
    slices = {e["name"]: e for e in events if e["ph"] == "X"}
    assert {p["name"] for p in measured} | {"idle"} <= set(slices)
    for p in phases:
        if p.get("error"):  # a failed phase still shows how far it got
            assert {f"setup {p['name']}", f"warmup {p['name']}"} & set(slices)
    for e in events:
        assert isinstance(e["name"], str) and e["pid"] == 1
        if e["ph"] == "C":
            assert e["ts"] >= 0 and e["args"]
            assert all(isinstance(x, (int, float)) and math.isfinite(x)
                       for x in e["args"].values())
        if e["ph"] == "X":
            assert e["ts"] >= 0 and e["dur"] > 0
    timed = [e["ts"] for e in events if "ts" in e]
    assert timed == sorted(timed)
    idle_slice = slices["idle"]
    assert idle_slice["dur"] / 1e6 == pytest.approx(phases[0]["seconds"], rel=1e-6)


def _recorder(names: list):
    """A stand-in for torch.cuda.nvtx.range that records the names of the ranges opened."""
    @contextmanager
    def open_range(name):
        names.append(name)
        yield

    return open_range


def test_a_failed_phase_is_recorded_and_the_run_goes_on(tmp_path):
    out = tmp_path / "run"
    lines, ranges = [], []
    doc = contrast.run_contrast(out, model="ffn", batches=(4,), duration_s=1.0, idle_s=1.0, warmup_s=0,
                                cooldown_s=0, progress=lines.append, workloads=_triton_fails,
                                ranges=_recorder(ranges))
    check_run_dir(out, doc, flops_of=_lab_flops)
    # One range per sampler window, named as the window (counters.csv, trace.json).
    prefix = "tritonlab:contrast/"
    assert ranges == [prefix + name for name in (
        "idle", "setup train/triton/b4", "setup train/torch/b4", "warmup train/torch/b4",
        "train/torch/b4", "setup infer/triton/b4", "setup infer/torch/b4",
        "warmup infer/torch/b4", "infer/torch/b4")]
    trace = json.loads((out / "trace.json").read_text())
    windows = {e["name"] for e in trace["traceEvents"] if e["ph"] == "X"}
    assert {name.removeprefix(prefix) for name in ranges} == windows
    failed = [p for p in doc["phases"] if p.get("error")]
    assert [p["name"] for p in failed] == ["train/triton/b4", "infer/triton/b4"]
    assert failed[0]["error"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert sum("failed: RuntimeError" in line for line in lines) == 2
    assert [p["name"] for p in doc["phases"]] == [
        "idle", "train/triton/b4", "train/torch/b4", "infer/triton/b4", "infer/torch/b4"]
    assert doc["impl_comparison"] == []  # nothing to compare the baseline with
    assert doc["verdict"]["harder"] in ("train", "infer", "tie")
    text = contrast.summary_text(doc)
    assert "infer/triton/b4" in text and "failed" in text and "verdict:" in text
    assert "CPU counters only" in text


def test_cli_contrast_end_to_end_with_the_lab_workloads(tmp_path):
    out = tmp_path / "run"
    r = run_cli("contrast", "--model", "ffn", "--duration", "1", "--batch", "1", "--batch", "64",
                "--idle", "1", "--warmup", "0", "--cooldown", "0", "--out", str(out), "--json", timeout=240)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert "verdict:" in r.stderr and "[1/8]" in r.stderr
    check_run_dir(out, doc, flops_of=_lab_flops)
    assert {(p["mode"], p["impl"], p["batch"]) for p in doc["phases"][1:]} == {
        (m, i, b) for m in ("train", "infer") for i in ("triton", "torch") for b in (1, 64)}
    assert not any(p.get("error") for p in doc["phases"])
    assert {(c["mode"], c["batch"]) for c in doc["impl_comparison"]} == {
        (m, b) for m in ("train", "infer") for b in (1, 64)}


def test_nvtx_ranges_only_on_cuda():
    assert contrast.nvtx_ranges("cuda") is torch.cuda.nvtx.range
    with contrast.nvtx_ranges("interpreter")("tritonlab:contrast/idle") as entered:
        assert entered is None


@pytest.mark.gpu
def test_contrast_on_a_gpu_measures_power_and_energy(gpu, tmp_path):
    doc = contrast.run_contrast(tmp_path / "run", model="ffn", batches=(1, 2048), duration_s=1.5,
                                model_size="small", idle_s=1.0, warmup_s=0.5, cooldown_s=0.5)
    assert doc["counters"] == "nvml" and doc["verdict"]["label"].startswith("GPU counters")
    measured = [p for p in doc["phases"] if p["mode"] in ("train", "infer")]
    assert len(measured) == 8 and not any(p.get("error") for p in measured)
    for p in measured:
        assert p["avg_power_w"] > 0 and p["energy_j"] > 0 and p["energy_per_sample_j"] > 0
        assert p["peak_mem_mib"] > 0 and p["sm_clock_mhz"] > 0
        assert p["energy_source"] == "counter"
    assert doc["verdict"]["harder"] in ("train", "infer", "tie")
    assert any("W" in line for line in doc["verdict"]["explanation"])


def test_ffn_fp8_plan_serves_in_fp8_and_trains_in_the_training_dtype():
    """--model ffn --dtype fp8: the infer phases get the fp8 InferenceWorkload (weights
    quantised once), training the interpreter's default dtype, and the step runs."""
    plan, warnings = contrast.make_plan("interpreter", dtype="fp8")
    assert (plan.dtype_of("infer"), plan.dtype_of("train")) == ("fp8", "float32")
    assert any("float32" in w for w in warnings)
    assert plan.precision() == ("inference fp8 (e4m3, per-token activation scales, "
                                "per-channel weight scales), training float32")
    cfg = MLPConfig.from_size("tiny")
    infer = contrast.lab_workloads("infer", cfg, impl="torch",
                                   dtype=plan_mod.torch_dtype(plan.dtype_of("infer")),
                                   device="cpu", seed=0)
    assert infer.fp8 and infer.fp8_weights["down"][0].dtype == torch.float8_e4m3fn
    y = infer.step(infer.make_batch(3))
    assert y.shape == (3, cfg.dim) and torch.isfinite(y).all()
    train = contrast.lab_workloads("train", cfg, impl="torch",
                                   dtype=plan_mod.torch_dtype(plan.dtype_of("train")),
                                   device="cpu", seed=0)
    assert train.dtype == torch.float32
