"""The decode path: split-K GEMM (splitk_matmul) against float64 torch, its dispatch from
matmul for small M, its agreement with the tiled path, the fused switches (gated, RMSNorm),
the K-slice choice, the decode_matmul op, and bad input."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from helpers import DEVICE, assert_close_to_reference

from tritonlab.kernels import matmul, splitk_matmul
from tritonlab.measure import check
from tritonlab.ops import decode_matmul as dm
from tritonlab.ops.contract import Tolerance, reduction_tolerance
from tritonlab.reference import torch_activation

sk = importlib.import_module("tritonlab.kernels._splitk")

CPU_DTYPES = [torch.float16, torch.float32]


def assert_matches(out, ref, k, scale=1.0):
    """out against a float64 reference, with the tolerance of a K-long fp32-accumulated dot
    (times ``scale`` for results that multiply two dots)."""
    assert_close_to_reference(out, ref, k, scale=scale)


def operands(m, n, k, dtype, layout, seed, device=DEVICE):
    """x (m, k) and B (k, n): "nk" gives B as the transposed view of an nn.Linear weight
    (n, k), read in place; "kn" a row-major (k, n) tensor."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(device=device, dtype=dtype)
    if layout == "nk":
        b = (torch.randn(n, k, generator=g) * k**-0.5).to(device=device, dtype=dtype).t()
    else:
        b = (torch.randn(k, n, generator=g) * k**-0.5).to(device=device, dtype=dtype)
    bias = torch.randn(n, generator=g).to(device=device, dtype=dtype)
    return x, b, bias


def launches():
    return dict(sk.LAUNCHES)


def delta(before):
    return {k: sk.LAUNCHES[k] - before.get(k, 0) for k in ("partial", "reduce")}


CASES = [  # (M, N, K, split_k, activation, bias)
    (1, 1, 1, None, None, False),
    (1, 130, 75, None, "gelu_tanh", True),
    (2, 67, 129, 3, "silu", True),
    (5, 200, 257, None, None, True),
    (7, 64, 64, 1, "relu", False),
    (13, 33, 300, 4, "gelu", True),
    (16, 129, 190, 2, None, False),
]


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nk", "kn"])
@pytest.mark.parametrize("m, n, k, split_k, activation, has_bias", CASES)
def test_splitk_matches_float64(m, n, k, split_k, activation, has_bias, layout, dtype):
    x, b, bias = operands(m, n, k, dtype, layout, seed=m * 31 + n + k)
    bias = bias if has_bias else None
    out = torch.full((m, n), math.nan, dtype=dtype)
    y = splitk_matmul(x, b, bias=bias, activation=activation, out=out, split_k=split_k)
    assert y.data_ptr() == out.data_ptr()
    ref = x.double() @ b.double() + (bias.double() if has_bias else 0.0)
    assert_matches(y, torch_activation(ref, activation), k)


def test_single_slice_runs_one_kernel_and_several_slices_add_a_reduction():
    x, b, bias = operands(3, 70, 300, torch.float32, "nk", seed=1)
    before = launches()
    one = splitk_matmul(x, b, bias=bias, activation="silu", split_k=1)
    assert delta(before) == {"partial": 1, "reduce": 0}
    assert sk.LAST()["split_k"] == 1
    before = launches()
    three = splitk_matmul(x, b, bias=bias, activation="silu", split_k=3)
    assert delta(before) == {"partial": 1, "reduce": 1}
    assert sk.LAST()["split_k"] == 3
    ref = torch_activation(x.double() @ b.double() + bias.double(), "silu")
    assert_matches(one, ref, 300)
    assert_matches(three, ref, 300)


def test_split_k_is_an_upper_bound_rounded_to_whole_k_tiles(be):
    if be.is_gpu:
        pytest.skip("checks the interpreter's fixed K tile (64); a GPU autotunes it")
    x, b, _ = operands(2, 40, 100, torch.float32, "nk", seed=2)
    splitk_matmul(x, b, split_k=8)  # the interpreter's K tile is 64: 100 -> 2 slices at most
    assert sk.LAST()["split_k"] == 2 and sk.LAST()["k_split"] == 64
    assert_matches(splitk_matmul(x, b, split_k=8), x.double() @ b.double(), 100)


@pytest.mark.parametrize("m", [1, 4, 16])
def test_matmul_sends_small_m_to_splitk(m):
    x, b, _ = operands(m, 90, 140, torch.float16, "nk", seed=m)
    before = launches()
    c = matmul(x, b)
    assert delta(before)["partial"] == 1, "matmul did not take the decode path"
    assert_matches(c, x.double() @ b.double(), 140)


def test_matmul_keeps_m_above_16_on_the_tiled_kernel_and_obeys_the_override():
    x, b, _ = operands(17, 90, 140, torch.float16, "kn", seed=3)
    before = launches()
    tiled = matmul(x, b)
    assert delta(before)["partial"] == 0
    forced = matmul(x, b, splitk=True)
    assert delta(before)["partial"] == 1
    small = matmul(x[:3], b, splitk=False)
    assert delta(before)["partial"] == 1
    for c, rows in ((tiled, x), (forced, x), (small, x[:3])):
        assert_matches(c, rows.double() @ b.double(), 140)


@pytest.mark.parametrize("m", [1, 6, 16])
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
def test_decode_path_matches_the_general_path(m, dtype):
    x, b, _ = operands(m, 150, 333, dtype, "nk", seed=10 + m)
    decode = matmul(x, b)
    general = matmul(x, b, splitk=False)
    tol = reduction_tolerance(dtype, 333)
    # Both are within tol of float64, so within 2 tol of each other.
    ok, *_, why = check.compare((decode,), (general,), Tolerance(2 * tol.rel_fro, 2 * tol.max_rel))
    assert ok, why
    assert_matches(decode, x.double() @ b.double(), 333)


@pytest.mark.parametrize("split_k", [1, 3])
def test_gated_and_rmsnorm_switches(split_k):
    """The switches gated_mlp and rmsnorm_linear use, with the slices' sums of squares and
    both accumulators reduced across 3 K slices."""
    g = torch.Generator().manual_seed(4)
    m, n, k, eps = 5, 70, 190, 1e-3
    x = torch.randn(m, k, generator=g)
    wg, wu = (torch.randn(n, k, generator=g) * k**-0.5 for _ in range(2))
    nw = 1 + 0.1 * torch.randn(k, generator=g)
    out = torch.full((m, n), math.nan)
    info = sk.launch_splitk(x, wg.t(), out, b2=wu.t(), norm_weight=nw, eps=eps,
                            activation="silu", split_k=split_k)
    assert info["split_k"] == split_k
    xd = x.double()
    h = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * nw.double()
    ref = torch.nn.functional.silu(h @ wg.double().t()) * (h @ wu.double().t())
    assert_matches(out, ref, k, scale=2)


def test_splitk_writes_nothing_outside_out():
    m, n, k = 9, 45, 130
    x, b, bias = operands(m, n, k, torch.float16, "nk", seed=5)
    guard = torch.full((m + 5, 2 * n + 7), 1234.0, dtype=torch.float16)
    window = guard[2:2 + m, 3:3 + 2 * n:2]
    window.fill_(math.nan)
    splitk_matmul(x, b, bias=bias, out=window, split_k=3)
    assert_matches(window, x.double() @ b.double() + bias.double(), k)
    outside = torch.ones_like(guard, dtype=torch.bool)
    outside[2:2 + m, 3:3 + 2 * n:2] = False
    assert (guard[outside] == 1234.0).all(), "splitk_matmul wrote outside out"


def test_noncontiguous_x_is_read_in_place(monkeypatch):
    g = torch.Generator().manual_seed(6)
    big = torch.randn(20, 400, generator=g).to(torch.float16)
    x = big[1::3, 5::3]  # (7, 132), strides (1200, 3)
    w = (torch.randn(50, 132, generator=g) * 0.1).to(torch.float16)

    def no_copies(*args, **kwargs):
        raise AssertionError("splitk_matmul made a hidden .contiguous() copy")

    monkeypatch.setattr(torch.Tensor, "contiguous", no_copies)
    y = splitk_matmul(x, w.t())
    monkeypatch.undo()
    assert_matches(y, x.double() @ w.double().t(), 132)


def test_int64_addressing_path(monkeypatch):
    monkeypatch.setattr(sk, "needs_int64", lambda *t: True)
    x, b, bias = operands(4, 33, 150, torch.float32, "nk", seed=7)
    y = splitk_matmul(x, b, bias=bias, activation="gelu_tanh", split_k=2)
    ref = torch_activation(x.double() @ b.double() + bias.double(), "gelu_tanh")
    assert_matches(y, ref, 150)


def test_k_zero_gives_the_epilogue_of_zero():
    x = torch.empty(3, 0)
    b = torch.empty(0, 5)
    bias = torch.randn(5)
    assert torch.equal(splitk_matmul(x, b), torch.zeros(3, 5))
    y = splitk_matmul(x, b, bias=bias, activation="relu")
    assert torch.allclose(y, torch.relu(bias).expand(3, 5))
    assert splitk_matmul(torch.empty(0, 4), torch.empty(4, 6)).shape == (0, 6)


def test_k_slices_follow_the_sm_count(monkeypatch):
    """On CUDA the split targets two programs per SM; 256-element slices; one slice when the
    column tiles alone fill the GPU. (The SM count is faked: no GPU is needed for the rule.)"""
    sms = 132
    monkeypatch.setattr(sk, "sm_count", lambda index: sms)
    cuda = torch.device("cuda", 0)
    for n, k in [(4096, 4096), (1024, 4096), (4096, 14336), (14336, 4096), (128, 4096)]:
        k_split = sk.choose_k_split(1, n, k, cuda)
        slices = math.ceil(k / k_split)
        tiles = math.ceil(n / 64)
        assert k_split % 256 == 0
        if tiles >= sms:
            assert slices == 1
        else:
            assert tiles * slices >= sms or k_split == 256, (n, k, slices)
            assert slices <= math.ceil(2 * sms / tiles), (n, k, slices)
    # M = 16: the workspace (8 S M N bytes) stays within 1/8 of the 16-bit weight (2 N K).
    for n, k in [(1024, 4096), (4096, 4096), (256, 1024)]:
        slices = math.ceil(k / sk.choose_k_split(16, n, k, cuda))
        assert 8 * slices * 16 * n <= 2 * n * k / 8, (n, k, slices)
    assert sk.choose_k_split(1, 100, 4096, torch.device("cpu")) == 2048  # interpreter: split 2
    assert sk.choose_k_split(1, 100, 4096, cuda, split_k=4) == 1024


def test_decode_matmul_op_passes_its_check():
    for impl in dm.SPEC.impls:
        for shape in dm.SPEC.presets["tiny"][:2]:
            r = check.check_case(dm.SPEC, impl, "infer", torch.float16, shape, seed=1)
            assert r.correct, (impl.name, shape, r.error)


def test_decode_matmul_bytes_are_what_the_kernel_touches(device):
    shape = {"M": 3, "N": 50, "K": 70}
    for dtype in (torch.float16, torch.float32, torch.bfloat16):
        inputs = dm.SPEC.make_inputs(shape, dtype, device, 0)
        out_bytes = 3 * 50 * inputs["x"].element_size()
        touched = inputs["x"].nbytes + inputs["weight"].nbytes + out_bytes
        assert dm.SPEC.bytes(shape, dtype, "infer") == touched
    assert dm.SPEC.flops(shape, "infer") == 2 * 3 * 50 * 70


@pytest.mark.parametrize("call, exc, match", [
    (lambda x, b: splitk_matmul(x, b, split_k=0), ValueError, "split_k must be a positive"),
    (lambda x, b: splitk_matmul(x, b, split_k=2.0), ValueError, "split_k must be a positive"),
    (lambda x, b: splitk_matmul(x, b, activation="tanh"), ValueError, "unknown activation"),
    (lambda x, b: splitk_matmul(x, b, bias=torch.ones(3)), ValueError, r"expected \(5,\)"),
    (lambda x, b: splitk_matmul(x, b.t()), ValueError, "inner dimensions differ"),
    (lambda x, b: splitk_matmul(x.half(), b), TypeError, "must match"),
    (lambda x, b: splitk_matmul(x, b, out=torch.empty(2, 4)), ValueError, "out has shape"),
    (lambda x, b: splitk_matmul(x[0], b), ValueError, "2-D"),
])
def test_bad_input(call, exc, match):
    x = torch.ones(2, 4)
    b = torch.ones(4, 5)
    with pytest.raises(exc, match=match):
        call(x, b)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("m", [1, 16])
@pytest.mark.parametrize("n, k", [(4096, 4096), (1024, 4096), (14336, 4096)])
def test_splitk_gpu_llama_shapes(n, k, m, dtype, gpu):
    x, b, bias = operands(m, n, k, dtype, "nk", seed=m + n, device=gpu)
    out = torch.full((m, n), math.nan, dtype=dtype, device=gpu)
    y = splitk_matmul(x, b, bias=bias, activation="silu", out=out)
    ref = torch_activation(x.double() @ b.double() + bias.double(), "silu")
    tol = reduction_tolerance(dtype, k, tf32=dtype == torch.float32 and
                              torch.backends.cuda.matmul.allow_tf32)
    ok, *_, why = check.compare((y,), (ref,), tol)
    assert ok, why
    # The split follows this GPU's own SM count (the rule itself is tested on the CPU).
    sms = torch.cuda.get_device_properties(gpu).multi_processor_count
    assert sk.LAST()["k_split"] == sk.gpu_k_split(m, n, k, sms)
    c = matmul(x, b)
    ok, *_, why = check.compare((c,), (x.double() @ b.double(),), tol)
    assert ok, why
