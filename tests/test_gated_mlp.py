"""gated_mlp (and its RMSNorm-folded form) against float64 torch: odd shapes from M = 1 (the
decode path) up, both activations, layouts, leading dimensions, unwritten elements, the
dispatch, the byte formulas against an independent count, and bad input."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_close_to_reference, aten_traffic

from tritonlab.kernels import gated_mlp
from tritonlab.measure import check
from tritonlab.ops.gated_mlp import SPECS

gm = importlib.import_module("tritonlab.kernels.gated_mlp")
sk = importlib.import_module("tritonlab.kernels._splitk")

CPU_DTYPES = [torch.float16, torch.float32]


def reference(x, w_gate, w_up, activation, norm_weight=None, eps=1e-5):
    x = x.double()
    if norm_weight is not None:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.double()
    gate = x @ w_gate.double().t()
    act = F.silu(gate) if activation == "silu" else F.gelu(gate, approximate="tanh")
    return act * (x @ w_up.double().t())


def assert_matches(y, ref, k):
    """Two K-long dots multiplied: twice the tolerance of one (their relative errors add)."""
    assert_close_to_reference(y, ref, k, scale=2)


def weights(n, k, dtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    wg = (torch.randn(n, k, generator=g) * k**-0.5).to(device=device, dtype=dtype)
    wu = (torch.randn(n, k, generator=g) * k**-0.5).to(device=device, dtype=dtype)
    nw = (1 + 0.1 * torch.randn(k, generator=g)).to(device=device, dtype=dtype)
    return wg, wu, nw


def rows(m, k, dtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(m, k, generator=g).to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("rms", [False, True], ids=["plain", "rmsnorm"])
@pytest.mark.parametrize("m, n, k", [(1, 83, 131), (3, 64, 64), (16, 97, 200), (17, 45, 77),
                                     (70, 130, 96)])
def test_gated_mlp_matches_float64(m, n, k, rms, activation, dtype):
    wg, wu, nw = weights(n, k, dtype, seed=m + n + k)
    x = rows(m, k, dtype, seed=m)
    out = torch.full((m, n), math.nan, dtype=dtype)
    before = sk.LAUNCHES["partial"]
    y = gated_mlp(x, wg, wu, activation, norm_weight=nw if rms else None, out=out)
    assert y.data_ptr() == out.data_ptr()
    assert (sk.LAUNCHES["partial"] - before == 1) == (m <= 16), "decode dispatch is M <= 16"
    assert gm.GATED_LAST()["path"] == ("splitk" if m <= 16 else "tiled")
    assert_matches(y, reference(x, wg, wu, activation, nw if rms else None), k)


@pytest.mark.parametrize("m", [5, 40])
def test_layouts_leading_dims_and_fused_weight_views(m):
    """x with leading dims and strided rows; gate/up as the two halves of one fused (2N, K)
    weight stored transposed (column-major views); a non-contiguous norm weight."""
    n, k = 57, 90
    g = torch.Generator().manual_seed(m)
    fused_t = (torch.randn(k, 2 * n, generator=g) * k**-0.5).half()
    wg, wu = fused_t.t()[:n], fused_t.t()[n:]
    assert not wg.is_contiguous()
    nw = (1 + 0.1 * torch.randn(2 * k, generator=g)).half()[::2]
    big = torch.randn(2, m, 2 * k, generator=g).half()
    x = big[:, :, ::2]  # (2, m, k), last-dim stride 2
    y = gated_mlp(x, wg, wu, "silu", norm_weight=nw, eps=1e-4)
    assert y.shape == (2, m, n)
    assert_matches(y.reshape(-1, n), reference(x.reshape(-1, k), wg, wu, "silu", nw, 1e-4), k)
    out = torch.full((2, m, n), math.nan, dtype=torch.float16)
    assert gated_mlp(x, wg, wu, "gelu_tanh", out=out) is out
    assert_matches(out.reshape(-1, n), reference(x.reshape(-1, k), wg, wu, "gelu_tanh"), k)
    one = gated_mlp(x[0, 0], wg, wu)  # a single token as a 1-D vector
    assert one.shape == (n,)
    assert_matches(one[None], reference(x[0, 0][None], wg, wu, "silu"), k)


@pytest.mark.parametrize("m", [4, 33])
def test_writes_nothing_outside_out(m):
    n, k = 40, 70
    wg, wu, nw = weights(n, k, torch.float16, seed=9)
    x = rows(m, k, torch.float16, seed=9)
    guard = torch.full((m + 6, 2 * n + 5), 1234.0, dtype=torch.float16)
    window = guard[3:3 + m, 2:2 + 2 * n:2]
    window.fill_(math.nan)
    gated_mlp(x, wg, wu, norm_weight=nw, out=window)
    assert_matches(window, reference(x, wg, wu, "silu", nw), k)
    outside = torch.ones_like(guard, dtype=torch.bool)
    outside[3:3 + m, 2:2 + 2 * n:2] = False
    assert (guard[outside] == 1234.0).all(), "gated_mlp wrote outside out"


def test_eps_is_used_and_a_zero_row_stays_finite():
    n, k = 30, 50
    wg, wu, nw = weights(n, k, torch.float32, seed=3)
    for m in (2, 20):
        x = rows(m, k, torch.float32, seed=3) * 0.05
        x[1] = 0.0
        y = gated_mlp(x, wg, wu, norm_weight=nw, eps=0.5)
        assert_matches(y, reference(x, wg, wu, "silu", nw, 0.5), k)
        assert torch.all(y[1] == 0)


def test_int64_addressing_path(monkeypatch):
    monkeypatch.setattr(gm, "needs_int64", lambda *t: True)
    wg, wu, nw = weights(45, 70, torch.float32, seed=4)
    x = rows(33, 70, torch.float32, seed=4)
    assert_matches(gated_mlp(x, wg, wu, norm_weight=nw), reference(x, wg, wu, "silu", nw), 70)


def test_empty_shapes():
    wg, wu, _ = weights(6, 8, torch.float32, seed=0)
    assert gated_mlp(torch.empty(0, 8), wg, wu).shape == (0, 6)
    z = gated_mlp(torch.empty(3, 0), torch.empty(6, 0), torch.empty(6, 0))
    assert torch.equal(z, torch.zeros(3, 6))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16], ids=str)
def test_unfused_bytes_equal_an_aten_count_of_the_eager_chain(spec, dtype, device):
    shape = {"M": 7, "N": 33, "K": 20}
    inputs = spec.make_inputs(shape, dtype, device, 0)
    total, ops = aten_traffic(spec.impl("torch").build(inputs, "infer"))
    assert spec.unfused_bytes(shape, dtype, "infer") == total, ops


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_fused_bytes_are_the_tensors_the_kernel_touches(spec, device):
    shape = {"M": 5, "N": 40, "K": 24}
    for dtype in (torch.float16, torch.float32):
        inputs = spec.make_inputs(shape, dtype, device, 0)
        (y,) = spec.impl("triton").build(inputs, "infer")()
        read = [inputs["x"], inputs["w_gate"], inputs["w_up"]]
        if spec.name == "rmsnorm_gated_mlp":
            read.append(inputs["norm_weight"])
        assert spec.bytes(shape, dtype, "infer") == sum(t.nbytes for t in read) + y.nbytes
    big = {"M": 2048, "N": 14336, "K": 4096}
    saving = spec.unfused_bytes(big, torch.bfloat16, "infer") / spec.bytes(big, torch.bfloat16,
                                                                          "infer")
    assert saving > 2.0, "the fusion should more than halve the traffic at Llama prefill sizes"


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_spec_passes_check_on_its_tiny_preset(spec):
    for impl in ("triton", "torch"):
        for shape in spec.presets["tiny"]:
            r = check.check_case(spec, spec.impl(impl), "infer", torch.float16, shape, seed=2)
            assert r.correct, (impl, shape, r.error)
    assert spec.flops({"M": 3, "N": 5, "K": 7}, "infer") == 4 * 3 * 5 * 7


@pytest.mark.parametrize("call, exc, match", [
    (lambda x, g, u, n: gated_mlp(x, g, u, "relu"), ValueError, "'silu', 'gelu_tanh'"),
    (lambda x, g, u, n: gated_mlp(x, g, u, "gelu"), ValueError, "unknown activation"),
    (lambda x, g, u, n: gated_mlp(x, g, u[:5]), ValueError,
     r"w_up has shape \(5, 8\); expected \(6, 8\)"),
    (lambda x, g, u, n: gated_mlp(x, g[:, :7], u), ValueError, "x has K=8"),
    (lambda x, g, u, n: gated_mlp(x, g.half(), u), TypeError, "must match"),
    (lambda x, g, u, n: gated_mlp(x, g, u, norm_weight=n[:7]), ValueError, r"expected \(8,\)"),
    (lambda x, g, u, n: gated_mlp(x, g, u, norm_weight=n, eps=0.0), ValueError, "eps must be"),
    (lambda x, g, u, n: gated_mlp(x, g, u, norm_weight=n, eps=-1e-5), ValueError, "> 0"),
    (lambda x, g, u, n: gated_mlp(x, g, u, norm_weight=n, eps=math.nan), ValueError, "> 0"),
    (lambda x, g, u, n: gated_mlp(x, g, u, eps="1e-5"), TypeError, "eps must be a float"),
    (lambda x, g, u, n: gated_mlp(x, g, u, out=torch.empty(4, 5)), ValueError, "out has shape"),
    (lambda x, g, u, n: gated_mlp(x, g[None], u), ValueError, "2-D"),
    (lambda x, g, u, n: gated_mlp(torch.tensor(1.0), g, u), ValueError, "at least 1 dimension"),
    (lambda x, g, u, n: gated_mlp(x.int(), g, u), TypeError, "supported: float16"),
])
def test_bad_input(call, exc, match):
    x = torch.ones(4, 8)
    wg, wu, nw = weights(6, 8, torch.float32, seed=0)
    with pytest.raises(exc, match=match):
        call(x, wg, wu, nw)


@pytest.mark.gpu
@pytest.mark.parametrize("rms", [False, True], ids=["plain", "rmsnorm"])
@pytest.mark.parametrize("m", [1, 16, 2048])
def test_gated_mlp_gpu_llama_ffn(m, rms, gpu):
    dtype = torch.bfloat16
    n, k = 14336, 4096
    wg, wu, nw = weights(n, k, dtype, seed=m, device=gpu)
    x = rows(m, k, dtype, seed=m, device=gpu)
    out = torch.full((m, n), math.nan, dtype=dtype, device=gpu)
    y = gated_mlp(x, wg, wu, "silu", norm_weight=nw if rms else None, out=out)
    assert_matches(y, reference(x, wg, wu, "silu", nw if rms else None), k)
