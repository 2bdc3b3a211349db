"""tritonlab predict: the roofline model against hand-computed times, its layer formulas and
footprints against the workloads (and the tensors they really allocate, counted on the CPU),
the power model, calibration on a synthetic run with known efficiencies, --against on a
committed interpreter run (mechanics only: it says nothing about a GPU), the report section,
the CLI and its bad input."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT

from tritonlab.cli import cli
from tritonlab.hw.specs import Ceilings, PowerModel
from tritonlab.measure.regimes import rank_regimes
from tritonlab.ops import registry
from tritonlab.ops.decode_attention import seq_lengths
from tritonlab.predict import against as against_mod
from tritonlab.predict import layer as L
from tritonlab.predict import run as predict_run
from tritonlab.predict.calibrate import calibrate, fit_power
from tritonlab.predict.measured import measured_points
from tritonlab.predict.model import DEFAULT_EFFICIENCY, Efficiency, predict_step
from tritonlab.predict.points import make_grid, op_regime, op_row, spec_row
from tritonlab.predict.targets import Target, gpu_target, resolve_gpu
from tritonlab.predict.verdict import decode_flip
from tritonlab.report.predict_section import predictions
from tritonlab.runs.store import load_run
from tritonlab.workloads import layer as W
from tritonlab.workloads.kv_cache import KVCache
from tritonlab.workloads.layer_serve import Decode, Prefill, ServingWeights
from tritonlab.workloads.layer_train import LayerTrainStep

DEMO = ROOT / "reports" / "demo"
H100_BF16 = 989.4e12  # dense bf16 FLOP/s, NVIDIA H100 SXM5 datasheet
H100_BW = 3350e9  # bytes/s
UNIT = Efficiency(1.0, 1.0, 0.0, "test: the bare roofline")


@pytest.fixture(scope="module")
def h100():
    # Datasheet ceilings, whatever `device --measure` may have cached on this machine.
    return gpu_target(resolve_gpu("H100 SXM5"), ceilings="spec")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ------------------------------------------------------------ per-op roofline, by hand

def test_compute_bound_gemm_is_flops_over_peak(h100):
    n = 8192
    flops, nbytes = 2 * n**3, 2 * 3 * n * n  # 2MNK; bf16 A, B read and C written once
    no_power = dataclasses.replace(h100, power=None)
    bare = op_row(no_power, op="matmul", mode="infer", dtype="bfloat16", flops=flops,
                  nbytes=nbytes, efficiency={"prefill": UNIT})
    assert bare["bound"] == "compute"
    assert bare["time_s"] == pytest.approx(1_099_511_627_776 / 989.4e12, rel=1e-12)
    assert bare["compute_pct"] == pytest.approx(100.0)
    # With the power model, 100% of the peak is over the TDP (drawn at 80% of it): the
    # clocks drop until 630 W above idle hold, so the GEMM runs at 80% of the peak, plus
    # the time its bytes' energy takes.
    capped = op_row(h100, op="matmul", mode="infer", dtype="bfloat16", flops=flops,
                    nbytes=nbytes, efficiency={"prefill": UNIT})
    assert capped["bound"] == "power" and capped["power_w"] == pytest.approx(700.0)
    assert capped["time_s"] == pytest.approx(
        1_099_511_627_776 / (0.8 * 989.4e12) + 62.4e-12 * nbytes / 630, rel=1e-9)
    # The default prefill efficiency (0.7 of the peak) plus one 4 us launch.
    row = op_row(h100, op="matmul", mode="infer", dtype="bfloat16", flops=flops, nbytes=nbytes)
    assert row["time_s"] == pytest.approx(1_099_511_627_776 / (0.7 * 989.4e12) + 4e-6,
                                          rel=1e-12)
    # The op's own formulas give the same FLOPs and bytes, so the same time.
    spec = registry.discover()["matmul"]
    from_spec = spec_row(h100, spec, {"M": n, "N": n, "K": n}, "bfloat16", "infer")
    assert (from_spec["flops"], from_spec["bytes"]) == (flops, nbytes)
    assert from_spec["time_s"] == row["time_s"]


def test_decode_gemm_is_bandwidth_bound(h100):
    spec = registry.discover()["decode_matmul"]
    row = spec_row(h100, spec, {"M": 1, "N": 14336, "K": 4096}, "bfloat16", "infer")
    # bf16: x (1 x 4096) and W (4096 x 14336) read, y (1 x 14336) written.
    assert row["bytes"] == 2 * (4096 + 4096 * 14336 + 14336) == 117_477_376
    assert row["flops"] == 2 * 14336 * 4096
    assert row["regime"] == "decode" and row["bound"] == "bandwidth"
    # Decode efficiency 0.9 of the bandwidth, and one 2 us launch (CUDA graphs).
    assert row["time_s"] == pytest.approx(117_477_376 / (0.9 * 3350e9) + 2e-6, rel=1e-12)
    assert row["time_s"] == pytest.approx(4.0966e-5, rel=1e-4)


def test_decode_attention_is_bandwidth_bound_on_its_kv_reads(h100):
    spec = registry.discover()["decode_attention"]
    shape = {"B": 1, "H": 32, "KVH": 8, "D": 128, "CTX": 4096, "PAGE": 16}
    row = spec_row(h100, spec, shape, "bfloat16", "infer")
    kv = 2 * 4096 * 8 * 128 * 2  # K and V of 4096 positions, 8 heads of 128, bf16
    assert kv <= row["bytes"] < 1.01 * kv
    assert row["bound"] == "bandwidth"
    assert row["intensity"] < 5  # 4 H D per key over 4 KVH D bytes: GQA 4 -> about 4
    assert row["time_s"] == pytest.approx(row["bytes"] / (0.9 * 3350e9) + 2e-6, rel=1e-12)


def test_every_op_of_the_lab_predicts_in_every_mode(h100):
    for spec in registry.discover().values():
        shape = spec.presets.get("tiny", [None])[0] or next(iter(spec.presets.values()))[0]
        for mode in spec.modes:
            row = spec_row(h100, spec, shape, "float16", mode)
            assert row["time_s"] > 0 and row["bound"] in ("compute", "bandwidth", "launch")
            assert row["flops"] == spec.flops(dict(shape), mode)


# ------------------------------------------------------ layer formulas vs the workloads

def test_layer_formulas_are_the_workloads():
    for size in L.SIZES:
        cfg = W.LayerConfig.from_size(size)
        for b, n in ((1, 7), (3, 64)):
            assert sum(k.flops for k in L.train_kernels(cfg, 2, b, n, 2)) == \
                W.train_flops(cfg, 2, b, n)
            assert sum(k.flops for k in L.prefill_kernels(cfg, 2, b, n, 2)) == \
                W.prefill_flops(cfg, 2, [n] * b)
            assert sum(k.flops for k in L.decode_kernels(cfg, 2, b, n, 2)) == \
                W.decode_flops(cfg, 2, L.decode_lengths(b, n))
    for b, ctx in ((1, 1), (2, 37), (5, 4096), (64, 4096)):
        assert L.decode_lengths(b, ctx) == seq_lengths({"B": b, "CTX": ctx})


def test_llama_footprints_match_the_workload_formulas():
    cfg, dt = W.LayerConfig.from_size("llama3-8b"), torch.bfloat16
    fp = L.footprint("train", cfg, 32, 2, 8192, 2, 1)
    assert fp["weights"] == W.weight_bytes(cfg, 32, dt)
    assert fp["gradients"] == W.weight_bytes(cfg, 32, torch.float32)
    assert fp["optimizer"] == W.optimizer_bytes(cfg, 32)
    assert fp["activations"] == W.train_activation_bytes(cfg, 32, 2, 8192, dt)
    serve = L.footprint("decode", cfg, 32, 64, 4096, 2, 8193)
    assert serve["kv_cache"] == KVCache.bytes_for(cfg, 32, 64, 8193, dt, block_size=16)
    # docs/layer.md's figures: 64 GiB of bf16 KV cache at 64 x 8192.
    assert 2 * 32 * 64 * 8192 * 1024 * 2 == 64 * 2**30


def test_footprints_are_the_tensors_the_workloads_allocate():
    tiny = W.LayerConfig.from_size("tiny")
    layers, batch, seq, dt = 2, 2, 8, torch.float16
    fp = L.footprint("train", L.LayerConfig.from_size("tiny"), layers, batch, seq, 2, 1)
    step = LayerTrainStep(tiny, layers, impl="triton", dtype=dt, seed=0)
    assert fp["weights"] == sum(t.nbytes for w in step.working_weights() for t in w.values())
    x, target = step.make_batch(batch, seq, seed=1)
    assert fp["activations"] == step.saved_activation_bytes(x, target)
    step.step(x, target)
    masters = [p for layer in step.params for p in layer.values()]
    assert fp["gradients"] == sum(p.grad.nbytes for p in masters)
    state = [t for p in masters for t in step.optimizer.state[p].values()]
    assert fp["optimizer"] == sum(p.nbytes for p in masters) + sum(t.nbytes for t in state)

    weights = ServingWeights(tiny, W.init_params(tiny, layers, torch.float32, "cpu"), dtype=dt)
    cache = KVCache(tiny, layers, 3, 21, dtype=dt, device="cpu", block_size=16)
    served = L.footprint("decode", L.LayerConfig.from_size("tiny"), layers, 3, 20, 2, 21)
    assert served["weights"] == sum(t.nbytes for w in weights.layers for t in w.values())
    assert served["kv_cache"] == cache.nbytes
    assert {k: served[k] for k in ("weights", "kv_cache", "total")} == \
        Decode(weights, cache).footprint() == Prefill(weights).footprint(3, 21)


def test_largest_batch_is_the_last_that_fits(h100):
    cfg = L.LayerConfig.from_size("llama3-8b")
    cap = h100.capacity_bytes
    assert cap == 80 * 10**9
    for regime, second, max_seq in (("decode", 4096, 4097), ("prefill", 2048, 2048)):
        b = L.largest_batch(regime, cfg, 32, second, 2, max_seq, cap)
        assert b > 0
        assert L.footprint(regime, cfg, 32, b, second, 2, max_seq)["total"] <= cap
        assert L.footprint(regime, cfg, 32, b + 1, second, 2, max_seq)["total"] > cap
    # Llama-3-8B's 32 layers with AdamW state need more than 80 GB before any activation.
    assert L.largest_batch("train", cfg, 32, 2048, 2, 1, cap) == 0
    assert L.largest_batch("train", cfg, 4, 2048, 2, 1, cap) > 0


# ------------------------------------------------------------------------- power model

def test_power_model_by_hand_and_its_cap(h100):
    row = op_row(h100, op="decode_matmul", mode="infer", dtype="bfloat16", flops=117_440_512,
                 nbytes=117_477_376)
    pm = h100.power
    assert (pm.idle_w, pm.limit_w) == (70.0, 700.0)
    e_flop = (700 - 70) / (0.8 * 989.4e12)  # J per FLOP: a GEMM at 80% of peak at the TDP
    e_byte = 3.9 * 8 * 2 * 1e-12
    dynamic = e_flop * 117_440_512 + e_byte * 117_477_376
    assert row["power_w"] == pytest.approx(70 + dynamic / row["time_s"], rel=1e-9)
    assert row["energy_j"] == pytest.approx(70 * row["time_s"] + dynamic, rel=1e-9)

    toy = PowerModel(idle_w=10, limit_w=60, pj_per_flop={"bfloat16": 1.0}, pj_per_byte=0.0,
                     source="toy")
    step = predict_step([L.Kernel("gemm", 10**12, 0, 1)], 100.0, 1000.0, UNIT, toy, "bfloat16")
    # Roofline: 1e12 / 100e12 = 10 ms at 10 + 1 J / 10 ms = 110 W: over the 60 W limit, so
    # the step stretches to 1 J / (60 - 10) W = 20 ms at 60 W.
    assert step.uncapped_time_s == pytest.approx(0.01)
    assert step.bound == "power"
    assert step.time_s == pytest.approx(0.02)
    assert step.power_w == pytest.approx(60.0)
    assert step.energy_j == pytest.approx(10 * 0.02 + 1.0)


# --------------------------------------------------------------- verdict and the flip

def test_predicted_verdict_uses_the_contrast_rules(h100):
    grid = make_grid()
    doc = predict_run.predict([h100], grid)
    rows, verdict = doc["points"], doc["verdicts"][0]
    by_regime = {r: [x for x in rows if x["regime"] == r] for r in grid.regimes}
    assert verdict["resources"] == rank_regimes(by_regime)["resources"]
    capacity = next(r for r in verdict["resources"] if r["resource"] == "capacity")
    assert capacity["winner"] == "train" and capacity["confidence"] == "exact"
    assert verdict["explanation"][0].startswith("Predicted (not measured)")


def test_decode_flip_is_where_the_intensity_reaches_the_ridge(h100):
    grid = make_grid(regimes=["decode"], batches={"decode": [1, 4096]},
                     seconds={"decode": [16]})
    rows = predict_run.predict([h100], grid)["points"]
    flip = decode_flip(h100, grid, rows, DEFAULT_EFFICIENCY["decode"])
    ridge = flip["ridge_flop_per_byte"]
    assert ridge == pytest.approx(0.7 * 989.4e3 / (0.9 * 3350))
    b = flip["series"][0]["predicted_flip_batch"]
    cfg = grid.config()

    def intensity(batch):
        ks = L.decode_kernels(cfg, grid.n_layers, batch, 16, 2)
        return sum(k.flops for k in ks) / sum(k.bytes for k in ks)

    assert intensity(b) >= ridge > intensity(b - 1)
    assert [p["bound"] for p in flip["series"][0]["points"]] == ["bandwidth", "compute"]


# ------------------------------------------------------------------------- calibration

TRUE = {"train": (0.45, 0.8), "prefill": (0.6, 0.75), "decode": (0.55, 0.85)}


def _synthetic_run(tmp_path, rows):
    run = tmp_path / "synthetic"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "synthetic", "kind": "sweep", "backend": "cuda",
        "device": {"name": "NVIDIA H100 80GB HBM3"}, "peaks": None}))
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_calibration_recovers_known_efficiencies(tmp_path, h100):
    truth = {r: Efficiency(c, b, DEFAULT_EFFICIENCY[r].launch_s, "truth")
             for r, (c, b) in TRUE.items()}
    rows = []
    # (op, mode, M, N, K): a compute-bound and a bandwidth-bound point per regime.
    for op, mode, m, n, k in (("matmul", "fwd", 4096, 4096, 4096), ("matmul", "fwd", 1, 4096, 4096),
                              ("linear", "infer", 2048, 8192, 4096), ("linear", "infer", 2, 8192, 4096),
                              ("decode_matmul", "infer", 4096, 4096, 4096),
                              ("decode_matmul", "infer", 1, 14336, 4096)):
        flops, nbytes = 2 * m * n * k, 2 * (m * k + k * n + m * n)
        t = op_row(h100, op=op, mode=mode, dtype="bfloat16", flops=flops, nbytes=nbytes,
                   efficiency=truth)["time_s"]
        rows.append({"schema_version": 1, "op": op, "impl": "triton", "kind": "triton",
                     "mode": mode, "dtype": "bfloat16", "shape": {"M": m, "N": n, "K": k},
                     "flops": flops, "bytes": nbytes, "ms": 1e3 * t, "error": None})
    cal = calibrate(_synthetic_run(tmp_path, rows))
    assert cal.device == "H100 SXM5"
    for regime, (c, b) in TRUE.items():
        assert cal.efficiency[regime].compute == pytest.approx(c, rel=1e-9), regime
        assert cal.efficiency[regime].bandwidth == pytest.approx(b, rel=1e-9), regime
        assert cal.fit[regime]["points"] == 2
    assert cal.power is None and "power readings" in cal.power_reason


def test_calibration_without_usable_points_is_exit_2(tmp_path):
    failed = {"schema_version": 1, "op": "matmul", "impl": "triton", "mode": "fwd",
              "dtype": "bfloat16", "shape": {"M": 8, "N": 8, "K": 8}, "flops": 1024,
              "bytes": 384, "ms": None, "error": "OOM"}
    run = _synthetic_run(tmp_path, [failed])
    result = invoke("predict", "--calibrate", run, "--json")
    assert result.exit_code == 2
    assert "no usable points to calibrate from" in result.stderr
    assert json.loads(result.stdout)["exit_code"] == 2


def test_calibrate_on_the_demo_contrast_and_sweep(tmp_path):
    for name in ("contrast-layer", "sweep"):
        cal = calibrate(DEMO / name)
        assert cal.device == "AMD EPYC" and cal.efficiency  # the CPU the demo ran on
        assert cal.power is None  # the CPU runs have no power readings
    # Fitted on the layer contrast's Triton phases: predicting them back is exact for
    # prefill and train (one phase each, one factor each).
    cal = calibrate(DEMO / "contrast-layer")
    shutil.copytree(DEMO / "contrast-layer", tmp_path / "run")
    doc = against_mod.against(tmp_path / "run", cal)
    for p in doc["points"]:
        if p["impl"] == "triton" and p["regime"] in ("train", "prefill"):
            assert p["ratio"] == pytest.approx(1.0, rel=1e-6), p["point"]


# --------------------------------------------------------------- --against, mechanics

def test_against_an_interpreter_sweep_computes_the_ratios(tmp_path):
    run = tmp_path / "sweep"
    shutil.copytree(DEMO / "sweep", run)
    result = invoke("predict", "--against", run, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["predicted"] is True and doc["accuracy_claim"] is False
    assert "mechanics check" in doc["note"] and "not the model's accuracy" in doc["note"]
    assert json.loads((run / "prediction.json").read_text())["against"] == doc
    manifest = json.loads((run / "manifest.json").read_text())
    ceilings = manifest["peaks"]["measured"]
    rows = [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]
    measured = [r for r in rows if not r["error"]]
    assert len(doc["points"]) == len(measured)
    for p in doc["points"][:12]:
        r = next(x for x in measured
                 if p["point"] == f"{x['op']} {x['impl']} {x['mode']} {x['dtype']} "
                                  f"{'x'.join(map(str, x['shape'].values()))}")
        eff = DEFAULT_EFFICIENCY[p["regime"]]
        launches = {"fwd": 1, "infer": 1, "bwd": 2, "fwd_bwd": 3}[r["mode"]]
        peak = ceilings["tflops"][r["dtype"]] * 1e12
        bw = ceilings["bandwidth_gbps"] * 1e9
        expected = max(r["flops"] / (eff.compute * peak), r["bytes"] / (eff.bandwidth * bw)) \
            + launches * eff.launch_s
        assert p["predicted_s"] == pytest.approx(expected, rel=1e-12)
        assert p["measured_s"] == pytest.approx(r["ms"] / 1e3, rel=1e-12)
        assert p["ratio"] == pytest.approx(expected / (r["ms"] / 1e3), rel=1e-12)
    logs = [math.log(p["ratio"]) for p in doc["points"]]
    overall = doc["error"]["overall"]
    assert overall["geomean_ratio"] == pytest.approx(math.exp(sum(logs) / len(logs)))
    assert overall["geomean_error"] == pytest.approx(math.exp(sum(map(abs, logs)) / len(logs)))
    assert overall["worst_error"] == pytest.approx(math.exp(max(map(abs, logs))))
    assert set(doc["error"]["regime"]) == {"train", "prefill", "decode"}
    assert sum(e["points"] for e in doc["error"]["op"].values()) == len(measured)


def test_report_section_shows_the_prediction_labelled(tmp_path, h100):
    run_dir = tmp_path / "contrast-layer"
    shutil.copytree(DEMO / "contrast-layer", run_dir)
    doc = predict_run.predict([h100], make_grid())
    against_mod.save(run_dir, gpus=doc, against=against_mod.against(run_dir))
    blocks = predictions([load_run(run_dir, warn=None)], tmp_path / "figures")
    text = repr(blocks)
    assert "PREDICTION" in text and "Not a measurement of the model's accuracy" in text
    assert [p.name.startswith("predicted-gpus-") for p in (tmp_path / "figures").iterdir()] \
        == [True]


# ------------------------------------------------------------------------------ the CLI

FIELDS = ("gpu", "regime", "batch", "seq", "layers", "time_s", "tokens_per_s", "bound",
          "flops", "bytes", "footprint", "footprint_bytes", "power_w", "energy_per_token_j",
          "assumptions", "compute_pct", "bandwidth_pct", "largest_batch")


def test_cli_predicts_llama_on_an_h100_as_json():
    result = invoke("predict", "--gpu", "H100-SXM", "--model", "llama3-8b", "--ceilings",
                    "spec", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["predicted"] is True and doc["label"].startswith("PREDICTION")
    assert [(p["regime"], p["batch"], p["seq"]) for p in doc["points"]] == [
        ("train", 1, 2048), ("prefill", 1, 2048), ("decode", 1, 4096), ("decode", 64, 4096)]
    for p in doc["points"]:
        assert all(k in p for k in FIELDS), [k for k in FIELDS if k not in p]
        assert p["gpu"] == "H100 SXM5" and p["layers"] == 32 and p["predicted"] is True
        assert p["footprint_bytes"] == p["footprint"]["total"]
        assert p["tokens_per_s"] == pytest.approx(
            (p["batch"] if p["regime"] == "decode" else p["batch"] * p["seq"]) / p["time_s"])
    train, prefill, decode1, decode64 = doc["points"]
    assert set(train["footprint"]) == {"weights", "gradients", "optimizer", "activations",
                                       "total"}
    assert set(decode64["footprint"]) == {"weights", "kv_cache", "total"}
    assert decode1["bound"] == "bandwidth" and prefill["bound"] == "compute"
    assert doc["verdicts"][0]["harder"] in ("train", "prefill", "decode", "tie")
    assert doc["assumptions"]["model"] and "H100 SXM5" in doc["assumptions"]["gpus"]


def test_cli_text_prints_the_regimes_and_a_verdict():
    result = invoke("predict", "--gpu", "H100", "--gpu", "L4", "--regime", "decode",
                    "--regime", "prefill", "--ceilings", "spec")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("PREDICTION")
    assert "== H100 SXM5 (predicted)" in out and "== L4 (predicted)" in out
    assert "side by side" in out and "demands most" in out and "Assumptions:" in out


def test_default_gpus_side_by_side():
    result = invoke("predict", "--ceilings", "spec", "--json")
    doc = json.loads(result.stdout)
    assert doc["side_by_side"]["headers"] == ["resource", "H100 SXM5", "A100 SXM4 80GB", "L4",
                                              "H200 SXM"]


@pytest.mark.parametrize("args, needle", [
    (["--gpu", "H100-SMX"], "unknown GPU 'H100-SMX' (did you mean 'H100 SXM5'?)"),
    (["--gpu", "A100", "--dtype", "fp8"], "A100 SXM4 80GB has no fp8 compute peak"),
    (["--gpu", "V100", "--dtype", "bfloat16"], "dtypes it has: float32, float16"),
    (["--model", "llama-70b"], "valid sizes: tiny, small, llama3-8b"),
    (["--regime", "serve"], "valid regimes: train, prefill, decode"),
    (["--dtype", "int8"], "valid dtypes: float32, float16, bfloat16, fp8"),
    (["--against", "/nonexistent/run"], "not a run directory"),
    (["--against", DEMO / "sweep", "--gpu", "H100"], "--against predicts the run's own"),
])
def test_bad_input_is_exit_2_with_the_choices(args, needle):
    result = invoke("predict", *args, "--json")
    assert result.exit_code == 2, result.output
    assert needle in result.stderr
    assert json.loads(result.stdout)["exit_code"] == 2
    if "unknown GPU" in needle:
        assert "H200 SXM" in result.stderr and "L4" in result.stderr  # the table is listed


def test_predict_loads_no_triton_kernel():
    # Triton itself, the lab's kernels, and the workloads and ops modules that import them
    # (seconds of start-up): the op contract and the layer's sizes (no kernels) may load.
    code = ("import sys, tritonlab.commands.predict; "
            "print([m for m in sys.modules if m == 'triton' or m.startswith(('triton.', "
            "'tritonlab.kernels', 'tritonlab.workloads.')) and m != "
            "'tritonlab.workloads.layer_config' or (m.startswith('tritonlab.ops.') "
            "and m != 'tritonlab.ops.contract')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_target_without_a_power_model_says_why():
    toy = Target("toy", Ceilings("toy", {"bfloat16": 1.0}, 10.0), None, None)
    row = op_row(toy, op="matmul", mode="infer", dtype="bfloat16", flops=10**9, nbytes=10**6)
    assert row["power_w"] is None and row["power_unavailable"] == "no power model for this device"


def _power_contrast(tmp_path, phase_power, dtypes=None, plan_dtype="bfloat16",
                    idle=65.0):
    """A synthetic layer contrast on an H100: the three regimes at one point each, phase
    power ``idle + phase_power(dtype, flops, bytes) / step_s``; ``dtypes`` per regime
    (bfloat16 throughout by default)."""
    cfg = L.LayerConfig.from_size("tiny")
    phases = [{"name": "idle", "mode": "idle", "avg_power_w": idle}]
    for regime, batch, second, step_s in (("train", 4, 64, 0.004), ("prefill", 2, 128, 0.001),
                                          ("decode", 8, 256, 0.0002)):
        dtype = (dtypes or {}).get(regime, "bfloat16")
        ks = L.kernels(regime, cfg, 1, batch, second, 1 if dtype == "fp8" else 2)
        flops, nbytes = sum(k.flops for k in ks), sum(k.bytes for k in ks)
        phases.append({
            "name": f"{regime}/triton", "mode": regime, "impl": "triton", "batch": batch,
            "dtype": dtype,
            "point": {{"train": "seq", "prefill": "prompt", "decode": "context"}[regime]:
                      second},
            "latency_p50_ms": 1e3 * step_s, "steps": 100, "seconds": 100 * step_s,
            "avg_power_w": idle + phase_power(dtype, flops, nbytes) / step_s,
            "power_limit_w": 690.0})
    run = tmp_path / "contrast"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "synthetic", "kind": "contrast", "backend": "cuda",
        "device": {"name": "NVIDIA H100 80GB HBM3"}, "peaks": None}))
    (run / "contrast.json").write_text(json.dumps({
        "schema_version": 1, "kind": "contrast", "backend": "cuda",
        "model": {"name": "layer"}, "phases": phases,
        "plan": {"model": "layer", "model_size": "tiny", "n_layers": 1, "dtype": plan_dtype,
                 "max_seq": 257}}))
    return run


def test_power_calibration_recovers_known_coefficients(tmp_path):
    idle, e_flop, e_byte = 65.0, 0.9e-12, 50e-12  # W, J per FLOP, J per byte
    run = _power_contrast(tmp_path, lambda dtype, f, b: e_flop * f + e_byte * b, idle=idle)
    cal = calibrate(run)
    assert cal.power is not None, cal.power_reason
    assert cal.power.idle_w == idle and cal.power.limit_w == 690.0
    assert cal.power.pj_per_flop["bfloat16"] == pytest.approx(0.9, rel=1e-6)
    assert cal.power.pj_per_byte == pytest.approx(50.0, rel=1e-6)
    # The other dtypes' energy per FLOP follows from the same power at their own peak.
    spec = resolve_gpu("H100 SXM5").tflops
    assert cal.power.pj_per_flop["fp8"] == pytest.approx(0.9 * spec["bfloat16"] / spec["fp8"],
                                                         rel=1e-6)
    # The fitted power model replaces the H100's default, and says where it comes from.
    result = invoke("predict", "--calibrate", run, "--gpu", "H100", "--ceilings", "spec",
                    "--json")
    assert result.exit_code == 0, result.output
    power = json.loads(result.stdout)["assumptions"]["gpus"]["H100 SXM5"]["power"]
    assert power["idle_w"] == idle and power["source"].startswith("fitted from 3 phases")


def test_power_calibration_on_an_fp8_contrast_fits_both_dtypes(tmp_path):
    # An fp8 contrast: inference in fp8, the training step in bf16. Each FLOP costs the
    # power of its dtype's full peak (400 W) over that peak.
    spec = resolve_gpu("H100 SXM5").tflops
    w_peak, e_byte = 400.0, 30e-12
    dtypes = {"train": "bfloat16", "prefill": "fp8", "decode": "fp8"}
    run = _power_contrast(
        tmp_path, lambda dtype, f, b: w_peak * f / (spec[dtype] * 1e12) + e_byte * b,
        dtypes=dtypes, plan_dtype="fp8")
    points = {p.regime: p for p in measured_points(load_run(run, warn=None))}
    assert {r: p.dtype for r, p in points.items()} == dtypes
    cal = calibrate(run)
    assert cal.power is not None, cal.power_reason
    for key in ("bfloat16", "fp8"):
        assert cal.power.pj_per_flop[key] == pytest.approx(w_peak / spec[key], rel=1e-6), key
    assert cal.power.pj_per_byte == pytest.approx(30.0, rel=1e-6)
    assert "(bfloat16, fp8)" in cal.power.source


def test_power_calibration_on_phases_without_work(tmp_path, monkeypatch):
    """Phases that move no bytes give no power model (and no division by zero); phases
    without FLOPs leave the energy per FLOP unknown rather than zero."""
    run = load_run(_power_contrast(tmp_path, lambda dtype, f, b: 100.0), warn=None)
    target = gpu_target(resolve_gpu("H100 SXM5"), ceilings="spec")
    monkeypatch.setattr(L, "kernels", lambda *a, **k: [L.Kernel("idle", 0, 0, 1)])
    points = measured_points(run)
    assert points and not any(p.flops or p.bytes for p in points)
    power, why = fit_power(run, points, target)
    assert power is None and "no bytes moved" in why
    e_byte = 40e-12
    monkeypatch.setattr(L, "kernels", lambda *a, **k: [L.Kernel("copy", 0, 10**9, 1)])
    # The readings of a pure copy at 40 pJ per byte.
    points = [dataclasses.replace(p, power_w=65.0 + e_byte * p.bytes / p.seconds_per_step)
              for p in measured_points(run)]
    power, why = fit_power(run, points, target)
    assert why is None and power.pj_per_byte == pytest.approx(40.0, rel=1e-9)
    assert set(power.pj_per_flop.values()) == {None}


def test_calibration_notes_an_efficiency_above_1(tmp_path, h100):
    # A GEMM measured at twice the spec peak: the fit says so instead of passing it quietly.
    m = n = k = 8192
    flops, nbytes = 2 * m * n * k, 2 * (m * k + k * n + m * n)
    t = flops / (h100.peak("bfloat16") * 1e12) / 2
    row = {"schema_version": 1, "op": "matmul", "impl": "triton", "kind": "triton",
           "mode": "fwd", "dtype": "bfloat16", "shape": {"M": m, "N": n, "K": k},
           "flops": flops, "bytes": nbytes, "ms": 1e3 * t, "error": None}
    cal = calibrate(_synthetic_run(tmp_path, [row]))
    regime = op_regime("matmul", "fwd")
    assert cal.efficiency[regime].compute > 1.9
    assert cal.fit[regime]["determined"] == ["compute"]
    over = [n for n in cal.notes if "fitted efficiency above 1" in n]
    # Only the efficiency the point bears on: the bandwidth one is the default, scaled.
    assert len(over) == 1 and over[0].startswith(f"{regime}: fitted efficiency above 1 "
                                                 f"(compute 2.0") and "bandwidth" not in over[0]
    result = invoke("predict", "--calibrate", tmp_path / "synthetic", "--gpu", "H100",
                    "--ceilings", "spec", "--json")
    assert result.exit_code == 0 and "fitted efficiency above 1" in result.stderr


def test_all_gpus_leaves_out_those_without_the_dtype():
    result = invoke("predict", "--gpu", "all", "--regime", "decode", "--ceilings", "spec",
                    "--json")
    assert result.exit_code == 0, result.output
    gpus = [v["gpu"] for v in json.loads(result.stdout)["verdicts"]]
    assert "H100 SXM5" in gpus and "L40S" in gpus and "V100 SXM2" not in gpus
    assert "left out (no bfloat16 peak): V100 SXM2, V100 PCIe, T4" in result.stderr
