"""`tritonlab sweep` and the run directory (tritonlab/runs/sweep.py, tritonlab/runs/store.py):
end to end on the interpreter through the real CLI, FLOPs against torch's FlopCounterMode,
failures recorded per point, hooks, NVTX ranges, resume after a killed sweep, and bad input."""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT, run_cli
from helpers import DEVICE, DoubleOp, wait_for
from torch.utils.flop_counter import FlopCounterMode

from tritonlab import backend
from tritonlab.cli import cli
from tritonlab.kernels.tuning import INTERPRETER_CONFIG, config_dict
from tritonlab.measure.timing import CpuTimer
from tritonlab.ops import registry
from tritonlab.ops.contract import Impl, OpSpec, Tolerance, dtype_name
from tritonlab.runs import store as runstore
from tritonlab.runs.records import point_key
from tritonlab.runs.store import RunDir, new_run_dir, read_results
from tritonlab.runs.sweep import SweepOptions, open_run, plan, run_sweep, sweep

ROW_FIELDS = ("schema_version", "op", "impl", "mode", "dtype", "shape", "backend", "device",
              "flops", "bytes", "intensity", "ms", "ms_ci", "samples_ms", "tflops", "gbps",
              "correct", "max_rel_err", "speedup", "roofline_tflops", "pct_roofline",
              "roofline_tflops_measured", "pct_roofline_measured", "config",
              "autotune_timings", "host_ms", "launch_bound", "clocks_start", "clocks_end",
              "error")
MANIFEST_FIELDS = ("schema_version", "run_id", "start_time", "end_time", "command", "git",
                   "versions", "backend", "device", "options", "timer", "status")


def expected_keys(op_name, dtypes=None, modes=None, shapes=None):
    op = registry.discover()[op_name]
    keys = set()
    for shape in shapes or op.presets["tiny"]:
        for dtype in dtypes or op.dtypes_interpreter:
            for mode in modes or op.modes:
                for impl in op.impls:
                    if impl.supports(mode, dtype, "interpreter") is None:
                        keys.add(point_key({"op": op_name, "impl": impl.name, "mode": mode,
                                            "dtype": dtype_name(dtype), "shape": dict(shape)}))
    return keys


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "run"
    r = run_cli("sweep", "matmul", "--preset", "tiny", "--out", str(out), "--json",
                "--budget", "0.05")
    return r, out


def test_sweep_writes_a_valid_run_directory(tiny_run, be):
    if be.is_gpu:
        pytest.skip("the tiny preset on the interpreter; the GPU lane sweeps on CUDA")
    r, out = tiny_run
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # one JSON document, nothing else on stdout
    manifest = json.loads((out / "manifest.json").read_text())
    for f in MANIFEST_FIELDS:
        assert f in manifest, f
    assert manifest["schema_version"] == 1 and manifest["status"] == "complete"
    assert manifest["backend"] == "interpreter" and manifest["device"]["name"]
    assert manifest["command"][1:4] == ["sweep", "matmul", "--preset"]
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["timer"]["timer"] == "perf_counter"
    assert manifest["options"]["cache"] == "warm" and manifest["options"]["budget_s"] == 0.05
    lines = (out / "results.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert {point_key(r) for r in rows} == expected_keys("matmul")
    assert len(rows) == len(expected_keys("matmul")) == 32
    assert doc["rows"] == rows and doc["failed"] == 0 and doc["run_dir"] == str(out)
    for row in rows:
        for f in ROW_FIELDS:
            assert f in row, f
        assert row["schema_version"] == 1 and row["error"] is None and row["correct"] is True
        assert row["backend"] == "interpreter" and row["device"] == manifest["device"]["name"]
    assert "matmul" in r.stderr and "TFLOP/s" in r.stderr  # the summary table, on stderr


def test_row_metrics_are_consistent(tiny_run, be):
    if be.is_gpu:
        pytest.skip("interpreter run")
    _, out = tiny_run
    rows = read_results(out / "results.jsonl")
    op = registry.discover()["matmul"]
    by_key = {point_key(r): r for r in rows}
    for row in rows:
        ms = row["ms"]
        assert ms > 0 and ms == pytest.approx(statistics.median(row["samples_ms"]))
        lo, hi = row["ms_ci"]
        assert lo <= ms <= hi
        assert row["n_samples"] == len(row["samples_ms"]) >= 2
        dtype = getattr(torch, row["dtype"])
        assert row["bytes"] == op.bytes(row["shape"], dtype, row["mode"])
        assert row["intensity"] == pytest.approx(row["flops"] / row["bytes"])
        assert row["tflops"] == pytest.approx(row["flops"] / (ms * 1e-3) / 1e12)
        assert row["gbps"] == pytest.approx(row["bytes"] / (ms * 1e-3) / 1e9)
        tols = op.tolerance(dtype, row["shape"], row["mode"])  # one per output
        assert row["max_rel_err"] <= max(t.max_rel for t in tols)
        if row["impl"] == "triton":
            torch_row = by_key[point_key({**row, "impl": "torch"})]
            assert row["speedup"] == {"torch": pytest.approx(torch_row["ms"] / ms)}
            if row["shape"]["M"] <= 16:  # decode-sized: the split-K path
                assert row["config"]["path"] == "splitk" and row["config"]["split_k"] >= 1
            else:
                assert row["config"] == {"path": "tiled", **config_dict(INTERPRETER_CONFIG)}
        else:
            assert row["speedup"] is None and row["config"] is None
        assert row["autotune_timings"] is None  # no autotuning under the interpreter
        assert row["launch_bound"] is None and row["timer"] == "perf_counter"


def _counted_flops(op, impl, shape, dtype, mode):
    inputs = op.make_inputs(shape, dtype, DEVICE, 0)
    run = impl.build(inputs, mode)
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def test_row_flops_equal_formula_and_flop_counter(tiny_run, be):
    if be.is_gpu:
        pytest.skip("interpreter run")
    _, out = tiny_run
    op = registry.discover()["matmul"]
    rows = read_results(out / "results.jsonl")
    assert rows
    for row in rows:
        assert row["flops"] == op.flops(row["shape"], row["mode"])
        counted = _counted_flops(op, op.impl("torch"), row["shape"], torch.float32, row["mode"])
        assert row["flops"] == counted


@pytest.mark.parametrize("op_name", sorted(registry.discover()))
def test_every_op_formula_matches_the_flop_counter_on_its_baselines(op_name):
    op = registry.discover()[op_name]
    shape = dict(op.presets["tiny"][0]) if "tiny" in op.presets else None
    if shape is None:
        pytest.skip(f"{op_name} has no tiny preset")
    if "mask" in op.tags:
        pytest.skip("attention counts only the (query, key) pairs its mask leaves (causal, "
                    "or each sequence's length) and the backward's recomputed S, as "
                    "FlashAttention does; FlopCounterMode on the eager chain over the padded "
                    "problem counts neither (tests/test_attention.py and "
                    "tests/test_decode_attention.py check the formulas)")
    dtype = torch.float32 if torch.float32 in op.dtypes else op.dtypes[0]
    compared = 0
    for mode in op.modes:
        for impl in op.baselines:
            if impl.supports(mode, dtype, "interpreter"):
                continue
            counted = _counted_flops(op, impl, shape, dtype, mode)
            if counted == 0:
                continue  # nothing FlopCounterMode counts (elementwise-only work)
            extra = op.flops(shape, mode) - counted
            if not op.fused:
                assert extra == 0, (mode, impl.name)
            else:
                # A fused op's formula may add its epilogue's elementwise FLOPs (bias add,
                # act' product, db sums), which FlopCounterMode does not count: a few per
                # element of the M x N output, never fewer than the GEMMs.
                assert extra >= 0, (mode, impl.name)
                if {"M", "N"} <= set(shape):
                    assert extra <= 4 * shape["M"] * shape["N"], (mode, impl.name)
            compared += 1
    if not compared:
        pytest.skip(f"FlopCounterMode counts nothing on {op_name}'s baselines")


# ------------------------------------------------------------- failures, hooks (in-process)

def _toy_op(*impls: Impl) -> OpSpec:
    """y = 2x on float32 CPU tensors: impls are plain torch, so these tests cost milliseconds."""
    return DoubleOp(impls, presets={"tiny": [{"N": 33}, {"N": 65}]}, dtypes=(torch.float32,),
                    tolerance=Tolerance(1e-6, 1e-6))


def _scale(factor):
    def build(inputs, mode):
        out = torch.empty_like(inputs["x"])
        return lambda: (torch.mul(inputs["x"], factor, out=out),)
    return build


def _broken_build(inputs, mode):
    raise RuntimeError("boom: no kernel for this shape")


def _oom_after_check(inputs, mode):
    calls = {"n": 0}
    out = torch.empty_like(inputs["x"])

    def run():
        calls["n"] += 1
        if calls["n"] > 2:  # the checker's two calls pass; timing hits the "OOM"
            raise RuntimeError("CUDA out of memory. Tried to allocate 80.00 GiB")
        return (torch.mul(inputs["x"], 2, out=out),)
    return run


def _oom_at_once(inputs, mode):
    def run():
        raise RuntimeError("CUDA out of memory. Tried to allocate 80.00 GiB")
    return run


def _run_toy(tmp_path, op, hooks=()):
    points, notes = plan([op], {"toy": op.presets["tiny"]}, {"toy": [torch.float32]},
                         backend_name="interpreter")
    return sweep(points, tmp_path / "run", resume=False,
                 options=SweepOptions(budget_s=0.02), argv=["test"], selection={},
                 hooks=list(hooks))


def test_a_sweep_cut_short_by_an_error_is_not_marked_complete(tmp_path, monkeypatch):
    """An error that escapes the point loop (a full disk on append) propagates, and the
    manifest says interrupted, never complete: --resume finishes the run."""
    op = _toy_op(Impl("good", "triton", _scale(2)), Impl("torch", "baseline", _scale(2)))

    def full_disk(self, rows):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(RunDir, "append", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _run_toy(tmp_path, op)
    manifest = json.loads((tmp_path / "run" / runstore.MANIFEST).read_text())
    assert manifest["status"] == "interrupted"


def test_incorrect_and_failing_impls_are_recorded_never_timed_and_the_sweep_goes_on(tmp_path):
    op = _toy_op(Impl("good", "triton", _scale(2)), Impl("wrong", "triton", _scale(3)),
                 Impl("broken", "triton", _broken_build), Impl("oom", "triton", _oom_after_check),
                 Impl("oom_check", "triton", _oom_at_once), Impl("torch", "baseline", _scale(2)))
    result = _run_toy(tmp_path, op)
    rows = {(r["impl"], r["shape"]["N"]): r for r in result.rows}
    assert len(rows) == 12  # 6 impls x 2 shapes: the second point ran after the failures
    for n in (33, 65):
        good, wrong, broken, oom, base = (rows[(i, n)] for i in
                                          ("good", "wrong", "broken", "oom", "torch"))
        assert good["correct"] and good["error"] is None and good["ms"] > 0
        assert good["speedup"] == {"torch": pytest.approx(base["ms"] / good["ms"])}
        assert base["ms"] > 0 and base["speedup"] is None
        assert wrong["correct"] is False and wrong["error"].startswith("mismatch")
        assert wrong["max_rel_err"] == pytest.approx(0.5, rel=1e-6)
        assert wrong["ms"] is None and wrong["samples_ms"] == [] and wrong["speedup"] is None
        assert broken["correct"] is False and "boom" in broken["error"] and broken["ms"] is None
        assert oom["correct"] is True and oom["error"].startswith("OOM")
        assert oom["ms"] is None
        oom_check = rows[("oom_check", n)]
        assert oom_check["correct"] is False and oom_check["error"].startswith("OOM")
        assert oom_check["ms"] is None
    assert len(result.failed) == 8
    assert RunDir.open(result.run_dir).manifest()["status"] == "complete"


def test_hooks_add_fields_and_a_failing_hook_is_recorded(tmp_path):
    seen = []

    def static_facts(op, impl, row, run):
        seen.append((impl.name, run is not None))
        return {"registers": 42 if impl.kind == "triton" else None}

    def broken_hook(op, impl, row, run):
        raise KeyError("no counters")

    op = _toy_op(Impl("good", "triton", _scale(2)), Impl("wrong", "triton", _scale(3)),
                 Impl("torch", "baseline", _scale(2)))
    result = _run_toy(tmp_path, op, hooks=[static_facts, broken_hook])
    assert len(result.rows) == 6
    for row in result.rows:
        assert row["registers"] == (42 if row["impl"] != "torch" else None)
        assert "KeyError" in row["hook_errors"]["broken_hook"]
    # The hook gets the timed callable, or None for an implementation that was not timed.
    assert sorted(set(seen)) == [("good", True), ("torch", True), ("wrong", False)]


class RangeRecorder:
    def __init__(self):
        self.pushed: list[str] = []
        self.popped = 0

    def push(self, name):
        self.pushed.append(name)

    def pop(self):
        self.popped += 1


def test_each_timed_impl_runs_inside_an_nvtx_range_named_by_its_point(tmp_path, monkeypatch):
    op = _toy_op(Impl("good", "triton", _scale(2)), Impl("torch", "baseline", _scale(2)))
    points, _ = plan([op], {"toy": op.presets["tiny"]}, {"toy": [torch.float32]},
                     backend_name="interpreter")
    assert points[0].range_name(op.impl("good")) == "tritonlab:toy/good/infer/float32/33"
    recorder = RangeRecorder()
    timer = CpuTimer(marker=recorder)
    options = SweepOptions(budget_s=0.02)
    run = open_run(tmp_path / "marked", resume=False, be=backend.current(), argv=["test"],
                   selection={}, options=options, timer=timer)
    run_sweep(points, run, timer, options, hooks=[])
    expected = {p.range_name(impl) for p in points for impl in p.impls}
    assert set(recorder.pushed) == expected and recorder.popped == len(recorder.pushed)

    # The interpreter's own timer touches no NVTX at all.
    calls = []
    monkeypatch.setattr(torch.cuda.nvtx, "range_push", lambda name: calls.append(name))
    monkeypatch.setattr(torch.cuda.nvtx, "range_pop", lambda: calls.append(None))
    result = _run_toy(tmp_path, op)
    assert result.rows and not result.failed and calls == []


def test_run_directory_refuses_to_overwrite_and_names_new_runs(tmp_path):
    a = new_run_dir(tmp_path)
    a.mkdir()
    b = new_run_dir(tmp_path)
    assert a != b and b.parent == tmp_path and b.name.startswith(a.name[:8])
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(runstore.UsageError, match="not an empty directory"):
        RunDir.create(tmp_path / "junk", {"schema_version": 1})
    RunDir.create(tmp_path / "r", {"schema_version": 1}).release()
    with pytest.raises(runstore.UsageError, match="--resume"):
        RunDir.create(tmp_path / "r", {"schema_version": 1})


def test_results_reader_skips_a_truncated_last_line_and_rejects_corruption(tmp_path):
    path = tmp_path / "results.jsonl"
    good = json.dumps({"schema_version": 1, "op": "matmul", "impl": "triton", "mode": "fwd",
                       "dtype": "float32", "shape": {"M": 8, "N": 8, "K": 8}})
    path.write_text(good + "\n" + '{"schema_version": 1, "op": "mat')
    warnings = []
    assert read_results(path, warnings.append) == [json.loads(good)]
    assert "truncated" in warnings[0]
    path.write_text('{"schema_version": 1, "op": "mat\n' + good + "\n")
    with pytest.raises(runstore.UsageError, match=":1: not a JSON object"):
        read_results(path)
    path.write_text(json.dumps({"schema_version": 99}) + "\n")
    with pytest.raises(runstore.UsageError, match="newer"):
        read_results(path)


# ----------------------------------------------------------------- resume, Ctrl-C, crash

def _wait_for_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    wait_for(lambda: path.exists() and path.read_bytes().count(b"\n") >= n, proc,
             f"writing {n} rows", timeout)


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tritonlab.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_ctrl_c_keeps_points_and_resume_after_a_kill_measures_each_point_once(tmp_path, be):
    if be.is_gpu:
        pytest.skip("interpreter timings make the kill land mid-run reliably")
    out = tmp_path / "run"
    shapes = ["64x64x64", "1x130x75", "97x83x131"]
    args = ["sweep", "matmul", "--dtype", "float32", "--out", str(out), "--budget", "0.05",
            *(a for s in shapes for a in ("--shape", s))]
    results = out / "results.jsonl"
    want = expected_keys("matmul", dtypes=[torch.float32], shapes=[
        dict(zip("MNK", map(int, s.split("x")))) for s in shapes])

    # Ctrl-C: exit 130, the finished points are kept and the manifest says interrupted.
    p = _start(*args)
    _wait_for_rows(results, 2, p)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err.decode()
    assert "--resume" in err.decode()
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    first = {point_key(r): r for r in read_results(results)}
    assert 2 <= len(first) < len(want)

    # A crash: SIGKILL mid-run (maybe mid-write) of a resumed sweep.
    p = _start(*args, "--resume")
    _wait_for_rows(results, len(first) + 2, p)
    p.kill()
    p.communicate(timeout=60)
    second = {point_key(r): r for r in read_results(results, lambda m: None)}
    assert len(second) >= len(first) + 2

    # Resume to the end: every point exactly once, nothing measured before is redone.
    r = run_cli(*args, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    rows = read_results(results)
    keys = [point_key(row) for row in rows]
    assert sorted(keys) == sorted(want)
    final = dict(zip(keys, rows))
    for key, row in second.items():
        assert final[key] == row
    doc = json.loads(r.stdout)
    assert doc["new_rows"] == len(want) - len(second)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["resumed"]) == 2


def test_resume_reports_and_repairs_a_truncated_last_line(tiny_run, tmp_path, be):
    if be.is_gpu:
        pytest.skip("interpreter run")
    _, src = tiny_run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    results = out / "results.jsonl"
    n = len(results.read_text().splitlines())
    with open(results, "a") as f:
        f.write('{"schema_version": 1, "op": "matmul", "impl": "tri')
    r = run_cli("sweep", "matmul", "--preset", "tiny", "--out", str(out), "--resume",
                "--json", "--budget", "0.05")
    assert r.returncode == 0, r.stderr
    assert "truncated" in r.stderr
    assert json.loads(r.stdout)["new_rows"] == 0
    lines = results.read_text().splitlines()
    assert len(lines) == n and all(json.loads(line) for line in lines)


# ------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("args, message", [
    (["sweep", "nosuchop"], "valid ops: "),
    (["sweep", "matmul", "--impl", "cublas"], "valid impls: "),
    (["sweep", "matmul", "--mode", "sideways"], "valid modes: "),
    (["sweep", "matmul", "--shape", "64x64"], "MxNxK"),
    (["sweep", "matmul", "--shape", "64xAx64"], "malformed shape"),
    (["sweep", "matmul", "--preset", "huge"], "valid presets: "),
    (["sweep", "matmul", "--preset", "tiny", "--shape", "8x8x8"], "not both"),
    (["sweep", "matmul", "--resume"], "--resume needs --out"),
    (["sweep", "matmul", "--dtype", "float64"], "float16"),
])
def test_bad_sweep_input_exits_2_naming_the_choices(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_resume_of_a_directory_that_is_not_a_run_exits_2(tmp_path, be):
    if be.is_gpu:
        pytest.skip("interpreter")
    result = CliRunner().invoke(cli, ["sweep", "matmul", "--out", str(tmp_path), "--resume"])
    assert result.exit_code == 2 and "not a run directory" in result.output
    result = CliRunner().invoke(cli, ["sweep", "matmul", "--shape", "8x8x8", "--graph",
                                      "--out", str(tmp_path / "g")])
    assert result.exit_code == 2 and "--graph needs the cuda backend" in result.output


# ---------------------------------------------------------------------------- GPU lane

@pytest.mark.gpu
def test_sweep_on_cuda_records_timing_config_tuning_and_device(gpu, tmp_path):
    r = run_cli("sweep", "matmul", "--shape", "512x512x512", "--shape", "768x1024x512",
                "--dtype", "float16", "--dtype", "bfloat16", "--out", str(tmp_path / "run"),
                "--json", "--budget", "0.3")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    name = torch.cuda.get_device_name()
    assert manifest["backend"] == "cuda" and manifest["device"]["name"] == name
    assert manifest["timer"]["flush_bytes"] >= 2 * manifest["timer"]["l2_bytes"] > 0
    rows = doc["rows"]
    op = registry.discover()["matmul"]
    per_shape = sum(impl.supports(mode, dtype, "cuda") is None for mode in op.modes
                    for dtype in (torch.float16, torch.bfloat16) for impl in op.impls)
    assert len(rows) == 2 * per_shape
    for row in rows:
        assert row["error"] is None and row["correct"] is True, row["error"]
        assert row["timer"] == "cuda_events" and row["cache"] == "cold"
        assert row["ms"] > 0 and row["ms_ci"][0] <= row["ms"] <= row["ms_ci"][1]
        assert row["host_ms"] > 0 and isinstance(row["launch_bound"], bool)
        assert row["settled"] is True
        if row["impl"] == "triton":
            assert row["config"] and "BLOCK_M" in row["config"]
            assert row["speedup"]["torch"] > 0
            from tritonlab.kernels.tuning import autotune_enabled
            if autotune_enabled():
                # The tuning that chose this point's config, with every config's time.
                tuned = row["autotune_timings"].values()
                assert any(all(row["config"].get(k) == v for k, v in t["config"].items())
                           and len(t["timings"]) > 1 for t in tuned)
        if row["roofline_tflops"] is not None:
            assert 0 < row["pct_roofline"] < 150
