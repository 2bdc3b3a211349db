"""decode_attention against float64 torch: ragged lengths, GQA ratios, contiguous and paged
caches with shuffled block tables, strided views, empty splits, the split rule, the op's
formulas and inputs, the CLI, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import triton
from click.testing import CliRunner
from helpers import assert_close_to_reference

from tritonlab.cli import cli
from tritonlab.kernels.decode_attention import (
    LAST,
    SUPPORTED_HEAD_DIMS,
    choose_splits,
    decode_attention,
)
from tritonlab.measure import check
from tritonlab.ops.decode_attention import SPEC, block_size, seq_lengths

CPU_DTYPES = [torch.float16, torch.float32]


def _cache(lens, kvh, d, page, dtype, device, gen, *, spare=2, width_extra=1):
    """K and V for sequences of ``lens``: contiguous (batch, max(lens) + 3, kvh, d) when
    ``page`` is 0, else a pool of ``page``-slot blocks in shuffled order with ``spare`` blocks
    no sequence owns and ``width_extra`` table columns past the longest sequence's need,
    pointing at a spare block. NaN in every slot past a length and in the spare blocks.
    Returns (k, v, block_table or None)."""
    def randn(*size):
        return torch.randn(*size, generator=gen).to(device=device, dtype=dtype)

    if page == 0:
        k, v = randn(len(lens), max(lens) + 3, kvh, d), randn(len(lens), max(lens) + 3, kvh, d)
        for i, n in enumerate(lens):
            k[i, n:] = math.nan
            v[i, n:] = math.nan
        return k, v, None
    needed = [-(-n // page) for n in lens]
    num_blocks = sum(needed) + spare
    perm = torch.randperm(num_blocks, generator=gen)
    table = torch.full((len(lens), max(needed) + width_extra), int(perm[-1]), dtype=torch.int32)
    start = 0
    for i, n in enumerate(needed):
        table[i, :n] = perm[start:start + n]
        start += n
    k, v = randn(num_blocks, page, kvh, d), randn(num_blocks, page, kvh, d)
    for pool in (k, v):
        pool[perm[sum(needed):]] = math.nan
        for i, n in enumerate(lens):
            pool[int(table[i, needed[i] - 1]), n - (needed[i] - 1) * page:] = math.nan
    return k, v, table.to(device)


def _reference(q, k, v, lens, table=None, scale=None):
    """Float64 attention of each sequence over its own length, query head h on kv head
    h // (H / KVH)."""
    q64 = q.detach().double().cpu()
    n_heads, d = q.shape[1], q.shape[2]
    scale = d**-0.5 if scale is None else scale
    out = torch.empty_like(q64)
    for i, n in enumerate(lens):
        if table is None:
            ki, vi = k[i, :n], v[i, :n]
        else:
            blocks = table[i, :-(-n // k.shape[1])].long()
            ki, vi = k[blocks].flatten(0, 1)[:n], v[blocks].flatten(0, 1)[:n]
        group = n_heads // k.shape[2]
        ki = ki.double().cpu().repeat_interleave(group, dim=1)
        vi = vi.double().cpu().repeat_interleave(group, dim=1)
        w = torch.softmax(torch.einsum("hd,nhd->hn", q64[i], ki) * scale, dim=-1)
        out[i] = torch.einsum("hn,nhd->hd", w, vi)
    return out


def _assert_matches(out, q, k, v, lens, table=None, scale=None):
    assert_close_to_reference(out, _reference(q, k, v, lens, table, scale),
                              max(lens) + q.shape[2], dtype=q.dtype)


def _poisoned(q):
    return torch.full_like(q, math.nan)


# ---------------------------------------------------------------------------- correctness


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("page", [0, 16, 64], ids=lambda p: f"page{p}" if p else "contiguous")
@pytest.mark.parametrize("heads", [(4, 4, 64), (8, 2, 64), (8, 1, 128)],
                         ids=["mha", "gqa4", "mqa"])
def test_ragged_batch_against_float64(heads, page, dtype, device):
    """Lengths of 1, and of no multiple of the 32-position tile or of the block size; NaN
    past every length and in the pool's spare blocks, the output poisoned with NaN."""
    n_heads, n_kv_heads, d = heads
    lens = [45, 1, 33]
    g = torch.Generator().manual_seed(n_heads + page + d)
    q = torch.randn(len(lens), n_heads, d, generator=g).to(device, dtype)
    k, v, table = _cache(lens, n_kv_heads, d, page, dtype, device, g)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=device)
    out = _poisoned(q)
    res = decode_attention(q, k, v, seqlens, block_table=table, out=out)
    assert res.data_ptr() == out.data_ptr()
    _assert_matches(out, q, k, v, lens, table)
    assert LAST()["paged"] is (page > 0)


@pytest.mark.parametrize("d", [32, 256])
def test_head_dims_32_and_256(d, device):
    lens = [20, 7]
    g = torch.Generator().manual_seed(d)
    q = torch.randn(2, 4, d, generator=g).to(device, torch.float16)
    k, v, table = _cache(lens, 2, d, 16, torch.float16, device, g)
    out = decode_attention(q, k, v, torch.tensor(lens, dtype=torch.int32, device=device),
                           block_table=table)
    _assert_matches(out, q, k, v, lens, table)


def test_group_larger_than_one_program_takes_several(device):
    """MQA with 32 query heads in fp32 at head dim 128: 16 rows per program, two programs per
    kv head."""
    lens = [9]
    g = torch.Generator().manual_seed(5)
    q = torch.randn(1, 32, 128, generator=g).to(device, torch.float32)
    k, v, table = _cache(lens, 1, 128, 0, torch.float32, device, g)
    out = decode_attention(q, k, v, torch.tensor(lens, dtype=torch.int32, device=device),
                           out=_poisoned(q))
    _assert_matches(out, q, k, v, lens)
    assert LAST()["BLOCK_H"] == 16


def test_empty_splits_and_explicit_split_counts(device):
    """With several splits, sequences shorter than one split leave splits empty (lse = -inf):
    the merge must give them no weight. The split is a whole number of tiles."""
    lens = [100, 1, 40]
    g = torch.Generator().manual_seed(9)
    q = torch.randn(3, 8, 64, generator=g).to(device, torch.float16)
    k, v, table = _cache(lens, 2, 64, 16, torch.float16, device, g)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=device)
    seen = set()
    for num_splits in (None, 1, 2, 100):
        out = decode_attention(q, k, v, seqlens, block_table=table, num_splits=num_splits,
                               out=_poisoned(q))
        _assert_matches(out, q, k, v, lens, table)
        cfg = LAST()
        assert cfg["split_len"] % cfg["BLOCK_N"] == 0
        assert cfg["num_splits"] == triton.cdiv(max(lens), cfg["split_len"])
        seen.add(cfg["num_splits"])
        if num_splits is None:
            assert cfg["num_splits"] > 1 and min(lens) < cfg["split_len"] and 40 < cfg["split_len"]
    # 100 positions are 4 tiles of 32: 100 splits are capped at one per tile.
    assert seen == {2, 1, 4}


def test_noncontiguous_views_are_read_in_place(device, monkeypatch):
    """q with strided heads and head dim, a pool stored head-major (num_blocks, kvh, page, d)
    and viewed as (num_blocks, page, kvh, d), V with a strided head dim, a strided block
    table, and the output a strided window."""
    lens = [37, 5]
    g = torch.Generator().manual_seed(13)
    dtype = torch.float16
    q_big = torch.randn(2, 16, 128, generator=g).to(device, dtype)
    q = q_big[:, ::2, 1::2]
    k_pool, v_pool, table = _cache(lens, 2, 64, 16, dtype, device, g)
    k = k_pool.permute(0, 2, 1, 3).contiguous().permute(0, 2, 1, 3)
    v_wide = torch.full((*v_pool.shape[:3], 128), math.nan, dtype=dtype, device=device)
    v_wide[..., ::2] = v_pool
    v = v_wide[..., ::2]
    table_wide = torch.zeros(2, 2 * table.shape[1], dtype=torch.int32, device=device)
    table_wide[:, ::2] = table
    table_view = table_wide[:, ::2]
    out_big = torch.full((2, 8, 128), math.nan, dtype=dtype, device=device)
    out = out_big[:, :, ::2]
    assert not any(t.is_contiguous() for t in (q, k, v, table_view, out))

    def no_copies(*args, **kwargs):
        raise AssertionError("decode_attention made a hidden .contiguous() copy")

    monkeypatch.setattr(torch.Tensor, "contiguous", no_copies)
    decode_attention(q, k, v, torch.tensor(lens, dtype=torch.int32, device=device),
                     block_table=table_view, out=out)
    monkeypatch.undo()
    _assert_matches(out, q, k, v, lens, table)
    assert torch.isnan(out_big[:, :, 1::2]).all(), "decode_attention wrote outside out"


def test_scale_and_unused_table_entries(device):
    """An explicit scale; table entries a sequence does not use may hold anything (-1 here)
    and are never read."""
    lens = [30, 3]
    g = torch.Generator().manual_seed(21)
    q = torch.randn(2, 4, 64, generator=g).to(device, torch.float32)
    k, v, table = _cache(lens, 2, 64, 8, torch.float32, device, g, width_extra=3)
    table[1, 1:] = -1
    out = decode_attention(q, k, v, torch.tensor(lens, dtype=torch.int32, device=device),
                           block_table=table, scale=0.3)
    _assert_matches(out, q, k, v, lens, table, scale=0.3)


def test_planted_nan_catches_a_read_past_the_length(device):
    """The guard the tests rely on: a kernel told a sequence is one position longer reads a
    NaN slot, and the output shows it."""
    lens = [12, 20]
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 64, generator=g).to(device, torch.float16)
    k, v, _ = _cache(lens, 4, 64, 0, torch.float16, device, g)
    longer = torch.tensor([13, 20], dtype=torch.int32, device=device)
    out = decode_attention(q, k, v, longer)
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()


# -------------------------------------------------------------------------- the split rule


@pytest.mark.parametrize("batch, ctx", [(1, 1), (1, 8192), (1, 32768), (4, 2048), (64, 8192),
                                        (256, 512)])
def test_split_rule(batch, ctx):
    """Llama-3-8B (8 kv heads, groups of 4, head dim 128, fp16) on 132 SMs: a whole number
    of tiles per split, enough programs to cover the SMs a few times where the context
    allows it, and fp32 partials within 1/8 of the K/V bytes."""
    sms, block_n, group, d, kvh = 132, 64, 4, 128, 8
    programs = batch * kvh
    n_splits, split_len = choose_splits(programs, ctx, block_n, sms, group=group, head_dim=d,
                                        itemsize=2)
    assert split_len % block_n == 0 and n_splits == triton.cdiv(ctx, split_len)
    assert n_splits * group * 8 * (d + 1) <= 2 * ctx * d * 2 / 8 or n_splits == 1
    if programs >= 4 * sms:
        assert n_splits == 1
    elif ctx >= 8192:
        assert programs * n_splits >= 2 * sms


# ------------------------------------------------------------------ the op's declarations


def test_lengths_are_a_function_of_the_shape():
    shape = {"B": 5, "H": 8, "KVH": 2, "D": 64, "CTX": 100, "PAGE": 16}
    lens = seq_lengths(shape)
    assert lens[0] == 100 and lens[-1] == 1 and all(50 <= n <= 100 for n in lens[:-1])
    assert seq_lengths({**shape, "B": 2}) == [100, 75]
    assert block_size(shape) == 16 and block_size({**shape, "PAGE": 100}) == 0
    assert "valid: 32, 64, 128, 256" in SPEC.shape_error({**shape, "D": 80})
    assert "multiple of KVH" in SPEC.shape_error({**shape, "KVH": 3})
    assert SPEC.shape_error(shape) is None


def test_formulas():
    shape = {"B": 3, "H": 8, "KVH": 2, "D": 64, "CTX": 100, "PAGE": 16}
    lens = seq_lengths(shape)
    total = sum(lens)
    assert SPEC.flops(shape, "infer") == 4 * 8 * 64 * total
    blocks = sum(-(-n // 16) for n in lens)
    assert SPEC.bytes(shape, torch.float16, "infer") == (
        2 * (2 * 3 * 8 * 64 + 2 * 2 * 64 * total) + 4 * (3 + blocks))
    contiguous = {**shape, "PAGE": 100}
    assert SPEC.bytes(contiguous, torch.float32, "infer") == (
        4 * (2 * 3 * 8 * 64 + 2 * 2 * 64 * total) + 4 * 3)
    tol = SPEC.tolerance(torch.float16, shape, "infer")[0]
    assert tol.rel_fro < 3e-3 and tol.max_rel < 5e-3


@pytest.mark.parametrize("shape", [SPEC.presets["tiny"][0], SPEC.presets["tiny"][1]],
                         ids=["contiguous", "paged"])
def test_make_inputs_seeded_shuffled_and_poisoned(shape, device):
    a = SPEC.make_inputs(shape, torch.float16, device, 0)
    b = SPEC.make_inputs(shape, torch.float16, device, 0)
    c = SPEC.make_inputs(shape, torch.float16, device, 1)
    assert all(torch.equal(a[n].nan_to_num(7.0), b[n].nan_to_num(7.0)) for n in a)
    assert not torch.equal(a["q"], c["q"])
    lens = seq_lengths(shape)
    assert a["cache_seqlens"].tolist() == lens and a["cache_seqlens"].dtype == torch.int32
    k = a["k_cache"]
    page = block_size(shape)
    kvh, d = shape["KVH"], shape["D"]
    if page == 0:
        assert int(torch.isnan(k).sum()) == kvh * d * sum(shape["CTX"] - n for n in lens)
        return
    table = a["block_table"]
    used = [table[i, :-(-n // page)].tolist() for i, n in enumerate(lens)]
    flat = [x for row in used for x in row]
    assert len(set(flat)) == len(flat) and flat != sorted(flat), "blocks not shuffled"
    spare = sorted(set(range(k.shape[0])) - set(flat))
    assert spare and torch.isnan(k[spare]).all()
    assert set(table.flatten().tolist()) - set(flat) <= set(spare)
    # NaN exactly in the spare blocks and past each length.
    slots = k.shape[0] * page - len(spare) * page - sum(lens)
    assert int(torch.isnan(k).sum()) == kvh * d * (len(spare) * page + slots)


@pytest.mark.parametrize("impl", ["triton", "sdpa_math", "torch"])
def test_edge_preset_passes_the_checker(impl):
    op_impl = SPEC.impl(impl)
    for shape in SPEC.presets["edge"]:
        r = check.check_case(SPEC, op_impl, "infer", torch.float16, shape, 0)
        assert r.correct, (SPEC.format_shape(shape), r.error)


def test_cli_check_passes_and_refuses_an_unsupported_head_dim():
    result = CliRunner().invoke(cli, ["check", "decode_attention", "--dtype", "float16",
                                      "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["passed"] and doc["checked"] == 3 * len(SPEC.presets["tiny"])
    bad = CliRunner().invoke(cli, ["check", "decode_attention", "--shape", "1x8x2x80x16x16"])
    assert bad.exit_code == 2
    assert "head dim D=80" in bad.output and "32, 64, 128, 256" in bad.output


# ------------------------------------------------------------------------------ bad input


def _args(device, *, lens=(5, 9), h=4, kvh=2, d=64, page=16, dtype=torch.float16):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(len(lens), h, d, generator=g).to(device, dtype)
    k, v, table = _cache(list(lens), kvh, d, page, dtype, device, g)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=device)
    return dict(q=q, k_cache=k, v_cache=v, cache_seqlens=seqlens, block_table=table)


def _replace(**changes):
    def make(device):
        a = _args(device)
        for name, fn in changes.items():
            a[name] = fn(a[name], a)
        return a
    return make


BAD = {
    "q not a tensor": (_replace(q=lambda t, a: t.tolist()), TypeError, "torch.Tensor"),
    "q 2-D": (_replace(q=lambda t, a: t[0]), ValueError, "q must be 3-D"),
    "float64": (_replace(q=lambda t, a: t.double(), k_cache=lambda t, a: t.double(),
                         v_cache=lambda t, a: t.double()), TypeError,
                "supported: float16, bfloat16, float32"),
    "q/k dtypes": (_replace(k_cache=lambda t, a: t.float()), TypeError, "must match"),
    "q/v dtypes": (_replace(v_cache=lambda t, a: t.float()), TypeError, "must match"),
    "seqlens int64": (_replace(cache_seqlens=lambda t, a: t.long()), TypeError,
                      "cache_seqlens has dtype int64; it must be int32"),
    "table int64": (_replace(block_table=lambda t, a: t.long()), TypeError,
                    "block_table has dtype int64; it must be int32"),
    "seqlens 2-D": (_replace(cache_seqlens=lambda t, a: t[None]), ValueError,
                    "cache_seqlens must be 1-D"),
    "seqlens per sequence": (_replace(cache_seqlens=lambda t, a: t[:1]), ValueError,
                             "one length per sequence"),
    "head dims differ": (_replace(q=lambda t, a: torch.cat([t, t], dim=2)), ValueError,
                         "head_dim differs"),
    "k/v shapes": (_replace(v_cache=lambda t, a: t[:-1]), ValueError, "same shape"),
    "heads not a multiple": (lambda d: _args(d, h=3, kvh=2), ValueError,
                             r"n_heads \(3\) must be a multiple of n_kv_heads \(2\)"),
    "head dim 80": (lambda d: _args(d, d=80), ValueError,
                    "head_dim 80 is not supported; valid head dims: 32, 64, 128, 256"),
    "length 0": (_replace(cache_seqlens=lambda t, a: t * 0), ValueError,
                 r"must be >= 1.*cache_seqlens\[0\] = 0"),
    "negative length": (_replace(cache_seqlens=lambda t, a: t - 6), ValueError,
                        r"cache_seqlens\[0\] = -1"),
    "longer than max_seq": (lambda d: {**_args(d, page=0), "cache_seqlens": torch.tensor(
        [5, 13], dtype=torch.int32, device=d)}, ValueError,
        r"cache_seqlens\[1\] = 13 exceeds the cache's max_seq \(12\)"),
    "contiguous batch": (lambda d: {**_args(d, page=0), "q": _args(d, lens=(5, 9, 2))["q"],
                                    "cache_seqlens": torch.tensor([5, 9, 2], dtype=torch.int32,
                                                                  device=d)},
                         ValueError, "batch sizes differ: q has 3 sequences"),
    "table batch": (_replace(block_table=lambda t, a: t[:1]), ValueError,
                    "block_table 1 rows"),
    "table too short": (_replace(cache_seqlens=lambda t, a: torch.tensor(
        [5, 40], dtype=torch.int32, device=t.device)), ValueError,
        r"block_table has 2 blocks per sequence but sequence 1 needs 3 \(length 40, "
        r"block_size 16\)"),
    "entry past the pool": (_replace(block_table=lambda t, a: t.index_fill(
        1, torch.tensor([0], device=t.device), a["k_cache"].shape[0])), ValueError,
        r"block_table\[0, 0\] = \d+ is outside the pool's blocks \[0, \d+\)"),
    "negative entry": (_replace(block_table=lambda t, a: t.index_fill(
        1, torch.tensor([0], device=t.device), -1)), ValueError,
        r"block_table\[0, 0\] = -1 is outside"),
    "devices differ": (_replace(cache_seqlens=lambda t, a: torch.empty(
        2, dtype=torch.int32, device="meta")), ValueError, "same device"),
    "scale nan": (lambda d: {**_args(d), "scale": math.nan}, ValueError, "scale must be finite"),
    "scale str": (lambda d: {**_args(d), "scale": "0.1"}, TypeError, "scale must be a float"),
    "num_splits 0": (lambda d: {**_args(d), "num_splits": 0}, ValueError,
                     "num_splits must be a positive int"),
    "out shape": (lambda d: {**_args(d), "out": torch.empty(2, 4, 32, dtype=torch.float16,
                                                            device=d)},
                  ValueError, "out has shape"),
    "out dtype": (lambda d: {**_args(d), "out": torch.empty(2, 4, 64, device=d)}, TypeError,
                  "out has dtype float32 but q has float16"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_names_the_constraint(name, device):
    make, exc, match = BAD[name]
    with pytest.raises(exc, match=match):
        decode_attention(**make(device))


def test_inference_only_refuses_grad(device):
    a = _args(device)
    a["q"].requires_grad_(True)
    with pytest.raises(RuntimeError, match="inference kernel"):
        decode_attention(**a)
    with torch.no_grad():
        decode_attention(**a)


def test_supported_head_dims_match_the_op():
    assert SUPPORTED_HEAD_DIMS == (32, 64, 128, 256)
    assert {s["D"] for p in SPEC.presets.values() for s in p} <= set(SUPPORTED_HEAD_DIMS)


# ------------------------------------------------------------------------------ GPU lane


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("batch, ctx, page", [(1, 8192, 16), (64, 2048, 16), (8, 3000, 0),
                                              (3, 777, 1)])
def test_decode_attention_gpu(batch, ctx, page, dtype, gpu):
    """Llama-3-8B heads on a GPU: the split count from the SM count (several splits at
    batch 1), every dtype, both layouts, NaN past the lengths."""
    lens = [max(1, ctx - i * ctx // (2 * batch)) for i in range(batch)]
    g = torch.Generator().manual_seed(batch + ctx)
    q = torch.randn(batch, 32, 128, generator=g).to(gpu, dtype)
    k, v, table = _cache(lens, 8, 128, page, dtype, gpu, g)
    out = decode_attention(q, k, v, torch.tensor(lens, dtype=torch.int32, device=gpu),
                           block_table=table, out=_poisoned(q))
    _assert_matches(out, q, k, v, lens, table)
    if batch == 1:
        assert LAST()["num_splits"] > 1
