"""rmsnorm_linear against float64 torch: odd shapes from M = 1 (the decode path) up, with and
without bias, layouts, leading dimensions, eps, unwritten elements, the dispatch, the byte
formulas against an independent count, and bad input."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from helpers import DEVICE, assert_close_to_reference, aten_traffic

from tritonlab.kernels import rmsnorm_linear
from tritonlab.measure import check
from tritonlab.ops import rmsnorm_linear as rl_op
from tritonlab.ops.contract import Tolerance
from tritonlab.reference import rms_norm

rl = importlib.import_module("tritonlab.kernels.rmsnorm_linear")
sk = importlib.import_module("tritonlab.kernels._splitk")

CPU_DTYPES = [torch.float16, torch.float32]


def reference(x, norm_weight, weight, eps=1e-5, bias=None):
    x = x.double()
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.double()
    return h @ weight.double().t() + (bias.double() if bias is not None else 0.0)


def assert_matches(y, ref, k):
    """A K-long dot's tolerance, doubled for the rounding of x * norm_weight to the operand
    dtype before the dot."""
    assert_close_to_reference(y, ref, k, scale=2)


def operands(m, n, k, dtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    x = (3.0 * torch.randn(m, k, generator=g)).to(device=device, dtype=dtype)
    nw = (1 + 0.1 * torch.randn(k, generator=g)).to(device=device, dtype=dtype)
    w = (torch.randn(n, k, generator=g) * k**-0.5).to(device=device, dtype=dtype)
    b = torch.randn(n, generator=g).to(device=device, dtype=dtype)
    return x, nw, w, b


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("has_bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (1, 100, 96), (2, 83, 131), (9, 130, 75),
                                     (16, 64, 300), (17, 50, 64), (33, 83, 131), (65, 129, 40)])
def test_rmsnorm_linear_matches_float64(m, n, k, has_bias, dtype):
    x, nw, w, b = operands(m, n, k, dtype, seed=m * 7 + n + k)
    bias = b if has_bias else None
    out = torch.full((m, n), math.nan, dtype=dtype)
    before = sk.LAUNCHES["partial"]
    y = rmsnorm_linear(x, nw, w, 1e-5, bias=bias, out=out)
    assert y.data_ptr() == out.data_ptr()
    assert (sk.LAUNCHES["partial"] - before == 1) == (m <= 16), "decode dispatch is M <= 16"
    assert rl.RMSNORM_LINEAR_LAST()["path"] == ("splitk" if m <= 16 else "tiled")
    assert_matches(y, reference(x, nw, w, 1e-5, bias), k)


@pytest.mark.parametrize("m", [3, 30])
def test_layouts_and_leading_dims(m):
    """x with leading dims and a strided last dim; W stored transposed (a column-major view);
    strided norm weight and bias."""
    n, k = 61, 88
    g = torch.Generator().manual_seed(m)
    x = torch.randn(2, m, 3 * k, generator=g).half()[:, :, ::3]
    w = (torch.randn(k, n, generator=g) * k**-0.5).half().t()
    nw = (1 + 0.1 * torch.randn(k, 2, generator=g)).half()[:, 1]
    b = torch.randn(2 * n, generator=g).half()[::2]
    assert not (x.is_contiguous() or w.is_contiguous() or nw.is_contiguous())
    y = rmsnorm_linear(x, nw, w, 1e-6, bias=b)
    assert y.shape == (2, m, n)
    assert_matches(y.reshape(-1, n), reference(x.reshape(-1, k), nw, w, 1e-6, b), k)


@pytest.mark.parametrize("m", [5, 40])
def test_matches_the_eager_chain_it_replaces(m):
    x, nw, w, b = operands(m, 70, 120, torch.float32, seed=m)
    eager = torch.nn.functional.linear(rms_norm(x, nw, 1e-5), w, b)
    ok, *_, why = check.compare((rmsnorm_linear(x, nw, w, bias=b),), (eager,),
                                Tolerance(1e-5, 1e-5))
    assert ok, why


@pytest.mark.parametrize("m", [4, 24])
def test_eps_is_used_and_a_zero_row_gives_the_bias(m):
    x, nw, w, b = operands(m, 30, 50, torch.float32, seed=1)
    x = x * 0.01
    x[2] = 0.0
    y = rmsnorm_linear(x, nw, w, 0.3, bias=b)
    assert_matches(y, reference(x, nw, w, 0.3, b), 50)
    assert torch.equal(y[2], b)


@pytest.mark.parametrize("m", [6, 20])
def test_writes_nothing_outside_out(m):
    n, k = 45, 66
    x, nw, w, b = operands(m, n, k, torch.float16, seed=5)
    guard = torch.full((m + 4, 2 * n + 3), 1234.0, dtype=torch.float16)
    window = guard[1:1 + m, 1:1 + 2 * n:2]
    window.fill_(math.nan)
    rmsnorm_linear(x, nw, w, bias=b, out=window)
    assert_matches(window, reference(x, nw, w, 1e-5, b), k)
    outside = torch.ones_like(guard, dtype=torch.bool)
    outside[1:1 + m, 1:1 + 2 * n:2] = False
    assert (guard[outside] == 1234.0).all(), "rmsnorm_linear wrote outside out"


def test_int64_addressing_path(monkeypatch):
    monkeypatch.setattr(rl, "needs_int64", lambda *t: True)
    x, nw, w, b = operands(20, 33, 70, torch.float32, seed=6)
    assert_matches(rmsnorm_linear(x, nw, w, bias=b), reference(x, nw, w, 1e-5, b), 70)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16], ids=str)
def test_unfused_bytes_equal_an_aten_count_of_the_eager_chain(dtype, device):
    shape = {"M": 9, "N": 21, "K": 30}
    inputs = rl_op.SPEC.make_inputs(shape, dtype, device, 0)
    total, ops = aten_traffic(rl_op.SPEC.impl("torch").build(inputs, "infer"))
    assert rl_op.SPEC.unfused_bytes(shape, dtype, "infer") == total, ops
    norm_total, _ = aten_traffic(rms_norm, inputs["x"], inputs["norm_weight"], 1e-5)
    assert rl_op.rms_norm_chain_bytes(9, 30, dtype) == norm_total


def test_fused_bytes_are_the_tensors_the_kernel_touches(device):
    shape = {"M": 5, "N": 40, "K": 24}
    for dtype in (torch.float16, torch.float32):
        inputs = rl_op.SPEC.make_inputs(shape, dtype, device, 0)
        (y,) = rl_op.SPEC.impl("triton").build(inputs, "infer")()
        read = sum(inputs[k].nbytes for k in ("x", "norm_weight", "weight"))
        assert rl_op.SPEC.bytes(shape, dtype, "infer") == read + y.nbytes
    assert rl_op.SPEC.flops(shape, "infer") == 2 * 5 * 40 * 24
    prefill = {"M": 8192, "N": 14336, "K": 4096}
    assert rl_op.SPEC.unfused_bytes(prefill, torch.bfloat16, "infer") > 1.5 * rl_op.SPEC.bytes(
        prefill, torch.bfloat16, "infer")


def test_spec_passes_check_on_its_tiny_preset():
    for impl in ("triton", "torch"):
        for shape in rl_op.SPEC.presets["tiny"]:
            r = check.check_case(rl_op.SPEC, rl_op.SPEC.impl(impl), "infer", torch.float16, shape, 3)
            assert r.correct, (impl, shape, r.error)


@pytest.mark.parametrize("call, exc, match", [
    (lambda x, n, w, b: rmsnorm_linear(x, n, w, 0.0), ValueError,
     "eps must be a finite number > 0"),
    (lambda x, n, w, b: rmsnorm_linear(x, n, w, -1.0), ValueError, "eps must be"),
    (lambda x, n, w, b: rmsnorm_linear(x, n, w, math.inf), ValueError, "eps must be"),
    (lambda x, n, w, b: rmsnorm_linear(x, n, w, None), TypeError, "eps must be a float"),
    (lambda x, n, w, b: rmsnorm_linear(x, n[:5], w), ValueError,
     r"norm_weight has shape \(5,\); expected \(8,\)"),
    (lambda x, n, w, b: rmsnorm_linear(x, n[None], w), ValueError, "norm_weight must be 1-D"),
    (lambda x, n, w, b: rmsnorm_linear(x, n.half(), w), TypeError, "must match"),
    (lambda x, n, w, b: rmsnorm_linear(x, n, w[:, :7]), ValueError,
     r"x has K=8 features; expected \(N, 8\)"),
    (lambda x, n, w, b: rmsnorm_linear(x, n, w.half()), TypeError, "must match"),
    (lambda x, n, w, b: rmsnorm_linear(x, n, w, bias=b[:3]), ValueError,
     r"bias has shape \(3,\); expected \(6,\)"),
    (lambda x, n, w, b: rmsnorm_linear(x, n, w, out=torch.empty(4, 7)), ValueError,
     "out has shape"),
    (lambda x, n, w, b: rmsnorm_linear(x[:, :0], n[:0], w[:, :0]), ValueError,
     "at least one feature"),
    (lambda x, n, w, b: rmsnorm_linear([[1.0]], n, w), TypeError, "torch.Tensor"),
])
def test_bad_input(call, exc, match):
    x, nw, w, b = operands(4, 6, 8, torch.float32, seed=0)
    with pytest.raises(exc, match=match):
        call(x, nw, w, b)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 2048])
def test_rmsnorm_linear_gpu_llama(m, gpu):
    dtype = torch.bfloat16
    n, k = 14336, 4096
    x, nw, w, b = operands(m, n, k, dtype, seed=m, device=gpu)
    out = torch.full((m, n), math.nan, dtype=dtype, device=gpu)
    y = rmsnorm_linear(x, nw, w, 1e-5, bias=b, out=out)
    assert_matches(y, reference(x, nw, w, 1e-5, b), k)
