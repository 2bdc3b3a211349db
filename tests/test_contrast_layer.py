"""`tritonlab contrast --model layer`: the decoder layer as training, prefill and decode on
the same weights. A tiny run end to end on the interpreter (rows against the workloads' own
formulas and footprints, the verdict), resume, skipped phases, bad input, the verdict's and
the flip point's rules on made-up rows."""

from __future__ import annotations

import json
import re

import matplotlib.image
import pytest
import torch
from click.testing import CliRunner

from tritonlab import backend as backend_mod
from tritonlab import contrast
from tritonlab.cli import cli
from tritonlab.contrast import layer as layer_mod
from tritonlab.contrast import plan as plan_mod
from tritonlab.contrast.layer_verdict import decode_flip, layer_verdict
from tritonlab.errors import UsageError
from tritonlab.hw.specs import Ceilings
from tritonlab.report import render as report
from tritonlab.workloads.kv_cache import KVCache
from tritonlab.workloads.layer import (
    LayerConfig,
    decode_flops,
    init_params,
    prefill_flops,
    train_flops,
)
from tritonlab.workloads.layer_serve import Decode, Prefill, ServingWeights
from tritonlab.workloads.layer_train import LayerTrainStep

FAST = dict(duration_s=1.0, idle_s=0, warmup_s=0, cooldown_s=0)


@pytest.fixture(scope="module")
def layer_run(tmp_path_factory):
    """A tiny layer contrast with the interpreter's default grid: train 1x16, prefill 1x16,
    decode batches 1 and 4 at context 32, both impls (about 20 s on 2 cores)."""
    out = tmp_path_factory.mktemp("layer") / "run"
    lines: list[str] = []
    doc = contrast.run_contrast(out, model="layer", progress=lines.append, **FAST)
    return out, doc, lines


def test_layer_run_writes_one_row_per_regime_impl_point(layer_run):
    """The default tiny grid: one row per (regime, impl, point), every null explained."""
    out, doc, lines = layer_run
    assert doc["status"] == "complete" and doc["model"]["name"] == "layer"
    on_disk = json.loads((out / "contrast.json").read_text())
    names = [p["name"] for p in on_disk["phases"]]
    assert names == [f"{m}/{i}/{p}" for m, p in (("train", "b1s16"), ("prefill", "b1p16"),
                                                  ("decode", "b1c32"), ("decode", "b4c32"))
                     for i in ("triton", "torch")]
    assert not any(p.get("error") or p.get("skipped") for p in on_disk["phases"])
    assert sum(line.startswith("[") for line in lines) == 8
    for p in on_disk["phases"]:
        for key, value in p.items():  # a measurement is never a silent null
            if value is None and key not in ("impl", "power_source", "energy_source"):
                assert p["unavailable"].get(key), (p["name"], key)
        assert p["capacity_pct"] is None and "capacity" in p["unavailable"]["capacity_pct"]
    assert {(c["mode"], c["point"]["batch"]) for c in doc["impl_comparison"]} == {
        ("train", 1), ("prefill", 1), ("decode", 1), ("decode", 4)}
    text = contrast.summary_text(doc)
    assert "decode/triton/b4c32" in text and "tok/s" in text and "verdict:" in text


def test_layer_rows_match_the_workloads_formulas_and_footprints(layer_run):
    """Tokens, FLOPs, bytes and footprint of every row are the workloads' own."""
    _, doc, _ = layer_run
    cfg = LayerConfig.from_size("tiny")
    dt = torch.float32
    params = init_params(cfg, 1, torch.float32, "cpu", 0)
    for p in doc["phases"]:
        b, steps = p["batch"], p["steps"]
        if p["mode"] == "train":
            s = p["point"]["seq"]
            flops, tokens = train_flops(cfg, 1, b, s), b * s
            footprint = LayerTrainStep(cfg, 1, impl=p["impl"], dtype=dt,
                                       device="cpu").footprint(b, s)
        elif p["mode"] == "prefill":
            n = p["point"]["prompt"]
            flops, tokens = prefill_flops(cfg, 1, [n] * b), b * n
            weights = ServingWeights(cfg, params, dtype=dt, device="cpu")
            footprint = Prefill(weights, impl=p["impl"]).footprint(
                b, doc["plan"]["max_seq"], block_size=layer_mod.BLOCK_SIZE)
        else:
            ctx = p["point"]["context"]
            lengths = layer_mod.decode_lengths(b, ctx)
            assert max(lengths) == ctx and len(set(lengths)) > 1 or b == 1
            flops, tokens = decode_flops(cfg, 1, lengths), b
            weights = ServingWeights(cfg, params, dtype=dt, device="cpu")
            cache = KVCache(cfg, 1, b, doc["plan"]["max_seq"], dtype=dt, device="cpu",
                            block_size=layer_mod.BLOCK_SIZE)
            footprint = Decode(weights, cache, impl=p["impl"]).footprint()
        nbytes = layer_mod.compulsory_bytes(cfg, 1, p["mode"], b,
                                            next(v for k, v in p["point"].items()
                                                 if k != "batch"), dt)
        assert p["flops_per_step"] == flops and p["tokens_per_step"] == tokens
        assert p["bytes_per_step"] == nbytes
        assert p["footprint"] == footprint and p["footprint_bytes"] == footprint["total"]
        assert p["tokens_per_s"] == pytest.approx(steps * tokens / p["seconds"])
        assert p["achieved_gbps"] == pytest.approx(steps * nbytes["total"] / p["seconds"] / 1e9)
        assert p["arithmetic_intensity"] == pytest.approx(flops / nbytes["total"])
        if p["step_tflops_ci"] is not None:
            lo, hi = p["step_tflops_ci"]
            assert lo <= p["step_tflops_median"] <= hi


def test_compulsory_bytes_formulas():
    """The byte formulas part by part, on hand-computed sizes."""
    cfg = LayerConfig.from_size("tiny")
    w = cfg.param_count() * 2  # float16
    kv_token = 2 * cfg.kv_dim * 2
    dec = layer_mod.compulsory_bytes(cfg, 1, "decode", 3, 32, torch.float16)
    assert dec["weights"] == w and dec["kv_write"] == 3 * kv_token
    assert dec["kv_read"] == sum(layer_mod.decode_lengths(3, 32)) * kv_token
    pre = layer_mod.compulsory_bytes(cfg, 2, "prefill", 2, 16, torch.float16)
    assert pre["weights"] == 2 * w and pre["kv_write"] == 2 * 32 * kv_token
    assert pre["io"] == 2 * 32 * cfg.dim * 2
    assert pre["total"] == pre["weights"] + pre["kv_write"] + pre["io"]
    tr = layer_mod.compulsory_bytes(cfg, 1, "train", 1, 16, torch.float16)
    assert tr["weights"] == 2 * w and tr["gradients"] == 2 * w  # fp32 gradients
    assert set(tr) == {"weights", "gradients", "optimizer", "activations", "io", "total"}


def test_layer_verdict_names_a_regime_per_resource(layer_run):
    """The run's verdict names a regime (or a tie) per resource, and the flip series."""
    _, doc, _ = layer_run
    v = doc["verdict"]
    by_name = {r["resource"]: r for r in v["resources"]}
    assert set(by_name) == {"compute", "bandwidth", "capacity", "power", "energy per token"}
    for name in ("compute", "bandwidth", "capacity"):
        assert by_name[name]["winner"] in contrast.REGIMES + ("tie",)
        assert set(by_name[name]["by_regime"]) == set(contrast.REGIMES)
    # Training holds weights, gradients, optimizer state and activations: the most memory.
    assert by_name["capacity"]["winner"] == "train"
    assert v["harder"] in contrast.REGIMES + ("tie",)
    assert [s["context"] for s in v["flip"]["series"]] == [32, 32]
    assert all(line for line in v["explanation"])
    assert any("Decode (" in line for line in v["explanation"])


def _row(name, mode, batch, **values):
    """A made-up measured row."""
    return {"name": name, "mode": mode, "impl": "triton", "batch": batch, **values}


def test_verdict_confidence_rules():
    """clear / overlapping intervals, exact capacity, a 5% power tie, the overall answer."""
    plan, _ = contrast.make_layer_plan("interpreter", modes=("train", "prefill"))
    rows = [_row("t", "train", 1, step_tflops_median=10.0, step_tflops_ci=[9.0, 11.0],
                 step_gbps_median=5.0, step_gbps_ci=[4.0, 6.0], footprint_bytes=100,
                 avg_power_w=300.0),
            _row("p", "prefill", 1, step_tflops_median=20.0, step_tflops_ci=[19.0, 21.0],
                 step_gbps_median=5.5, step_gbps_ci=[4.5, 6.5], footprint_bytes=50,
                 avg_power_w=310.0)]
    v = layer_verdict(rows, plan=plan, counters="nvml", device="GPU", idle=None)
    r = {x["resource"]: x for x in v["resources"]}
    assert (r["compute"]["winner"], r["compute"]["confidence"]) == ("prefill", "clear")
    assert (r["bandwidth"]["winner"], r["bandwidth"]["confidence"]) == ("prefill", "overlapping")
    assert (r["capacity"]["winner"], r["capacity"]["confidence"]) == ("train", "exact")
    assert r["power"]["winner"] == "tie"  # 300 vs 310 W: within 5%
    assert r["energy per token"]["winner"] is None
    assert v["harder"] == "prefill" and "resources won" in v["decided_by"]


def test_decode_flip_against_a_ridge_point():
    """The predicted flip batch crosses the ridge; measured points are classified; no ridge on the
    CPU."""
    plan, _ = contrast.make_layer_plan("interpreter", decode_batches=(1, 64), contexts=(32,))
    cfg = plan.config()
    flip = layer_mod.decode_flip_batch(cfg, 1, 32, "float32", ridge=3.0)
    assert flip is not None and flip > 1

    def intensity(b):
        """FLOP per compulsory byte of a decode step at batch b."""
        return (decode_flops(cfg, 1, layer_mod.decode_lengths(b, 32))
                / layer_mod.compulsory_bytes(cfg, 1, "decode", b, 32, torch.float32)["total"])

    assert intensity(flip) >= 3.0 > intensity(1)
    assert layer_mod.decode_flip_batch(cfg, 1, 32, "float32", ridge=1e6) is None
    rows = [_row(f"decode/triton/b{b}c32", "decode", b, point={"batch": b, "context": 32},
                 arithmetic_intensity=intensity(b), tflops=1.0, achieved_gbps=1.0)
            for b in (1, 64)]

    class Ceil:
        """Ceilings of a device whose ridge point is 3 FLOP/byte."""

        def ridge(self, key):
            """The ridge point for any dtype."""
            return 3.0

    (series,) = decode_flip(rows, plan, Ceil())["series"]
    assert [p["bound"] for p in series["points"]] == ["bandwidth", "compute"]
    assert series["first_compute_bound_batch"] == 64 and series["predicted_flip_batch"] == flip
    cpu = decode_flip(rows, plan, None)
    assert cpu["ridge_flop_per_byte"] is None and "no ridge point" in cpu["reason"]


def test_over_capacity_skips_what_does_not_fit():
    """A phase larger than the card is skipped with the bytes it needs; no capacity, no skip."""
    plan, _ = contrast.make_layer_plan("cuda")
    assert plan.model_size == "llama3-8b" and plan.dtype == "bfloat16"
    assert layer_mod.over_capacity(plan, None) == {}
    cfg = plan.config()
    need = {ph.name: layer_mod.estimated_footprint(cfg, plan, ph) for ph in plan.phases()}
    train = next(n for n in need if n.startswith("train/"))
    capacity = need[train] - 1
    skipped = layer_mod.over_capacity(plan, capacity)
    assert train in skipped and str(need[train]) in skipped[train]
    assert set(skipped) == {n for n, b in need.items() if b > capacity}


def test_resume_completes_an_interrupted_layer_run(tmp_path, monkeypatch):
    """Ctrl-C after the first phase, then --resume: each phase once, the first kept."""
    out = tmp_path / "run"
    opts = dict(model="layer", impls=("torch",), grid={"decode_batches": (2,)}, **FAST)
    # A phase too big for the card is recorded as skipped, with the bytes it would need.
    monkeypatch.setattr(layer_mod, "over_capacity",
                        lambda plan, cap: {"decode/torch/b2c32": "needs 99 bytes"})

    def stop_at_second(line):
        """Ctrl-C as the second phase starts."""
        if line.startswith("[2/3]"):
            raise KeyboardInterrupt

    doc = contrast.run_contrast(out, progress=stop_at_second, **opts)
    assert doc["status"] == "interrupted" and doc["verdict"] is None
    assert [p["name"] for p in doc["phases"]] == ["train/torch/b1s16"]
    first = doc["phases"][0]
    lines: list[str] = []
    doc = contrast.run_contrast(out, progress=lines.append, resume=True, **opts)
    assert doc["status"] == "complete"
    assert [p["name"] for p in doc["phases"]] == [
        "train/torch/b1s16", "prefill/torch/b1p16", "decode/torch/b2c32"]
    assert doc["phases"][0]["steps"] == first["steps"]  # kept, not measured again
    assert "[1/3] train/torch/b1s16: already measured" in lines
    assert doc["phases"][2]["skipped"] == "needs 99 bytes"
    assert doc["verdict"]["harder"] in ("train", "prefill", "tie")
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["resumed"]) == 1 and manifest["status"] == "complete"
    assert "skipped: needs 99 bytes" in contrast.summary_text(doc)


@pytest.mark.parametrize("args, message", [
    (["--model-size", "huge"], "valid sizes: tiny, small, llama3-8b"),
    (["--model-size", "llama3-8b"], "use one of: tiny, small"),
    (["--layers", "0"], "--layers"),
    (["--decode-batch", "0"], "decode-batch"),
    (["--context", "64", "--max-seq", "32"], "longer than the KV cache (--max-seq 32)"),
    (["--mode", "infer"], "valid modes of --model layer: train, prefill, decode"),
    (["--batch", "4"], "--batch is for --model ffn"),
    (["--impl", "cutlass"], "valid impls: triton, torch"),
])
def test_layer_bad_input_exits_2_naming_the_choices(args, message, tmp_path):
    """Bad layer options exit 2 before anything runs, naming the valid choices (with no
    --model: the layer is the default)."""
    result = CliRunner().invoke(cli, ["contrast", *args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert not (tmp_path / "run").exists()


def test_layer_options_are_refused_for_the_ffn_model(tmp_path):
    """Layer options with --model ffn, and an unknown model, are usage errors."""
    result = CliRunner().invoke(cli, ["contrast", "--model", "ffn", "--train-seq", "16",
                                      "--layers", "2", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "--layers, --train-seq: options of --model layer" in result.stderr
    with pytest.raises(UsageError, match="valid models: ffn, layer"):
        contrast.run_contrast(tmp_path / "x", model="mlp")


def test_report_draws_the_layer_roofline_and_footprint(layer_run, tmp_path):
    """The report draws the layer's roofline and footprint figures, not the FFN bars."""
    out, _, _ = layer_run
    paths = report.write_report([out], tmp_path / "rep")
    md = paths.markdown.read_text()
    section = md.split("\n## Training vs inference\n")[1].split("\n## ")[0]
    assert "Decoder layer tiny x 1" in section and "as training, prefill and decode" in section
    names = [p.name for p in paths.figures]
    assert any(n.startswith("layer-roofline-") for n in names)
    assert any(n.startswith("layer-footprint-") for n in names)
    assert not any(n.startswith("train-vs-infer-") for n in names)
    for p in paths.figures:
        if p.name.startswith("layer-"):
            img = matplotlib.image.imread(p)
            assert img.shape[0] > 300 and img.std() > 0.01


# ---------------------------------------------------------------- fp8 inference (--dtype fp8)

FP8_HEADER = "inference fp8 (e4m3, per-token activation scales, per-channel weight scales)"


@pytest.fixture(scope="module")
def fp8_run(tmp_path_factory):
    """``tritonlab contrast --dtype fp8`` on the interpreter: the tiny layer, triton impl,
    train 1x16, prefill 1x16, decode 1 at context 32, 1 s phases (about 12 s on 2 cores)."""
    out = tmp_path_factory.mktemp("fp8") / "run"
    result = CliRunner().invoke(cli, ["contrast", "--dtype", "fp8", "--impl", "triton",
                                      "--decode-batch", "1", "--duration", "1", "--idle", "0",
                                      "--warmup", "0", "--cooldown", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "contrast.json").read_text()), result


def test_fp8_contrast_runs_inference_in_fp8_and_training_in_the_training_dtype(fp8_run):
    """Prefill and decode rows are fp8, training the interpreter's training default (float32:
    bf16 is wrong there), said in a warning and in the header."""
    _, doc, result = fp8_run
    train_dtype = layer_mod.LAYER_DEFAULTS["interpreter"]["dtype"]
    assert doc["status"] == "complete"
    assert {p["name"]: p["dtype"] for p in doc["phases"]} == {
        "train/triton/b1s16": train_dtype, "prefill/triton/b1p16": "fp8",
        "decode/triton/b1c32": "fp8"}
    assert not any(p.get("error") for p in doc["phases"])
    assert doc["model"]["dtypes"] == {"train": train_dtype, "prefill": "fp8", "decode": "fp8"}
    header = f"{FP8_HEADER}, training {train_dtype}"
    assert doc["model"]["precision"] == header
    assert header in result.stdout
    assert re.search(rf"train/triton/b1s16 +{train_dtype} ", result.stdout)
    assert re.search(r"decode/triton/b1c32 +fp8 ", result.stdout)
    assert any("training" in w and train_dtype in w and "interpreter" in w
               for w in doc["warnings"])


def test_fp8_rows_match_the_fp8_formulas(fp8_run):
    """FLOPs, bytes and footprint of the fp8 rows are the formulas with 1-byte weights and the
    quantiser's codes and scales counted; training's are the 16-bit (here fp32) ones."""
    _, doc, _ = fp8_run
    cfg = LayerConfig.from_size("tiny")
    params = init_params(cfg, 1, torch.float32, "cpu", 0)
    fp8_weights = ServingWeights(cfg, params, dtype="fp8", device="cpu")
    dt = fp8_weights.dtype  # the fp8 path's compute dtype: KV cache, io, norms
    assert dt == torch.float16
    max_seq = doc["plan"]["max_seq"]
    for p in doc["phases"]:
        b = p["batch"]
        if p["mode"] == "train":
            assert p["flops_per_step"] == train_flops(cfg, 1, b, 16)
            assert p["bytes_per_step"] == layer_mod.compulsory_bytes(cfg, 1, "train", b, 16,
                                                                     torch.float32)
            continue
        if p["mode"] == "prefill":
            tokens, flops = b * 16, prefill_flops(cfg, 1, [16] * b)
            footprint = Prefill(fp8_weights, impl="triton").footprint(
                b, max_seq, block_size=layer_mod.BLOCK_SIZE)
            kv = {"kv_write": tokens * 2 * cfg.kv_dim * 2}
        else:
            lengths = layer_mod.decode_lengths(b, 32)
            tokens, flops = b, decode_flops(cfg, 1, lengths)
            cache = KVCache(cfg, 1, b, max_seq, dtype=dt, device="cpu",
                            block_size=layer_mod.BLOCK_SIZE)
            footprint = Decode(fp8_weights, cache, impl="triton").footprint()
            kv = {"kv_read": sum(lengths) * 2 * cfg.kv_dim * 2,
                  "kv_write": tokens * 2 * cfg.kv_dim * 2}
        # per token and layer: codes (1 B per input feature) and a fp32 scale, written by the
        # quantiser and read by the GEMM, before QKV (dim), O (q_dim), gate/up (dim), down
        act_quant = tokens * 2 * (2 * cfg.dim + cfg.q_dim + cfg.hidden + 4 * 4)
        want = {"weights": fp8_weights.nbytes, **kv, "io": 2 * tokens * cfg.dim * 2,
                "act_quant": act_quant}
        assert p["flops_per_step"] == flops and p["tokens_per_step"] == tokens
        assert p["bytes_per_step"] == {**want, "total": sum(want.values())}
        assert p["footprint"] == footprint
        assert p["footprint"]["weights"] == fp8_weights.nbytes < cfg.param_count() * 2 / 1.8
        assert p["arithmetic_intensity"] == pytest.approx(flops / sum(want.values()))
    est = {ph.name: layer_mod.estimated_footprint(cfg, _fp8_plan(), ph)
           for ph in _fp8_plan().phases()}
    assert all(est[p["name"]] == p["footprint_bytes"] for p in doc["phases"]
               if p["mode"] != "train")


def _fp8_plan():
    """The fp8 run's plan."""
    return contrast.make_layer_plan("interpreter", dtype="fp8", impls=("triton",),
                                    decode_batches=(1,))[0]


def test_fp8_phases_use_the_fp8_peak_and_training_the_16_bit_peak():
    """% of peak: an fp8 row against the device's fp8 peak, a bf16 row against bf16's."""
    ceil = Ceilings(source="spec", tflops={"fp8": 2000.0, "bfloat16": 1000.0},
                    bandwidth_gbps=4000.0)
    for dtype, peak in (("fp8", 2000.0), ("bfloat16", 1000.0)):
        row = {"steps": 4, "seconds": 1.0, "flops_per_step": 100e12, "tflops": 400.0,
               "unavailable": {}}
        layer_mod.layer_metrics(row, {"tokens": 8, "bytes": {"total": 10**9},
                                      "footprint": {"total": 1}},
                                [0.25] * 4, peaks=ceil, capacity_bytes=None, dtype=dtype)
        assert row["compute_peak_tflops"] == peak
        assert row["compute_pct"] == pytest.approx(100 * 400.0 / peak)
        assert row["step_compute_pct_median"] == pytest.approx(100 * 400.0 / peak)
    assert layer_mod.ridge_point(ceil, "fp8") == pytest.approx(2 * ceil.ridge("bfloat16"))


def test_mixed_dtype_verdict_compares_compute_against_each_dtypes_peak():
    """fp8 prefill at more TFLOP/s but a smaller share of its (doubled) peak than bf16
    training: by the own-peak rule training demands more compute."""
    plan = _fp8_plan()
    rows = [_row("t", "train", 1, step_tflops_median=500.0, step_tflops_ci=[490.0, 510.0],
                 step_compute_pct_median=50.0, step_compute_pct_ci=[49.0, 51.0]),
            _row("p", "prefill", 1, step_tflops_median=800.0, step_tflops_ci=[790.0, 810.0],
                 step_compute_pct_median=40.0, step_compute_pct_ci=[39.5, 40.5])]
    v = layer_verdict(rows, plan=plan, counters="nvml", device="GPU", idle=None)
    compute = next(r for r in v["resources"] if r["resource"] == "compute")
    assert compute["metric"] == "step_compute_pct_median"
    assert (compute["winner"], compute["confidence"]) == ("train", "clear")
    assert any("own dtype's peak" in line for line in v["explanation"])
    one_dtype, _ = contrast.make_layer_plan("interpreter")
    v = layer_verdict(rows, plan=one_dtype, counters="nvml", device="GPU", idle=None)
    compute = next(r for r in v["resources"] if r["resource"] == "compute")
    assert compute["metric"] == "step_tflops_median" and compute["winner"] == "prefill"


def test_fp8_is_refused_before_sm_89(tmp_path, monkeypatch):
    """On a GPU below compute capability 8.9, --dtype fp8 exits 2 before anything runs,
    naming the requirement; on sm_90 training stays bfloat16 without a warning."""
    monkeypatch.setattr(plan_mod, "gpu_capability", lambda: (8, 0))
    for make in (contrast.make_layer_plan, contrast.make_plan):
        with pytest.raises(UsageError, match=r"compute capability 8\.9 or newer.*this one is 8\.0"):
            make("cuda", dtype="fp8")
    monkeypatch.setattr(backend_mod, "current",
                        lambda: backend_mod.Backend("cuda", "cuda", "test: an sm_80 GPU"))
    result = CliRunner().invoke(cli, ["contrast", "--dtype", "fp8", "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "needs a GPU of compute capability 8.9" in result.stderr
    assert not (tmp_path / "run").exists()
    monkeypatch.setattr(plan_mod, "gpu_capability", lambda: (9, 0))
    plan, warnings = contrast.make_layer_plan("cuda", dtype="fp8")
    assert plan.dtype_of("train") == "bfloat16" and plan.dtype_of("decode") == "fp8"
    assert plan.precision() == f"{FP8_HEADER}, training bfloat16" and not warnings
    assert "train_dtype" in plan.to_dict()
    assert "train_dtype" not in contrast.make_layer_plan("cuda")[0].to_dict()  # old runs resume


def test_report_shows_the_dtype_per_phase(fp8_run, tmp_path):
    """The report's contrast section states the mix and gives each phase its dtype."""
    out, _, _ = fp8_run
    md = report.write_report([out], tmp_path / "rep").markdown.read_text()
    section = md.split("\n## Training vs inference\n")[1].split("\n## ")[0]
    assert f"{FP8_HEADER}, training float32" in section
    table = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines()
             if line.startswith(("| phase ", "| train/", "| prefill/", "| decode/"))]
    head, rows = table[0], table[1:]
    assert head[:5] == ["phase", "mode", "impl", "batch", "dtype"]
    assert {r[0]: r[4] for r in rows} == {"train/triton/b1s16": "float32",
                                          "prefill/triton/b1p16": "fp8",
                                          "decode/triton/b1c32": "fp8"}
