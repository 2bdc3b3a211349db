"""matmul against float64 torch: shapes, layouts, strides, dtypes, edges and bad input."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from helpers import assert_close_to_reference
from hypothesis import given, settings
from hypothesis import strategies as st

from tritonlab.kernels import matmul
from tritonlab.kernels._gemm import INT32_MAX, max_offset, needs_int64
from tritonlab.ops.matmul import SPEC

# The package re-exports the function `matmul`, which shadows the submodule attribute.
mm = importlib.import_module("tritonlab.kernels.matmul")

CPU_DTYPES = [torch.float16, torch.float32]


def _operand(rows, cols, dtype, device, transposed, gen):
    """A (rows, cols) operand; transposed=True gives a column-major view of the same values."""
    if transposed:
        return torch.randn(cols, rows, generator=gen).to(device=device, dtype=dtype).t()
    return torch.randn(rows, cols, generator=gen).to(device=device, dtype=dtype)


def assert_close_to_f64(c, a, b):
    assert_close_to_reference(c, a.double() @ b.double(), a.shape[1], dtype=a.dtype)


def poisoned(m, n, dtype, device):
    return torch.full((m, n), math.nan, dtype=dtype, device=device)


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nn", "nt", "tn", "tt"])
@pytest.mark.parametrize("mnk", [(1, 1, 1), (1, 67, 129), (97, 83, 131), (130, 5, 64), (64, 64, 1)])
def test_matmul_layouts_and_odd_sizes(dtype, layout, mnk, device):
    m, n, k = mnk
    g = torch.Generator().manual_seed(m * 1000 + n * 10 + k)
    a = _operand(m, k, dtype, device, layout[0] == "t", g)
    b = _operand(k, n, dtype, device, layout[1] == "t", g)
    out = poisoned(m, n, dtype, device)
    c = matmul(a, b, out=out)
    assert c.data_ptr() == out.data_ptr()
    assert_close_to_f64(c, a, b)


@settings(max_examples=12, deadline=None)
@given(m=st.integers(1, 150), n=st.integers(1, 150), k=st.integers(1, 200),
       ta=st.booleans(), tb=st.booleans(), fp32=st.booleans(), seed=st.integers(0, 2**16))
def test_matmul_random_shapes(device, m, n, k, ta, tb, fp32, seed):
    dtype = torch.float32 if fp32 else torch.float16
    g = torch.Generator().manual_seed(seed)
    a = _operand(m, k, dtype, device, ta, g)
    b = _operand(k, n, dtype, device, tb, g)
    assert_close_to_f64(matmul(a, b), a, b)


def test_matmul_noncontiguous_views_are_read_in_place(device, monkeypatch):
    g = torch.Generator().manual_seed(7)
    big_a = torch.randn(200, 300, generator=g).to(device=device, dtype=torch.float16)
    big_b = torch.randn(260, 190, generator=g).to(device=device, dtype=torch.float16)
    a = big_a[1::2, 3::3]  # (100, 99), strides (600, 3)
    b = big_b[::2, 5:][:99, ::2]  # (99, 93), strides (380, 2)
    assert not a.is_contiguous() and not b.is_contiguous()

    def no_copies(*args, **kwargs):
        raise AssertionError("matmul made a hidden .contiguous() copy")

    monkeypatch.setattr(torch.Tensor, "contiguous", no_copies)
    c = matmul(a, b)
    monkeypatch.undo()
    assert_close_to_f64(c, a, b)


def test_matmul_writes_nothing_outside_c(device):
    """C is a strided window into a guard buffer; every element outside it must stay intact."""
    m, n, k = 70, 45, 33
    g = torch.Generator().manual_seed(3)
    a = torch.randn(m, k, generator=g).to(device=device, dtype=torch.float16)
    b = torch.randn(k, n, generator=g).to(device=device, dtype=torch.float16)
    guard = torch.full((m + 9, 2 * n + 11), 1234.0, dtype=torch.float16, device=device)
    window = guard[4:4 + m, 7:7 + 2 * n:2]  # strided rows and columns, guard all around
    window.fill_(math.nan)
    matmul(a, b, out=window)
    assert_close_to_f64(window, a, b)
    outside = torch.ones_like(guard, dtype=torch.bool)
    outside[4:4 + m, 7:7 + 2 * n:2] = False
    assert (guard[outside] == 1234.0).all(), "matmul wrote outside C"


def test_int64_addressing_path_is_correct(device, monkeypatch):
    """The int64 address path (used for tensors spanning >= 2^31 elements) gives the same
    answer; forced on here because such tensors do not fit this machine's test budget."""
    monkeypatch.setattr(mm, "needs_int64", lambda *t: True)
    g = torch.Generator().manual_seed(11)
    a = torch.randn(33, 70, generator=g).to(device=device, dtype=torch.float32).t()
    b = torch.randn(33, 41, generator=g).to(device=device, dtype=torch.float32)
    assert_close_to_f64(matmul(a, b), a, b)


def test_needs_int64_threshold():
    small = torch.empty(4, 4)
    assert max_offset(small) == 15 and not needs_int64(small)
    # A view whose last element sits past 2^31 - 1; a meta tensor allocates nothing.
    huge = torch.empty_strided((2, 3), (INT32_MAX, 1), device="meta")
    assert max_offset(huge) == INT32_MAX + 2 and needs_int64(huge)


def test_matmul_k_zero_and_empty(device):
    a = torch.empty(5, 0, dtype=torch.float16, device=device)
    b = torch.empty(0, 7, dtype=torch.float16, device=device)
    assert torch.equal(matmul(a, b), torch.zeros(5, 7, dtype=torch.float16, device=device))
    assert matmul(torch.empty(0, 3, device=device), torch.empty(3, 4, device=device)).shape == (0, 4)


def test_fp32_ieee_vs_tf32_selection(device):
    g = torch.Generator().manual_seed(5)
    a = torch.randn(40, 50, generator=g).to(device)
    b = torch.randn(50, 30, generator=g).to(device)
    exact = matmul(a, b, input_precision="ieee")
    assert_close_to_f64(exact, a, b)
    # The interpreter computes TF32 dots exactly, so only the argument's validation shows here.
    assert matmul(a, b, input_precision="tf32").shape == (40, 30)
    with pytest.raises(ValueError, match="ieee"):
        matmul(a, b, input_precision="fp16")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("mnk", [(1, 4096, 4096), (513, 1027, 777), (2048, 2048, 2048)])
def test_matmul_gpu(dtype, mnk, gpu):
    m, n, k = mnk
    g = torch.Generator().manual_seed(m + n + k)
    a = torch.randn(m, k, generator=g).to(gpu, dtype)
    b = torch.randn(k, n, generator=g).to(gpu, dtype)
    out = torch.full((m, n), math.nan, dtype=dtype, device=gpu)
    assert_close_to_f64(matmul(a, b, out=out), a, b)
    assert matmul.__module__ == "tritonlab.kernels.matmul"
    assert SPEC.impl("triton").config("fwd")["path"] == ("splitk" if m <= 16 else "tiled")


@pytest.mark.gpu
def test_matmul_gpu_over_2_31_elements(gpu):
    """A real tensor spanning more than 2^31 elements takes the int64 path and stays right."""
    k = 2**31 // 8 + 64  # A is (8, k): 2^31 + 512 elements of fp16, about 4.3 GB
    a = torch.randn(8, k, device=gpu, dtype=torch.float16) * 0.01
    b = torch.randn(k, 4, device=gpu, dtype=torch.float16) * 0.01
    assert needs_int64(a)
    c = matmul(a, b)
    ref = a.double() @ b.double()
    assert (c.double() - ref).norm() / ref.norm() < 5e-3


@pytest.mark.parametrize("bad, exc, match", [
    (lambda d: (torch.ones(3, 4, device=d), torch.ones(5, 6, device=d)), ValueError, "inner dim"),
    (lambda d: (torch.ones(3, device=d), torch.ones(3, 6, device=d)), ValueError, "2-D"),
    (lambda d: (torch.ones(3, 4, device=d, dtype=torch.int32), torch.ones(4, 2, device=d)),
     TypeError, "supported: float16, bfloat16, float32"),
    (lambda d: (torch.ones(3, 4, device=d), torch.ones(4, 2, device=d, dtype=torch.float16)),
     TypeError, "must match"),
    (lambda d: (torch.ones(3, 4, device=d), torch.ones(4, 2, device="meta")), ValueError,
     "same device"),
    (lambda d: ([[1.0]], torch.ones(1, 1, device=d)), TypeError, "torch.Tensor"),
])
def test_matmul_bad_input(bad, exc, match, device):
    a, b = bad(device)
    with pytest.raises(exc, match=match):
        matmul(a, b)
