"""fp8_matmul and the per-token quantiser under the interpreter: bit-exact codes against the
torch reference (including round-up carries, ties and subnormals), the scaled GEMM against
float64 on the dequantised operands for per-tensor and per-row/column scales at odd sizes,
bad input, and (GPU lane) against torch._scaled_mm."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_close_to_reference

from tritonlab.errors import UsageError
from tritonlab.kernels import fp8_matmul, quantize_fp8
from tritonlab.kernels.fp8_matmul import FP8_DTYPE, FP8_LAST
from tritonlab.ops.fp8_matmul import quantize_reference
from tritonlab.ops.registry import discover


def _codes(q):
    return q.view(torch.uint8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16], ids=str)
def test_quantiser_matches_the_reference_bit_for_bit(dtype, device):
    """Rows of mixed magnitude (values deep in e4m3's subnormal range next to the row's
    maximum), a zero row, K no multiple of the kernel's K block, a transposed view."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 37, generator=g).t() * 3  # (37, 300), column-major
    x[:, :40] *= 1e-4
    x[5] = 0
    x = x.to(dtype).to(device)
    q, s = quantize_fp8(x)
    q_ref, s_ref = quantize_reference(x)
    assert q.dtype == FP8_DTYPE and q.shape == x.shape and s.shape == (37, 1)
    assert torch.equal(s, s_ref)
    assert torch.equal(_codes(q), _codes(q_ref)), \
        f"{int((_codes(q) != _codes(q_ref)).sum())} codes differ"
    assert (q[5].float() == 0).all()


def test_quantiser_rounds_ties_to_even_and_carries_into_the_exponent(device):
    """With amax = 448 (scale 1), x is coded as is: 31 (a tie between 30 and 32) rounds to
    the even 32, a mantissa carry into the next binade (the interpreter's own cast gives 16);
    17 (a tie) to 16, 19 to 20, 30.5 to 30; 1.5 * 2^-9 (a subnormal tie) to 2^-8, 2^-10 to
    0."""
    x = torch.tensor([[448.0, 31.0, 17.0, 19.0, 1.5 * 2**-9, -31.0, 30.5, 2**-10]],
                     device=device)
    q, s = quantize_fp8(x)
    assert float(s) == 1.0
    assert q.float().tolist()[0] == [448.0, 32.0, 16.0, 20.0, 2**-8, -32.0, 30.0, 0.0]
    assert torch.equal(_codes(q), _codes(quantize_reference(x)[0]))


@pytest.mark.parametrize("out_dtype", [torch.float16, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mnk", [(97, 88, 144), (5, 200, 48), (130, 40, 64)])
def test_fp8_matmul_rowwise_against_float64(out_dtype, mnk, device):
    """Per-token x per-channel scales; M, N no multiple of the 64 x 64 tile; 4, 4 and 3 tiles
    on 3 programs; B = W^T column-major, the layout torch._scaled_mm takes."""
    m, n, k = mnk
    g = torch.Generator().manual_seed(m + n + k)
    a, sa = quantize_reference(torch.randn(m, k, generator=g))
    w, sw = quantize_reference(torch.randn(n, k, generator=g) * k**-0.5)
    a, sa, w, sw = (t.to(device) for t in (a, sa, w, sw))
    out = torch.full((m, n), math.nan, dtype=out_dtype, device=device)
    c = fp8_matmul(a, w.t(), sa, sw.view(1, n), out_dtype, out=out)
    assert c.data_ptr() == out.data_ptr() and FP8_LAST()["path"] == "persistent"
    ref = (a.double() * sa.double()) @ (w.double() * sw.double()).t()
    assert_close_to_reference(c, ref, k, dtype=out_dtype)


@pytest.mark.parametrize("shape_a, shape_b", [((), ()), ((1,), (1, 1)), ((1, 1), (1,))])
def test_fp8_matmul_tensorwise_and_row_major_b(shape_a, shape_b, device):
    """One scale per tensor, in any of the one-value shapes; B row-major (N a multiple of
    16), which a descriptor reads as well."""
    m, n, k = 70, 48, 96
    g = torch.Generator().manual_seed(9)
    a = (torch.randn(m, k, generator=g) * 8).to(FP8_DTYPE).to(device)
    b = (torch.randn(k, n, generator=g) * 8).to(FP8_DTYPE).to(device)
    sa = torch.full(shape_a, 0.25, device=device)
    sb = torch.full(shape_b, 0.125, device=device)
    c = fp8_matmul(a, b, sa, sb, torch.float32)
    assert_close_to_reference(c, (a.double() @ b.double()) / 32, k)


def test_empty_and_zero_k(device):
    a = torch.empty(4, 0, dtype=FP8_DTYPE, device=device)
    b = torch.empty(0, 16, dtype=FP8_DTYPE, device=device)
    one = torch.ones((), device=device)
    assert torch.equal(fp8_matmul(a, b, one, one), torch.zeros(4, 16, dtype=torch.bfloat16))
    assert fp8_matmul(torch.empty(0, 16, dtype=FP8_DTYPE, device=device),
                      torch.empty(16, 8, dtype=FP8_DTYPE, device=device), one, one).shape == (0, 8)


def _ok(device, m=32, n=16, k=32):
    a = torch.zeros(m, k, device=device).to(FP8_DTYPE)
    b = torch.zeros(n, k, device=device).to(FP8_DTYPE).t()
    return a, b, torch.ones(m, 1, device=device), torch.ones(1, n, device=device)


@pytest.mark.parametrize("change, match", [
    (lambda a, b, sa, sb: (a.half(), b, sa, sb), "float8_e4m3fn"),
    (lambda a, b, sa, sb: (a, b[:16], sa, sb), "inner dimensions"),
    (lambda a, b, sa, sb: (a, b, sa.double(), sb), "float32"),
    (lambda a, b, sa, sb: (a, b, sa[:5], sb), r"valid: one value .* \(32, 1\)"),
    (lambda a, b, sa, sb: (a, b, sa, sb.t()), r"\(1, 16\)"),
    (lambda a, b, sa, sb: (a, b, sa, [1.0]), "torch.Tensor"),
    (lambda a, b, sa, sb: (torch.zeros(32, 40, device=a.device).to(FP8_DTYPE)[:, :32], b, sa,
                           sb), "40 bytes.*column-major"),
])
def test_bad_input(change, match, device):
    args = change(*_ok(device))
    with pytest.raises(UsageError, match=match):
        fp8_matmul(*args)


def test_bad_out_dtype_and_quantiser_input(device):
    a, b, sa, sb = _ok(device)
    with pytest.raises(UsageError, match="bfloat16, float16, float32"):
        fp8_matmul(a, b, sa, sb, torch.int8)
    with pytest.raises(UsageError, match="2-D"):
        quantize_fp8(torch.zeros(3, device=device))
    with pytest.raises(UsageError, match="supported"):
        quantize_fp8(torch.zeros(3, 4, dtype=torch.int32, device=device))


def test_quantiser_writes_strided_scales_in_row_order(device):
    """A preallocated scale is written at m * its one stride: a strided (M, 1) column gets
    the scales in row order; M values that are no single strided row are refused (reshape
    would copy them, and the kernel would scramble the original's order)."""
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(3)).to(device)
    q0, s0 = quantize_fp8(x)
    buf = torch.zeros(8, 3, device=device)
    _, s = quantize_fp8(x, scale=buf[:, 1:2])
    assert torch.equal(s, s0) and torch.equal(buf[:, 1:2], s0) and not buf[:, ::2].any()
    with pytest.raises(UsageError, match="strided row"):
        quantize_fp8(x, scale=torch.empty(4, 2, device=device).t())


def test_ops_registered_with_the_scaled_mm_baseline():
    ops = discover()
    for name in ("fp8_matmul", "fp8_matmul_tensorwise"):
        impls = [i.name for i in ops[name].impls]
        assert "triton" in impls and "torch" in impls and "torch_dequant" in impls
    assert "triton_quant" in [i.name for i in ops["fp8_matmul"].impls]
    assert "multiple of 16" in ops["fp8_matmul"].shape_error({"M": 8, "N": 8, "K": 40})


def test_triton_quant_impl_quantises_per_call(device):
    op = discover()["fp8_matmul"]
    inputs = op.make_inputs({"M": 33, "N": 40, "K": 64}, torch.float16, device, 3)
    (c,) = op.impl("triton_quant").build(inputs, "infer")()
    assert_close_to_reference(c, op.reference(inputs, "infer")[0], 64)


@pytest.mark.gpu
@pytest.mark.parametrize("mnk", [(16, 4096, 4096), (1000, 2048, 1024), (4096, 4096, 4096)])
def test_fp8_matmul_matches_scaled_mm_gpu(mnk, gpu):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs sm_89+")
    m, n, k = mnk
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g).to(gpu, torch.bfloat16)
    w = (torch.randn(n, k, generator=g) * k**-0.5).to(gpu, torch.bfloat16)
    a, sa = quantize_fp8(x)
    wq, sw = quantize_fp8(w)
    assert torch.equal(_codes(a), _codes(quantize_reference(x)[0]))
    c = fp8_matmul(a, wq.t(), sa, sw.view(1, n))
    ref = torch._scaled_mm(a, wq.t(), sa, sw.view(1, n), out_dtype=torch.bfloat16,
                           use_fast_accum=True)
    exact = (a.double() * sa.double()) @ (wq.double() * sw.double()).t()
    err = (c.double() - exact).norm() / exact.norm()
    err_ref = (ref.double() - exact).norm() / exact.norm()
    assert err <= 2 * err_ref + 1e-3, (err, err_ref)


def test_fp8_inference_workload(device):
    """InferenceWorkload(dtype="fp8"): weights quantised once, activations per call; the
    Triton and torch fp8 paths agree (same codes, so only the accumulation differs), and both
    stay within fp8's quantisation error of the float64 block."""
    from tritonlab.workloads.infer import InferenceWorkload
    from tritonlab.workloads.model import MLPConfig, reference_forward

    cfg = MLPConfig.from_size("tiny")
    outs = {}
    for impl in ("triton", "torch"):
        w = InferenceWorkload(cfg, impl=impl, dtype="fp8")
        assert w.fp8 and w.fp8_weights["gate_up"][0].dtype == FP8_DTYPE
        x = w.make_batch(40)
        outs[impl] = w.step(x)
    ref = reference_forward(cfg, {k: v.double() for k, v in w.params.items()}, x.double())
    tri, tor = outs["triton"].double(), outs["torch"].double()
    assert (tri - tor).norm() / tor.norm() < 1e-2
    assert (tri - ref).norm() / ref.norm() < 0.1  # e4m3 keeps 3 mantissa bits
    with pytest.raises(ValueError, match="fp8"):
        InferenceWorkload(cfg, dtype="int4")


def test_fp8_serving_weights_prefill_and_decode(device):
    """ServingWeights(dtype="fp8"): the four projections of each layer in e4m3 (weights one
    byte each), Prefill and Decode with both impls agree (same codes), and stay within fp8's
    quantisation error of the 16-bit layers."""
    from tritonlab.workloads.kv_cache import KVCache
    from tritonlab.workloads.layer import LayerConfig, init_params
    from tritonlab.workloads.layer_serve import Decode, Prefill, ServingWeights

    cfg = LayerConfig.from_size("tiny")
    params = init_params(cfg, 2, torch.float32, "cpu", seed=3)
    lens, steps = [5, 9], 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, max(lens), cfg.dim, generator=g)
    x0 = torch.randn(2, cfg.dim, generator=g)
    outs = {}
    for name, dtype, impl in (("fp8", "fp8", "triton"), ("fp8_torch", "fp8", "torch"),
                              ("fp16", torch.float16, "triton")):
        weights = ServingWeights(cfg, params, dtype=dtype)
        assert weights.fp8 == (dtype == "fp8") and weights.dtype == torch.float16
        cache = KVCache(cfg, 2, 2, max(lens) + steps, dtype=weights.dtype, device=device,
                        block_size=4, seed=1)
        h = Prefill(weights, impl=impl).step(x.to(device, weights.dtype), lens, cache)
        ys = Decode(weights, cache, impl=impl).generate(x0.to(device, weights.dtype), steps)
        outs[name] = torch.cat([h[0, :lens[0]], h[1, :lens[1]], ys.flatten(0, 1)]).double()
        if weights.fp8:
            assert weights.layers[0]["wqkv"][0].dtype == FP8_DTYPE
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    # Same codes; the GEMMs round their 16-bit outputs after different accumulation orders,
    # which can move a requantised activation by one code: about 1e-2 after two layers.
    assert rel(outs["fp8"], outs["fp8_torch"]) < 3e-2
    assert rel(outs["fp8"], outs["fp16"]) < 0.15
