"""The inference MLP block (workloads/infer.py) against model.reference_forward in float64,
both impls, the decode dispatch, weight sharing with model.init_params, FLOPs against
torch's flop counter, and bad input."""

from __future__ import annotations

import importlib

import pytest
import torch

from tritonlab.measure import check
from tritonlab.ops.contract import Tolerance, reduction_tolerance
from tritonlab.workloads.infer import InferenceWorkload
from tritonlab.workloads.model import MLPConfig, init_params, reference_forward

sk = importlib.import_module("tritonlab.kernels._splitk")

TINY = MLPConfig.from_size("tiny")


def assert_block_matches(cfg, workload, x, y):
    """y against the block in float64 on the same weights. The error budget: gate/up (two
    dim-long dots multiplied) and the down projection (a hidden-long dot) add up."""
    params64 = {k: v.double() for k, v in workload.params.items()}
    ref = reference_forward(cfg, params64, x.double())
    up = reduction_tolerance(y.dtype, cfg.dim)
    down = reduction_tolerance(y.dtype, cfg.hidden)
    tol = Tolerance(2 * up.rel_fro + down.rel_fro, 2 * up.max_rel + down.max_rel)
    ok, *_, why = check.compare((y,), (ref,), tol)
    assert ok, why


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("impl", ["triton", "torch"])
@pytest.mark.parametrize("tokens", [1, 16, 17, 45])
def test_block_matches_the_float64_reference(tokens, impl, dtype):
    w = InferenceWorkload(TINY, impl=impl, dtype=dtype, seed=tokens)
    x = w.make_batch(tokens, seed=tokens)
    y = w.step(x)
    assert y.shape == x.shape and y.dtype == dtype
    assert y.is_inference() and not y.requires_grad
    assert_block_matches(TINY, w, x, y)


def test_gelu_tanh_block_and_a_larger_config():
    cfg = MLPConfig(dim=96, hidden=160, activation="gelu_tanh", eps=1e-6)
    w = InferenceWorkload(cfg, impl="triton", dtype=torch.float32, seed=3)
    for tokens in (3, 20):
        x = w.make_batch(tokens, seed=5)
        assert_block_matches(cfg, w, x, w.step(x))


@pytest.mark.parametrize("tokens, decode", [(1, True), (16, True), (17, False)])
def test_decode_tokens_take_the_split_k_kernels(tokens, decode):
    w = InferenceWorkload(TINY, dtype=torch.float16)
    x = w.make_batch(tokens)
    before = sk.LAUNCHES["partial"]
    w.step(x)
    # gated_mlp and the down projection both go to split-K at decode sizes.
    assert sk.LAUNCHES["partial"] - before == (2 if decode else 0)


def test_triton_and_torch_impls_agree_on_shared_weights(device):
    params = init_params(TINY, torch.float32, device, seed=11)
    fused = InferenceWorkload(TINY, impl="triton", dtype=torch.float32, params=params)
    eager = InferenceWorkload(TINY, impl="torch", dtype=torch.float32, params=params)
    for name, t in params.items():  # same dtype and device: used in place, not copied
        assert fused.params[name].data_ptr() == t.data_ptr() == eager.params[name].data_ptr()
    x = fused.make_batch(9, seed=1)
    ok, *_, why = check.compare((fused.step(x),), (eager.step(x),), Tolerance(1e-5, 1e-5))
    assert ok, why


def test_params_of_another_dtype_are_converted_once(device):
    params = init_params(TINY, torch.float32, device, seed=2)
    w = InferenceWorkload(TINY, dtype=torch.float16, params=params)
    assert all(t.dtype == torch.float16 for t in w.params.values())
    assert torch.equal(w.params["w_up"], params["w_up"].half())
    assert set(w.params) == {"norm_weight", "w_gate", "w_up", "w_down"}


def test_make_batch_is_seeded_and_flops_match_torch_flop_counter():
    # Imported here: torch.utils.flop_counter imports triton, which must not happen before
    # the backend is selected (Triton reads TRITON_INTERPRET when its own library loads).
    from torch.utils.flop_counter import FlopCounterMode

    w = InferenceWorkload(TINY, impl="torch", dtype=torch.float32)
    a, b, c = w.make_batch(5, seed=1), w.make_batch(5, seed=1), w.make_batch(5, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (5, TINY.dim) and a.dtype == torch.float32
    with FlopCounterMode(display=False) as counter:
        w.step(a)
    assert w.flops(5) == counter.get_total_flops() == 2 * 5 * TINY.dim * TINY.hidden * 3


def test_default_dtype_and_device_follow_the_backend(be):
    w = InferenceWorkload(TINY)
    assert w.device.type == be.device
    assert w.dtype == (torch.bfloat16 if be.is_gpu else torch.float16)


@pytest.mark.parametrize("make, match", [
    (lambda: InferenceWorkload(TINY, impl="cuda"), "unknown impl 'cuda'.*triton, torch"),
    (lambda: InferenceWorkload(MLPConfig(activation="relu")), "'silu' or 'gelu_tanh'"),
    (lambda: InferenceWorkload(TINY, params={"w_up": torch.ones(1)}), "lacks norm_weight"),
    (lambda: InferenceWorkload(TINY, params={**init_params(TINY, torch.float32, "cpu"),
                                             "w_down": torch.ones(3, 3)}),
     r"params\['w_down'\] has shape \(3, 3\)"),
    (lambda: InferenceWorkload(TINY).step(torch.ones(2, 5, dtype=torch.float16)),
     r"x must be \(tokens, 64\)"),
    (lambda: InferenceWorkload(TINY).make_batch(0), "tokens must be >= 1"),
])
def test_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 256])
def test_block_gpu_bf16(tokens, gpu):
    cfg = MLPConfig.from_size("base")
    w = InferenceWorkload(cfg, impl="triton", dtype=torch.bfloat16, device=gpu)
    x = w.make_batch(tokens)
    assert_block_matches(cfg, w, x, w.step(x))
