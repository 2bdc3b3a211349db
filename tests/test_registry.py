"""Backend selection, op discovery and the parsing of user choices."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tritonlab import backend
from tritonlab.errors import UsageError
from tritonlab.ops import registry
from tritonlab.ops.contract import MODES, Impl, OpSpec, reduction_tolerance


def test_every_discovered_op_honours_the_contract():
    ops = registry.discover()
    assert "matmul" in ops
    for op in ops.values():
        assert op.impls and op.triton_impls, f"{op.name} has no Triton impl"
        assert set(op.modes) <= set(MODES)
        assert "tiny" in op.presets, f"{op.name} needs a tiny preset for the interpreter"
        for shape in op.presets["tiny"]:
            for mode in op.modes:
                assert op.flops(shape, mode) > 0
                for dtype in op.dtypes:
                    assert op.bytes(shape, dtype, mode) > 0
                    tols = op.tolerance(dtype, shape, mode)  # one per output
                    assert tols and all(0 < t.rel_fro <= t.max_rel < 0.5 for t in tols)


def test_make_inputs_is_seeded_fresh_and_never_zero(device):
    op = registry.discover()["matmul"]
    shape = op.presets["tiny"][1]
    x1 = op.make_inputs(shape, torch.float32, device, 0)
    x2 = op.make_inputs(shape, torch.float32, device, 0)
    x3 = op.make_inputs(shape, torch.float32, device, 1)
    assert all(torch.equal(x1[k], x2[k]) for k in x1)
    assert not torch.equal(x1["a"], x3["a"])
    assert all((v != 0).float().mean() > 0.99 for v in x1.values())


def test_parse_shape_and_dtype():
    op = registry.discover()["matmul"]
    assert registry.parse_shape("4096x14336x4096", op) == {"M": 4096, "N": 14336, "K": 4096}
    for bad in ("12x", "x", "4x4", "4x4x4x4", "axbxc", "4x0x4", ""):
        with pytest.raises(UsageError):
            registry.parse_shape(bad, op)
    assert registry.parse_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(UsageError, match="float16, bfloat16, float32"):
        registry.parse_dtype("float64")
    with pytest.raises(UsageError, match="valid presets"):
        registry.parse_preset("huge", op)


class _OneImplOp(OpSpec):
    name = "x"
    description = ""
    dims = ("N",)
    modes = ("fwd",)
    presets: dict = {}

    def implementations(self):
        return (Impl("t", "triton", lambda i, m: (lambda: ())),)


def test_spec_rejects_inconsistent_declarations():
    class UnknownMode(_OneImplOp):
        modes = ("train",)

    class WrongDims(_OneImplOp):
        presets = {"tiny": [{"M": 1}]}

    class DuplicateImpls(_OneImplOp):
        def implementations(self):
            return super().implementations() * 2

    with pytest.raises(ValueError, match="unknown modes"):
        UnknownMode()
    with pytest.raises(ValueError, match="does not have the dims"):
        WrongDims()
    with pytest.raises(ValueError, match="duplicate impl names"):
        DuplicateImpls()


def test_fused_means_the_op_states_unfused_bytes():
    ops = registry.discover()
    assert not _OneImplOp().fused and _OneImplOp().unfused_bytes({"N": 1}, torch.float16,
                                                                 "fwd") is None
    assert _OneImplOp().compile_targets(torch.float16) == []
    assert ops["gated_mlp"].fused and not ops["matmul"].fused
    assert ops["gated_mlp"].summary()["fused"] is True


def test_tolerance_grows_with_reduction_length_and_dtype():
    assert reduction_tolerance(torch.float16, 4096).rel_fro > reduction_tolerance(torch.float16, 16).rel_fro
    assert reduction_tolerance(torch.bfloat16, 64).rel_fro > reduction_tolerance(torch.float16, 64).rel_fro
    tf32 = reduction_tolerance(torch.float32, 64, tf32=True)
    assert tf32.rel_fro > reduction_tolerance(torch.float32, 64).rel_fro


def test_backend_is_interpreter_without_gpu_and_cuda_cannot_be_forced():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert backend.current().name == "interpreter"
    with pytest.raises(UsageError, match="sees no CUDA GPU"):
        backend.select("cuda")
    with pytest.raises(UsageError, match="choose one of"):
        backend.select("rocm")


def test_backend_is_chosen_before_kernels_are_decorated():
    """In a fresh process, importing the kernels alone selects the backend and sets
    TRITON_INTERPRET before any @triton.jit runs (else kernels would try to compile)."""
    code = ("import os, tritonlab.kernels as k; from tritonlab import backend; "
            "b = backend.current(); "
            "assert (os.environ.get('TRITON_INTERPRET') == '1') == (b.name == 'interpreter'); "
            "print(b.name, type(k.matmul).__name__)")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == ("cuda" if torch.cuda.is_available() else "interpreter")
