"""The per-point extras a GPU sweep adds: static compile facts (checked here by compiling
for sm_90a without a GPU) and counter summaries (GPU lane)."""

from __future__ import annotations

import json

import pytest
import torch

from tritonlab.ops import registry
from tritonlab.runs.point_hooks import gpu_point_hooks, static_hook


def test_no_hooks_on_the_interpreter(be, tmp_path):
    if be.is_gpu:
        pytest.skip("the interpreter backend adds no hooks; this machine has a GPU")
    with gpu_point_hooks(tmp_path) as hooks:
        assert hooks == []
    assert not (tmp_path / "counters.csv").exists()


def test_static_hook_reports_the_kernel_the_point_ran():
    op = registry.discover()["matmul"]
    impl = op.impl("triton")
    row = {"dtype": "float16", "config": {"path": "tiled", "BLOCK_M": 128, "BLOCK_N": 256,
                                          "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 8,
                                          "num_stages": 3}}
    facts = static_hook((9, 0))(op, impl, row, run=lambda: None)["static"]
    assert facts["arch"] == "sm_90a" and not facts.get("error")
    assert 0 < facts["registers"] <= 255 and facts["spill_stores"] == 0
    assert any(k.startswith("HGMMA") for k in facts["tensor_core"])
    # Baselines and untimed rows get nothing.
    assert static_hook((9, 0))(op, op.impl("torch"), row, run=lambda: None) is None
    assert static_hook((9, 0))(op, impl, row, run=None) is None


def test_static_hook_handles_one_config_per_kernel(device):
    op = registry.discover()["linear"]
    impl = op.impl("triton")
    shape = {"M": 70, "N": 20, "K": 9}
    impl.build(op.make_inputs(shape, torch.float16, device, 0), "fwd_bwd")()
    config = impl.config("fwd_bwd")
    assert set(config) == {"fwd", "bwd_dx", "bwd_dw"}
    static = static_hook((8, 0))(op, impl, {"dtype": "float16", "config": config},
                                 run=lambda: None)["static"]
    assert set(static) == set(config)
    kernels = {"fwd": "_linear_fwd_kernel", "bwd_dx": "_linear_dx_kernel",
               "bwd_dw": "_linear_dw_kernel"}
    for target, facts in static.items():
        assert facts["arch"] == "sm_80" and facts["registers"] > 0, (target, facts)
        # each entry is the facts of its own kernel, not of another taking the same keys
        assert facts["target"] == target and [k["target"] for k in facts["kernels"]] == [target]
        assert facts["kernel"] == kernels[target]
        assert facts["smem_bytes"] <= 164 * 1024  # fits an A100: the right config was used
    json.dumps(static)


@pytest.mark.gpu
def test_gpu_sweep_rows_carry_static_facts_and_counters(gpu, tmp_path):
    from conftest import run_cli

    out = tmp_path / "run"
    r = run_cli("sweep", "matmul", "--shape", "1024x1024x1024", "--dtype", "float16",
                "--mode", "fwd", "--budget", "0.2", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    tri = next(row for row in rows if row["impl"] == "triton")
    assert tri["static"]["registers"] > 0
    assert tri["counters"]["calls"] > 0
    assert (out / "counters.csv").read_text().count("\n") > 2
