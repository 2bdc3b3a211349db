"""The training workload: the Triton-kernel MLP trains exactly like the torch reference."""

from __future__ import annotations

import importlib

import pytest
import torch

from tritonlab.workloads.model import MLPConfig, reference_forward
from tritonlab.workloads.train import TrainingWorkload

lin = importlib.import_module("tritonlab.kernels.linear")

CFG = MLPConfig(dim=64, hidden=160, activation="silu")


def test_training_step_matches_torch_reference(monkeypatch):
    """Same seed, same batches: the Triton workload's losses and weights follow the torch
    reference step by step, and the loss goes down."""
    launched = []
    for name, kernel in lin.KERNELS.items():
        def record(*args, _orig=kernel.launch, _name=name, **kwargs):
            launched.append(_name)
            return _orig(*args, **kwargs)
        monkeypatch.setattr(kernel, "launch", record)

    runs = {impl: TrainingWorkload(CFG, impl=impl, seed=3, lr=0.2) for impl in ("triton",
                                                                                "torch")}
    x, target = runs["torch"].make_batch(48, seed=7)
    losses = {impl: [float(w.step(x, target)) for _ in range(4)] for impl, w in runs.items()}
    ref = losses["torch"]
    assert ref[-1] < 0.8 * ref[0], f"the reference did not learn: {ref}"
    for got, want in zip(losses["triton"], ref):
        assert abs(got - want) <= 1e-5 * want, (losses["triton"], ref)
    for name, p in runs["triton"].params.items():
        torch.testing.assert_close(p, runs["torch"].params[name], rtol=1e-5, atol=1e-6)
    # Three projections a step, forward and backward, all through the lab's kernels.
    assert launched.count("fwd") == 12 and launched.count("bwd_dx") == 12
    assert launched.count("bwd_dw") == 12


def test_forward_matches_model_reference():
    w = TrainingWorkload(CFG, impl="triton", seed=1)
    x, _ = w.make_batch(33, seed=2)
    params64 = {k: v.detach().double() for k, v in w.params.items()}
    want = reference_forward(CFG, params64, x.double())
    with torch.no_grad():
        got = w.forward(x)
    err = float((got.double() - want).norm() / want.norm())
    assert err < 1e-5, err


def test_make_batch_is_deterministic_and_shared_by_impls():
    a = TrainingWorkload(CFG, impl="triton", seed=4)
    b = TrainingWorkload(CFG, impl="torch", seed=4)
    xa, ta = a.make_batch(20, seed=9)
    xb, tb = b.make_batch(20, seed=9)
    assert xa.shape == (20, CFG.dim) and ta.shape == (20, CFG.dim)
    assert torch.equal(xa, xb) and torch.equal(ta, tb)
    xc, _ = a.make_batch(20, seed=10)
    assert not torch.equal(xa, xc)
    assert isinstance(a.params["w_gate"], torch.nn.Parameter)
    assert set(a.params) == {"norm_weight", "w_gate", "w_up", "w_down"}


def test_flops_equal_flop_counter_of_a_step():
    # Imported here: torch.utils.flop_counter imports triton, which must not happen before
    # the backend is selected.
    from torch.utils.flop_counter import FlopCounterMode

    w = TrainingWorkload(CFG, impl="torch", seed=0)
    x, target = w.make_batch(40, seed=1)
    with FlopCounterMode(display=False) as counter:
        w.step(x, target)
    assert w.flops(40) == counter.get_total_flops() == 3 * CFG.forward_flops(40)


def test_bad_impl():
    with pytest.raises(ValueError, match="unknown impl 'cuda'; expected one of: triton, torch"):
        TrainingWorkload(CFG, impl="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_training_step_gpu(dtype, gpu):
    cfg = MLPConfig.from_size("base")
    runs = {impl: TrainingWorkload(cfg, impl=impl, dtype=dtype, device=gpu, seed=0, lr=0.02)
            for impl in ("triton", "torch")}
    x, target = runs["torch"].make_batch(2048, seed=1)
    losses = {impl: [float(w.step(x, target)) for _ in range(3)] for impl, w in runs.items()}
    assert losses["torch"][-1] < losses["torch"][0]
    for got, want in zip(losses["triton"], losses["torch"]):
        assert abs(got - want) <= 0.02 * want, losses
