"""`tritonlab compare` (tritonlab/runs/compare.py) on two real interpreter runs, on copies of a run
whose times were doubled or halved or whose points fail, and on bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run_cli

from tritonlab.cli import cli
from tritonlab.runs.compare import compare_point, speedup_geomeans

SWEEP = ("sweep", "matmul", "--shape", "64x64x64", "--shape", "1x130x75", "--dtype", "float32",
         "--mode", "fwd", "--budget", "0.3")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for name in ("a", "b"):
        r = run_cli(*SWEEP, "--out", str(root / name), "--json")
        assert r.returncode == 0, r.stderr
    return root / "a", root / "b"


def compare(*args):
    return CliRunner().invoke(cli, ["compare", *map(str, args)])


def rows_of(run):
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def rewrite(src, dst, edit_row=None, edit_manifest=None):
    shutil.copytree(src, dst)
    rows = rows_of(dst)
    for row in rows:
        if edit_row:
            edit_row(row)
    (dst / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if edit_manifest:
        manifest = json.loads((dst / "manifest.json").read_text())
        edit_manifest(manifest)
        (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def scale_times(factor):
    def edit(row):
        row["ms"] *= factor
        row["ms_ci"] = [v * factor for v in row["ms_ci"]]
        row["samples_ms"] = [v * factor for v in row["samples_ms"]]
    return edit


def pin_samples(row):
    """Pins a row's samples to a 2 % spread around its median: the interpreter's own can
    spread more than 3x over a few samples, so a slowdown written into them could read as
    noise."""
    row["samples_ms"] = [row["ms"] * (0.99 + 0.005 * i) for i in range(5)]
    row["ms_ci"] = [row["ms"] * 0.99, row["ms"] * 1.01]


def test_compare_two_real_runs(runs):
    a, b = runs
    result = compare(a, b, "--json")
    assert result.exit_code in (0, 1), result.output
    doc = json.loads(result.stdout)
    assert doc["passed"] == (result.exit_code == 0) == (doc["regressions"] == 0)
    assert len(doc["points"]) == 4 and not doc["only_base"] and not doc["only_new"]
    base = {(r["impl"], r["shape"]["M"]): r for r in rows_of(a)}
    new = {(r["impl"], r["shape"]["M"]): r for r in rows_of(b)}
    for p in doc["points"]:
        key = (p["impl"], p["shape"]["M"])
        assert p["speedup"] == pytest.approx(base[key]["ms"] / new[key]["ms"])
        lo, hi = p["speedup_ci"]
        assert lo <= p["speedup"] <= hi
    geo = {(g["op"], g["impl"]): g for g in doc["geomean"]}
    assert set(geo) == {("matmul", None), ("matmul", "triton"), ("matmul", "torch")}
    speeds = [p["speedup"] for p in doc["points"]]
    assert geo[("matmul", None)]["speedup"] == pytest.approx(np.exp(np.mean(np.log(speeds))))
    assert geo[("matmul", None)]["n"] == 4


def test_a_run_compared_with_itself_is_unchanged(runs):
    a, _ = runs
    result = compare(a, a, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {p["verdict"] for p in doc["points"]} == {"same"}
    assert all(p["speedup"] == 1.0 for p in doc["points"])


def test_doubled_times_are_a_regression_and_halved_an_improvement(runs, tmp_path):
    a, _ = runs
    # On the run's own samples a point is flagged exactly when its CI excludes "no change"
    # (interpreter points with a few very noisy samples may not be).
    slow = rewrite(a, tmp_path / "slow", scale_times(2.0))
    doc = json.loads(compare(a, slow, "--json").stdout)
    for p in doc["points"]:
        assert p["speedup"] == pytest.approx(0.5)
        lo, hi = p["speedup_ci"]
        assert p["verdict"] == ("regression" if hi < 1.0 else "within noise")
    assert all(g["speedup"] == pytest.approx(0.5) for g in doc["geomean"])
    # On samples pinned to a 2 % spread every point is.
    base = rewrite(a, tmp_path / "base", pin_samples)
    slow = rewrite(base, tmp_path / "slow_pinned", scale_times(2.0))
    result = compare(base, slow)
    assert result.exit_code == 1 and "regression(s)" in result.output
    doc = json.loads(compare(base, slow, "--json").stdout)
    assert doc["regressions"] == len(doc["points"]) == 4 and not doc["passed"]
    assert {p["verdict"] for p in doc["points"]} == {"regression"}
    fast = rewrite(base, tmp_path / "fast", scale_times(0.5))
    result = compare(base, fast, "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["improvements"] == 4
    assert {p["verdict"] for p in doc["points"]} == {"improvement"}


def test_real_cli_exits_1_on_a_regression(runs, tmp_path):
    a, _ = runs
    base = rewrite(a, tmp_path / "base", pin_samples)
    slow = rewrite(base, tmp_path / "slow", scale_times(2.0))
    r = run_cli("compare", str(base), str(slow), "--json")
    assert r.returncode == 1, r.stderr
    assert json.loads(r.stdout)["regressions"] >= 1


def test_a_point_that_now_fails_is_a_regression(runs, tmp_path):
    a, _ = runs

    def break_triton(row):
        if row["impl"] == "triton" and row["shape"]["M"] == 1:
            row.update(correct=False, error="mismatch: output 0", ms=None, samples_ms=[])

    broken = rewrite(a, tmp_path / "broken", break_triton)
    result = compare(a, broken, "--json")
    assert result.exit_code == 1
    verdicts = [p["verdict"] for p in json.loads(result.stdout)["points"]]
    assert verdicts.count("regression (now fails)") == 1
    assert compare(broken, a).exit_code == 0  # fixed, not a regression


def _row(samples):
    return {"op": "matmul", "impl": "triton", "mode": "fwd", "dtype": "float16",
            "shape": {"M": 1, "N": 2, "K": 3}, "correct": True, "error": None,
            "ms": float(np.median(samples)), "samples_ms": list(samples)}


def test_slowdown_must_beat_both_threshold_and_noise():
    rng = np.random.default_rng(0)
    base = rng.normal(1.0, 0.002, 200)
    # 3% slower, tight: a regression only when the threshold is below 3%.
    tight = base * 1.03
    assert compare_point(_row(base), _row(tight), 0.05)["verdict"] == "same"
    assert compare_point(_row(base), _row(tight), 0.01)["verdict"] == "regression"
    # 10% slower in the median but so noisy that the CI includes no change.
    noisy_base = rng.uniform(0.5, 1.5, 15)
    noisy_new = rng.permutation(noisy_base) * 1.1
    p = compare_point(_row(noisy_base), _row(noisy_new), 0.05)
    assert p["speedup_ci"][0] < 1.0 < p["speedup_ci"][1]
    assert p["verdict"] in ("within noise", "same")


def test_geometric_means_skip_points_without_a_speedup():
    def point(impl, speedup):
        return {"op": "matmul", "impl": impl, "speedup": speedup}

    geo = speedup_geomeans([point("triton", 1.0), point("triton", 4.0), point("torch", 0.5),
                            point("torch", 2.0), point("torch", 1.0)])
    assert [(g["op"], g["impl"], g["n"]) for g in geo] == [
        ("matmul", None, 5), ("matmul", "torch", 3), ("matmul", "triton", 2)]
    by_impl = {g["impl"]: g["speedup"] for g in geo}
    assert by_impl["triton"] == pytest.approx(2.0) and by_impl["torch"] == pytest.approx(1.0)
    assert by_impl[None] == pytest.approx(np.exp(np.mean(np.log([1, 4, 0.5, 2, 1]))))
    # Failed points (None), a zero or a non-finite ratio have no mean to contribute to; a
    # group left with nothing is absent, not a mean of nothing.
    assert speedup_geomeans([]) == []
    assert speedup_geomeans([point("triton", None), point("triton", 0.0),
                             point("triton", float("inf"))]) == []
    geo = speedup_geomeans([point("triton", 0.0), point("torch", 3.0)])
    assert [(g["impl"], g["n"], g["speedup"]) for g in geo] == [
        (None, 1, pytest.approx(3.0)), ("torch", 1, pytest.approx(3.0))]


def test_runs_from_different_devices_need_force(runs, tmp_path):
    a, _ = runs
    other = rewrite(a, tmp_path / "other", edit_manifest=lambda m: m["device"].update(
        name="NVIDIA H100 80GB HBM3"))
    result = compare(a, other)
    assert result.exit_code == 2
    assert "device differs" in result.output and "--force" in result.output
    result = compare(a, other, "--force", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["incompatibilities"]
    warm = rewrite(a, tmp_path / "cold", edit_manifest=lambda m: m["timer"].update(cache="cold"))
    assert compare(a, warm).exit_code == 2


def test_bad_runs_exit_2_and_a_truncated_line_is_skipped(runs, tmp_path):
    a, _ = runs
    result = compare(a, tmp_path)
    assert result.exit_code == 2 and "not a run directory" in result.output
    result = compare(a, tmp_path / "missing")
    assert result.exit_code == 2 and "not a run directory" in result.output

    cut = rewrite(a, tmp_path / "cut")
    text = (cut / "results.jsonl").read_text()
    (cut / "results.jsonl").write_text(text[: len(text) - 40])  # the last row, cut mid-way
    result = compare(a, cut, "--json")
    assert result.exit_code == 0, result.output
    assert "truncated" in result.stderr
    doc = json.loads(result.stdout)
    assert len(doc["points"]) == 3 and len(doc["only_base"]) == 1

    bad = rewrite(a, tmp_path / "bad")
    lines = (bad / "results.jsonl").read_text().splitlines()
    lines[0] = lines[0][:30]
    (bad / "results.jsonl").write_text("\n".join(lines) + "\n")
    result = compare(a, bad)
    assert result.exit_code == 2 and "corrupt" in result.output

    newer = rewrite(a, tmp_path / "newer", edit_manifest=lambda m: m.update(schema_version=2))
    result = compare(a, newer)
    assert result.exit_code == 2 and "newer" in result.output


def test_runs_over_several_gpu_models_are_compared_model_by_model(runs, tmp_path):
    a, _ = runs
    h100, a100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"

    def two_models(src, dst, a100_factor):
        """``src`` as a cluster sweep over two GPU models writes it: each point per model,
        its samples pinned (:func:`pin_samples`)."""
        shutil.copytree(src, dst)
        out = []
        for model, factor in ((h100, 1.0), (a100, a100_factor)):
            for row in rows_of(src):
                row.update(device=model, gpu_name=model)
                pin_samples(row)
                scale_times(factor)(row)
                out.append(row)
        (dst / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
        manifest = json.loads((dst / "manifest.json").read_text())
        manifest.update(device={"name": f"{h100} + {a100}", "kind": "cuda"},
                        cluster={"models": [h100, a100]})
        (dst / "manifest.json").write_text(json.dumps(manifest))
        return dst

    base = two_models(a, tmp_path / "base", 1.0)
    new = two_models(a, tmp_path / "new", 3.0)  # the A100 got 3x slower, the H100 did not
    result = compare(base, new, "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    n = len(rows_of(a))
    assert len(doc["points"]) == 2 * n and not doc["incompatibilities"]
    verdicts = {(p["device"], p["verdict"]) for p in doc["points"]}
    assert verdicts == {(h100, "same"), (a100, "regression")}
    per = {d["device"]: d["geomean"] for d in doc["by_device"]}
    assert per[h100][0]["speedup"] == pytest.approx(1.0)
    assert per[a100][0]["speedup"] == pytest.approx(1 / 3)
    text = compare(base, new).output
    assert "per GPU model, side by side" in text and a100 in text

    # A one-GPU run is compared with the cluster run's points of its model only.
    one = rewrite(a, tmp_path / "one", edit_row=lambda r: r.update(device=h100, gpu_name=h100),
                  edit_manifest=lambda m: m["device"].update(name=h100))
    result = compare(one, new, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert len(doc["points"]) == n and {p["device"] for p in doc["points"]} == {h100}
    assert doc["only_devices"] == [f"{a100} only in NEW"]
