"""Flash attention against float64 torch: forward and gradients, causal and not, GQA ratios
1, 4 and multi-query, lengths 1, 17, 100 and block multiples, SQ != SK, strided views,
poisoned buffers, the FLOP and byte formulas, and bad input."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from click.testing import CliRunner
from helpers import assert_close_to_reference
from torch.utils import flop_counter

from tritonlab import backend
from tritonlab.cli import cli
from tritonlab.kernels import attention, decode_attention
from tritonlab.ops import registry
from tritonlab.ops.attention import causal_pairs
from tritonlab.reference import causal_mask, eager_attention

INTERPRETER = not backend.current().is_gpu


@contextlib.contextmanager
def poisoned_buffers():
    """Every floating tensor that torch.empty / empty_like allocates while this is active
    starts as NaN, so an element a kernel leaves unwritten (output, log-sum-exp, delta,
    gradient) shows up as NaN in the result."""
    empty, empty_like = torch.empty, torch.empty_like

    def poison(t):
        return t.fill_(math.nan) if t.is_floating_point() else t

    torch.empty = lambda *a, **k: poison(empty(*a, **k))
    torch.empty_like = lambda *a, **k: poison(empty_like(*a, **k))
    try:
        yield
    finally:
        torch.empty, torch.empty_like = empty, empty_like


def _heads(b, n, s, d, dtype, device, g, layout="bshd"):
    """A (b, n, s, d) tensor as a strided view: "bshd" is a model's (B, S, heads, D)
    projection transposed; "bhds" stores D outermost (last-dim stride s); "bhsd" is
    contiguous."""
    if layout == "bshd":
        return torch.randn(b, s, n, d, generator=g).to(device=device, dtype=dtype).transpose(1, 2)
    if layout == "bhds":
        return torch.randn(b, n, d, s, generator=g).to(device=device, dtype=dtype).transpose(2, 3)
    return torch.randn(b, n, s, d, generator=g).to(device=device, dtype=dtype)


def _check(o, grads, q, k, v, do, causal, scale=None):
    """O, dQ, dK, dV against float64 eager attention and its autograd. Tolerances are those
    of a dot of the reduction length (keys for O and dQ, queries times the group for dK,
    dV), doubled as the op declares, against |ref| (unit-scale random data)."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    with torch.enable_grad():
        ref = eager_attention(q64, k64, v64, causal, scale)
    ref_grads = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    sq, sk = q.shape[2], k.shape[2]
    group = q.shape[1] // k.shape[1]
    assert_close_to_reference(o, ref, sk, scale=2.0, dtype=q.dtype, what="O")
    for name, got, want, length in zip(("dQ", "dK", "dV"), grads, ref_grads,
                                       (sk, sq * group, sq * group)):
        if want.abs().max() < 1e-9:
            # One key per query (length 1): P is constant, dQ and dK are exactly zero.
            assert got.abs().max() < 1e-6, name
            continue
        assert_close_to_reference(got, want, length, scale=2.0, dtype=q.dtype, what=name)


def _run(q, k, v, do, causal, scale=None):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    with poisoned_buffers():
        o = attention(q, k, v, causal=causal, scale=scale)
        grads = torch.autograd.grad(o, (q, k, v), do)
    return o, grads


# (B, H, KVH, SQ, SK, D): lengths 1, 17, 100 and a block multiple (64), GQA 1, 2, 4 and MQA.
CASES = [
    (1, 2, 2, 1, 1, 64), (1, 4, 1, 17, 17, 32), (1, 8, 2, 17, 17, 32), (1, 2, 2, 64, 64, 64),
    (1, 2, 1, 100, 100, 32), (2, 2, 2, 33, 33, 128),
]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "x".join(map(str, s)))
def test_forward_and_gradients(shape, causal, device):
    b, h, kvh, sq, sk, d = shape
    dtype = torch.float16 if (sq + d) % 2 else torch.float32
    g = torch.Generator().manual_seed(sum(shape) + causal)
    q, k, v = (_heads(b, n, s, d, dtype, device, g) for n, s in ((h, sq), (kvh, sk), (kvh, sk)))
    do = torch.randn(b, h, sq, d, generator=g).to(device=device, dtype=dtype)
    o, grads = _run(q, k, v, do, causal)
    _check(o, grads, q, k, v, do, causal)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("sq,sk,causal", [(24, 70, True), (1, 45, True), (50, 33, False),
                                          (16, 16, True)])
def test_queries_and_keys_of_different_lengths(sq, sk, causal, dtype, device):
    """SQ < SK with a causal mask is a prompt chunk over its cached prefix (queries aligned
    to the end of the keys); SQ > SK is allowed without a mask."""
    g = torch.Generator().manual_seed(sq * 100 + sk)
    q = _heads(1, 4, sq, 32, dtype, device, g)
    k, v = (_heads(1, 1, sk, 32, dtype, device, g) for _ in range(2))
    do = torch.randn(1, 4, sq, 32, generator=g).to(device=device, dtype=dtype)
    o, grads = _run(q, k, v, do, causal)
    _check(o, grads, q, k, v, do, causal)


def test_chunked_prefill_equals_the_rows_of_the_whole_sequence(device):
    """The last SQ rows of causal attention over SK tokens equal attention of those SQ
    queries against all SK keys (the causal-with-prefix alignment)."""
    g = torch.Generator().manual_seed(7)
    q = _heads(1, 2, 40, 32, torch.float32, device, g)
    k, v = (_heads(1, 2, 40, 32, torch.float32, device, g) for _ in range(2))
    whole = attention(q, k, v, causal=True)
    chunk = attention(q[:, :, 29:], k, v, causal=True)
    torch.testing.assert_close(chunk, whole[:, :, 29:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("paged", [False, True], ids=["contiguous", "paged"])
def test_decode_equals_the_last_row_of_causal_attention(paged, device):
    """One decode step over a cache holding each sequence's keys gives the last row of
    causal attention over that sequence: ragged lengths, GQA 4, a shuffled block table."""
    g = torch.Generator().manual_seed(21)
    h, kvh, d, lengths = 8, 2, 32, (37, 1, 20)
    block = 8
    blocks_per_seq = -(-max(lengths) // block)
    n_blocks = len(lengths) * blocks_per_seq + 2
    perm = torch.randperm(n_blocks, generator=g)
    table = perm[:len(lengths) * blocks_per_seq].view(len(lengths), blocks_per_seq)
    if paged:
        k_cache = torch.full((n_blocks, block, kvh, d), math.nan, device=device)
        v_cache = torch.full_like(k_cache, math.nan)
    else:
        k_cache = torch.full((len(lengths), max(lengths), kvh, d), math.nan, device=device)
        v_cache = torch.full_like(k_cache, math.nan)
    q_last, rows = [], []
    for b, n in enumerate(lengths):
        q, k, v = (_heads(1, heads, n, d, torch.float32, device, g)
                   for heads in (h, kvh, kvh))
        rows.append(attention(q, k, v, causal=True)[0, :, -1])
        q_last.append(q[0, :, -1])
        for pos in range(n):
            if paged:
                page, slot = int(table[b, pos // block]), pos % block
                k_cache[page, slot], v_cache[page, slot] = k[0, :, pos], v[0, :, pos]
            else:
                k_cache[b, pos], v_cache[b, pos] = k[0, :, pos], v[0, :, pos]
    seqlens = torch.tensor(lengths, dtype=torch.int32, device=device)
    out = decode_attention(torch.stack(q_last), k_cache, v_cache, seqlens,
                           block_table=table.to(device=device, dtype=torch.int32)
                           if paged else None)
    torch.testing.assert_close(out, torch.stack(rows), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("layouts", [("bhsd", "bhds", "bshd"), ("bhds", "bshd", "bhds")])
def test_any_strides(layouts, device):
    """Q, K, V and dO in three different layouts, one of them with a non-unit last-dim
    stride, and a sliced (every other query) view."""
    g = torch.Generator().manual_seed(3)
    dtype = torch.float32
    q = _heads(1, 2, 42, 32, dtype, device, g, layouts[0])[:, :, ::2]
    k = _heads(1, 1, 21, 32, dtype, device, g, layouts[1])
    v = _heads(1, 1, 21, 32, dtype, device, g, layouts[2])
    do = _heads(1, 2, 21, 32, dtype, device, g, "bhds")
    assert not q.is_contiguous() and any(t.stride(-1) != 1 for t in (q, k, v))
    o, grads = _run(q, k, v, do, True)
    _check(o, grads, q, k, v, do, True)


def test_custom_scale_and_partial_gradients(device):
    """A scale other than 1/sqrt(D); only K requires grad, so only dK is computed."""
    g = torch.Generator().manual_seed(5)
    q, k, v = (_heads(1, 2, 19, 32, torch.float32, device, g) for _ in range(3))
    do = torch.randn(1, 2, 19, 32, generator=g).to(device)
    kk = k.detach().requires_grad_()
    o = attention(q, kk, v, causal=True, scale=0.3)
    (dk,) = torch.autograd.grad(o, (kk,), do)
    k64 = k.double().requires_grad_()
    with torch.enable_grad():
        ref = eager_attention(q.double(), k64, v.double(), True, 0.3)
    (ref_dk,) = torch.autograd.grad(ref, (k64,), do.double())
    assert_close_to_reference(o, ref, 19, scale=2.0)
    assert_close_to_reference(dk, ref_dk, 19, scale=2.0)


def test_inference_matches_training_forward(device):
    g = torch.Generator().manual_seed(11)
    q, k, v = (_heads(1, 2, 30, 64, torch.float16, device, g) for _ in range(3))
    with torch.inference_mode():
        served = attention(q, k, v)
    trained = attention(q.requires_grad_(), k, v)
    assert trained.requires_grad and not served.requires_grad
    assert torch.equal(served, trained.detach())


def test_double_backward_raises(device):
    g = torch.Generator().manual_seed(1)
    q, k, v = (_heads(1, 1, 8, 32, torch.float32, device, g).requires_grad_() for _ in range(3))
    o = attention(q, k, v)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(o.sum(), q, create_graph=True)


def test_empty_queries(device):
    q = torch.empty(1, 2, 0, 32, device=device)
    k = v = torch.randn(1, 2, 5, 32, device=device)
    assert attention(q, k, v).shape == (1, 2, 0, 32)


# ------------------------------------------------------------------------------ bad input

def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, device=backend.current().device)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((_t(1, 2, 4, 32), _t(2, 2, 4, 32), _t(2, 2, 4, 32)), {}, ValueError, "batch sizes differ"),
    ((_t(1, 2, 4, 32), _t(1, 2, 4, 64), _t(1, 2, 4, 64)), {}, ValueError, "head dims differ"),
    ((_t(1, 2, 4, 32), _t(1, 2, 4, 32), _t(1, 2, 5, 32)), {}, ValueError, "same shape"),
    ((_t(1, 3, 4, 32), _t(1, 2, 4, 32), _t(1, 2, 4, 32)), {}, ValueError, "multiple of"),
    ((_t(1, 2, 4, 48), _t(1, 2, 4, 48), _t(1, 2, 4, 48)), {}, ValueError,
     "head_dim 48 is not supported; supported: 32, 64, 128, 256"),
    ((_t(1, 2, 4, 32, dtype=torch.float64),) * 3, {}, TypeError, "supported: float16"),
    ((_t(1, 2, 4, 32), _t(1, 2, 4, 32, dtype=torch.float16), _t(1, 2, 4, 32)), {}, TypeError,
     "must match"),
    ((_t(1, 2, 4, 32), _t(1, 2, 3, 32), _t(1, 2, 3, 32)), {}, ValueError,
     "must not exceed seq_k"),
    ((_t(1, 2, 4, 32), _t(1, 2, 0, 32), _t(1, 2, 0, 32)), {"causal": False}, ValueError,
     "no keys"),
    ((_t(2, 4, 32),) * 3, {}, ValueError, "must be 4-D"),
    ((_t(1, 2, 4, 32),) * 3, {"causal": 1}, TypeError, "causal must be a bool"),
    ((_t(1, 2, 4, 32),) * 3, {"scale": float("nan")}, ValueError, "positive finite"),
])
def test_bad_input_names_the_constraint(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        attention(*args, **kwargs)


@pytest.mark.parametrize("shape,message", [
    ("1x3x2x8x8x32", "must be a multiple of KVH"),
    ("1x2x2x8x8x48", "supported: 32, 64, 128, 256"),
    ("1x2x2x9x8x32", "must not exceed SK"),
])
def test_cli_rejects_an_invalid_shape_with_exit_2(shape, message):
    result = CliRunner().invoke(cli, ["check", "attention", "--shape", shape])
    assert result.exit_code == 2, result.output
    assert message in result.output


# ------------------------------------------------------------------------------ formulas

@pytest.mark.parametrize("shape", [(2, 4, 2, 33, 33, 64), (1, 32, 8, 512, 4096, 128)])
def test_flops_equal_flop_counter_sdpa_formulas_without_a_mask(shape):
    """attention_full: torch.utils.flop_counter's own SDPA formulas (forward two GEMMs,
    backward five, S recomputed) on the shapes SDPA sees (K, V expanded to every head)."""
    op = registry.discover()["attention_full"]
    b, h, kvh, sq, sk, d = shape
    s = dict(zip(op.dims, shape))
    qs, ks = (b, h, sq, d), (b, h, sk, d)
    assert op.flops(s, "fwd") == op.flops(s, "infer") == flop_counter.sdpa_flop_count(qs, ks, ks)
    assert op.flops(s, "bwd") == flop_counter.sdpa_backward_flop_count(qs, qs, ks, ks)
    assert op.flops(s, "fwd_bwd") == op.flops(s, "fwd") + op.flops(s, "bwd")


@pytest.mark.parametrize("sq,sk", [(1, 1), (17, 17), (24, 70), (4096, 4096), (512, 4096)])
def test_causal_flops_count_exactly_the_unmasked_pairs(sq, sk):
    op = registry.discover()["attention"]
    pairs = int(causal_mask(sq, sk).sum())
    assert causal_pairs(sq, sk) == pairs
    s = {"B": 2, "H": 4, "KVH": 2, "SQ": sq, "SK": sk, "D": 64}
    assert op.flops(s, "fwd") == 4 * 2 * 4 * pairs * 64
    assert op.flops(s, "bwd") == 10 * 2 * 4 * pairs * 64


def test_bytes_are_the_tensors_each_mode_touches(device):
    """infer: Q, K, V read and O written; fwd adds the fp32 log-sum-exp; bwd reads Q, K, V,
    O, dO, lse and writes dQ, dK, dV: the nbytes of the real tensors."""
    op = registry.discover()["attention"]
    shape = {"B": 2, "H": 4, "KVH": 2, "SQ": 9, "SK": 12, "D": 32}
    inputs = op.make_inputs(shape, torch.float16, device, 0)
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    o = torch.empty_like(q)
    lse = 4 * shape["B"] * shape["H"] * shape["SQ"]
    n = sum(t.numel() * t.element_size() for t in (q, k, v, o))
    assert op.bytes(shape, torch.float16, "infer") == n
    assert op.bytes(shape, torch.float16, "fwd") == n + lse
    grads = q.nbytes + k.nbytes + v.nbytes
    assert op.bytes(shape, torch.float16, "bwd") == n + o.nbytes + lse + grads
    assert op.bytes(shape, torch.float16, "fwd_bwd") == (op.bytes(shape, torch.float16, "fwd")
                                                         + op.bytes(shape, torch.float16, "bwd"))


def test_reference_and_error_scales_have_the_outputs_shapes(device):
    op = registry.discover()["attention"]
    shape = op.presets["tiny"][1]
    inputs = op.make_inputs(shape, torch.float32, device, 0)
    for mode in op.modes:
        ref = op.reference(inputs, mode)
        scales = op.error_scale(inputs, mode)
        assert len(ref) == len(scales) == len(op.tolerance(torch.float32, shape, mode))
        for r, sc in zip(ref, scales):
            assert sc.shape == r.shape and (sc > 0).any()


# ------------------------------------------------------------------------------ GPU lane

@pytest.mark.gpu
@pytest.mark.parametrize("causal", [True, False])
def test_bf16_llama_heads_on_gpu(causal, device):
    if INTERPRETER:
        pytest.skip("bf16 dots are wrong under the interpreter; GPU only")
    g = torch.Generator().manual_seed(0)
    q = _heads(2, 32, 1000, 128, torch.bfloat16, device, g)
    k, v = (_heads(2, 8, 1000, 128, torch.bfloat16, device, g) for _ in range(2))
    do = torch.randn(2, 32, 1000, 128, generator=g).to(device=device, dtype=torch.bfloat16)
    o, grads = _run(q, k, v, do, causal)
    _check(o, grads, q, k, v, do, causal)
