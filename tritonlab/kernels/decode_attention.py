"""Decode attention (flash-decoding): one new query token per sequence against that sequence's
cached keys and values, for a ragged batch, with a contiguous or a paged KV cache.

Layouts are those of flash-attn's ``flash_attn_with_kvcache`` (and vLLM's paged pool):

* q (batch, n_heads, head_dim);
* a contiguous cache k/v (batch, max_seq, n_kv_heads, head_dim), or a paged pool
  (num_blocks, block_size, n_kv_heads, head_dim) with ``block_table`` (batch,
  max_blocks_per_seq) int32 mapping logical block i of sequence b to a physical block;
* cache_seqlens (batch,) int32, each sequence's own length (>= 1);
* grouped-query attention: query head h reads kv head h // (n_heads // n_kv_heads), the
  ``repeat_interleave`` convention of torch SDPA's ``enable_gqa``.

Why split-KV. Decode attention reads every cached K and V byte once and does G = n_heads /
n_kv_heads FLOP per byte in 16-bit (4 for Llama-3-8B): it is bound by memory bandwidth,
which needs many programs in flight on every SM. One program per (sequence, kv head) gives
batch * n_kv_heads programs (8 for Llama-3-8B at batch 1, on 132 SMs), each walking the
whole context. Stage one therefore splits each sequence's context into S chunks (grid
(batch, kv-head programs, S)); each program computes a softmax-normalised partial output and
its log-sum-exp in fp32, and stage two (grid (batch, n_heads)) merges the S partials with
weights exp(lse_s - lse). See :func:`choose_splits` for how S is chosen.

Why one program per kv head and all its query heads. The G = n_heads / n_kv_heads query heads
of a GQA group read the same K/V rows; loading each tile once and multiplying it by all G
query rows with ``tl.dot`` reads every K/V byte once from DRAM. The group is padded to
BLOCK_H >= 16 rows (the smallest ``tl.dot`` M): the padded rows cost tensor-core work, which
a bandwidth-bound kernel has to spare, whereas the elementwise alternative (broadcast
q[:, None, :] * k[None, :, :] and ``tl.sum``) holds a G x BLOCK_N x head_dim product in
registers and runs on the FMA units. A group larger than BLOCK_H's cap (``_block_h``) takes
several programs, each reading the group's K/V.

Paging. Each key position p of sequence b is looked up individually: physical block
block_table[b, p // block_size], row p % block_size. A BLOCK_N tile may therefore straddle
pages, so any block_size >= 1 works and BLOCK_N is chosen for the GPU, not for the page;
the cost is a BLOCK_N-int gather of block-table entries per tile, loaded one tile ahead.

Host checks. :func:`decode_attention` copies ``cache_seqlens`` (and the used entries of
``block_table``) to the host to validate them: one device sync per call, the price of
refusing a length or block index that would read out of bounds.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from tritonlab.kernels._gemm import (
    check_no_grad,
    check_operand,
    check_same,
    dtype_name,
    precision_for,
)
from tritonlab.kernels._splitk import sm_count
from tritonlab.kernels.tuning import CompileTarget, LastConfig, TunedKernel, smem_budget

__all__ = ["decode_attention", "choose_splits", "decode_attention_targets",
           "SUPPORTED_HEAD_DIMS", "LAST"]

SUPPORTED_HEAD_DIMS = (32, 64, 128, 256)

_NEG_INF = tl.constexpr(float("-inf"))
_LOG2E = 1.4426950408889634


@triton.jit
def _decode_attn_partial_kernel(
    q_ptr, k_ptr, v_ptr, seqlens_ptr, block_table_ptr, ws_ptr, lse_ptr,
    qk_scale, SPLIT_LEN, G, HEAD_BLOCKS,
    stride_qb, stride_qh, stride_qd,
    stride_kb, stride_kt, stride_kh, stride_kd,
    stride_vb, stride_vt, stride_vh, stride_vd,
    stride_btb, stride_btn,
    stride_wb, stride_wh, stride_ws,
    stride_lb, stride_lh,
    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):
    """Stage one: attention of up to BLOCK_H query heads of one GQA group over one split of
    one sequence's context, as a normalised partial output and its log-sum-exp.

    With s_j = scale * q . k_j over the split's key positions j, the program writes
    o = sum_j exp(s_j - m) v_j / l and lse = m + log(l), l = sum_j exp(s_j - m), m = max_j s_j,
    in base 2: scores are multiplied by qk_scale = scale * log2(e) once and exp2 is used
    throughout, so lse is log2 of the split's softmax denominator. Online softmax over BLOCK_N
    tiles; scores, m, l and the output accumulate in fp32; the probabilities are cast to V's
    dtype for the second ``tl.dot`` (as flash attention does).

    q_ptr: q (batch, n_heads, HEAD_DIM), strides (stride_qb, stride_qh, stride_qd).
    k_ptr, v_ptr: the cache, (batch, max_seq, n_kv_heads, HEAD_DIM) when PAGE_SIZE == 0, else
    the pool (num_blocks, PAGE_SIZE, n_kv_heads, HEAD_DIM); strides (stride_kb, stride_kt,
    stride_kh, stride_kd) and likewise for V. seqlens_ptr: (batch,) int32, every length >= 1.
    block_table_ptr: (batch, max_blocks) int32, strides (stride_btb, stride_btn) (PAGE_SIZE > 0
    only); the entries of the blocks a sequence uses must index the pool (checked on the
    host); others are never read.
    ws_ptr: fp32 workspace (batch, n_heads, S, HEAD_DIM), strides (stride_wb, stride_wh,
    stride_ws, 1): the partial output o. lse_ptr: fp32 (batch, n_heads, S), strides
    (stride_lb, stride_lh, 1).
    SPLIT_LEN: key positions per split (a multiple of BLOCK_N); split s covers
    [s * SPLIT_LEN, min(len, (s + 1) * SPLIT_LEN)). A split that starts at or past the
    sequence's end writes o = 0 and lse = -inf: the merge gives it weight 0.
    G: query heads per kv head; query head h = kv_head * G + g reads kv head h // G.
    HEAD_BLOCKS: cdiv(G, BLOCK_H), programs per kv head.
    Grid: (batch, n_kv_heads * HEAD_BLOCKS, S). Addresses are computed in int64 (a KV pool
    easily exceeds 2^31 elements).
    """
    b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1)
    split = tl.program_id(2)
    kvh = (pid_h // HEAD_BLOCKS).to(tl.int64)
    g = (pid_h % HEAD_BLOCKS) * BLOCK_H + tl.arange(0, BLOCK_H)
    row_ok = g < G
    heads = kvh * G + g.to(tl.int64)
    offs_d = tl.arange(0, HEAD_DIM).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_N)

    seqlen = tl.load(seqlens_ptr + b)
    start = split * SPLIT_LEN
    end = tl.minimum(seqlen, start + SPLIT_LEN)

    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :] * stride_qd,
                mask=row_ok[:, None], other=0.0)
    k_cols = k_ptr + kvh * stride_kh + offs_d[None, :] * stride_kd
    v_cols = v_ptr + kvh * stride_vh + offs_d[None, :] * stride_vd

    m_i = tl.full((BLOCK_H,), _NEG_INF, tl.float32)
    l_i = tl.zeros((BLOCK_H,), tl.float32)
    acc = tl.zeros((BLOCK_H, HEAD_DIM), tl.float32)
    # The block indices of a tile are loaded one iteration ahead, so that the K and V
    # addresses depend on no load of their own iteration: then Triton's pipeliner keeps
    # num_stages - 1 K and V tiles in flight (with the gather in the same iteration it kept
    # one buffer and waited for every tile; seen in the TTGIR). Masked loads: a tile's tail,
    # and the tile after the last, may run past the blocks the sequence owns.
    if PAGE_SIZE > 0:
        pos = start + offs_n
        block = tl.load(block_table_ptr + b * stride_btb + (pos // PAGE_SIZE) * stride_btn,
                        mask=pos < end, other=0).to(tl.int64)
    for start_n in range(start, end, BLOCK_N):
        pos = start_n + offs_n
        col_ok = pos < end
        if PAGE_SIZE > 0:
            row = (pos % PAGE_SIZE).to(tl.int64)
            k_rows = block * stride_kb + row * stride_kt
            v_rows = block * stride_vb + row * stride_vt
            nxt = pos + BLOCK_N
            block = tl.load(block_table_ptr + b * stride_btb + (nxt // PAGE_SIZE) * stride_btn,
                            mask=nxt < end, other=0).to(tl.int64)
        else:
            k_rows = b * stride_kb + pos.to(tl.int64) * stride_kt
            v_rows = b * stride_vb + pos.to(tl.int64) * stride_vt
        k = tl.load(k_cols + k_rows[:, None], mask=col_ok[:, None], other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)
        qk = tl.where(col_ok[None, :], qk * qk_scale, _NEG_INF)
        # Every tile holds at least one position < end, so m_new is finite and the masked
        # columns get exp2(-inf) = 0.
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(qk - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_cols + v_rows[:, None], mask=col_ok[:, None], other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=INPUT_PRECISION)
        m_i = m_new

    # Once a split has seen a key, l_i >= 1 (the running maximum contributes exp2(0) = 1);
    # an empty split has l_i = 0 and m_i = -inf. Clamping l_i to 1 changes nothing in the
    # first case and gives the empty split o = 0 and lse = -inf (its marker: weight 0 in the
    # merge) without computing 0 / 0.
    l_i = tl.maximum(l_i, 1.0)
    ws_rows = ws_ptr + b * stride_wb + heads * stride_wh + split * stride_ws
    tl.store(ws_rows[:, None] + offs_d[None, :], acc / l_i[:, None], mask=row_ok[:, None])
    tl.store(lse_ptr + b * stride_lb + heads * stride_lh + split, m_i + tl.log2(l_i),
             mask=row_ok)


@triton.jit
def _decode_attn_merge_kernel(
    ws_ptr, lse_ptr, out_ptr, S,
    stride_wb, stride_wh, stride_ws,
    stride_lb, stride_lh,
    stride_ob, stride_oh, stride_od,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Stage two: out = sum_s w_s o_s with w_s = 2^(lse_s - M) / sum_t 2^(lse_t - M),
    M = max_s lse_s, for one (sequence, query head): the exact softmax over the whole
    context, since each o_s is normalised by its own denominator 2^lse_s.

    ws_ptr: fp32 partial outputs (batch, n_heads, S, HEAD_DIM), strides (stride_wb,
    stride_wh, stride_ws, 1). lse_ptr: fp32 (batch, n_heads, S), base-2 log-sum-exps, strides
    (stride_lb, stride_lh, 1); -inf marks an empty split (its partial is 0), whose weight is
    then 0. Split 0 is never empty (every length is >= 1), so M is finite.
    out_ptr: (batch, n_heads, HEAD_DIM), strides (stride_ob, stride_oh, stride_od), written
    once in its dtype. Grid: (batch, n_heads). Splits are read BLOCK_S at a time; sums in
    fp32, in split order (deterministic).
    """
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    lse_row = lse_ptr + b * stride_lb + h * stride_lh
    ws_row = ws_ptr + b * stride_wb + h * stride_wh

    m_vec = tl.full((BLOCK_S,), _NEG_INF, tl.float32)
    for c in range(0, S, BLOCK_S):
        lse = tl.load(lse_row + c + offs_s, mask=c + offs_s < S, other=_NEG_INF)
        m_vec = tl.maximum(m_vec, lse)
    m = tl.max(m_vec, 0)

    l_vec = tl.zeros((BLOCK_S,), tl.float32)
    acc = tl.zeros((HEAD_DIM,), tl.float32)
    for c in range(0, S, BLOCK_S):
        lse = tl.load(lse_row + c + offs_s, mask=c + offs_s < S, other=_NEG_INF)
        w = tl.exp2(lse - m)
        part = tl.load(ws_row + (c + offs_s)[:, None] * stride_ws + offs_d[None, :],
                       mask=(c + offs_s < S)[:, None], other=0.0)
        acc += tl.sum(w[:, None] * part, 0)
        l_vec += w
    out = acc / tl.sum(l_vec, 0)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_d * stride_od,
             out.to(out_ptr.dtype.element_ty))


# --------------------------------------------------------------------------------- launch

# The largest K (or V) tile BLOCK_N * head_dim * itemsize that _block_n allows.
_MAX_TILE_BYTES = 16 * 1024

# Programs per SM the split count aims for: a few, so that ragged lengths even out and each
# SM has loads in flight from more than one program.
_WAVES = 4
# Under the interpreter: a small fixed split, so the workspace and the merge run in tests at
# the cost of few programs.
_INTERPRETER_SPLITS = 3
_INTERPRETER_BLOCK_N = 32
# Splits the merge reads per step.
_MERGE_BLOCK_S = 16
# Largest query-head block, as BLOCK_H * head_dim: 32 fp32 accumulator registers a thread at
# 4 warps, and a q tile (kept in shared memory for tl.dot) of at most 8 KB in 16-bit.
_MAX_ACC = 4096
# Shared memory besides the K and V stages: q and the probabilities, in the worst case.
_SMEM_OTHER = 16 * 1024


def _stage_configs(capability: tuple[int, int], dtype: torch.dtype) -> list[triton.Config]:
    """Autotune candidates for stage one: (num_warps, num_stages) only, because BLOCK_N sets
    the split grain and is chosen from the head dim (:func:`_block_n`). Bandwidth needs
    tiles in flight, hence 2-4 stages; configs whose K and V buffers (num_stages - 1 of
    each, at most ``_MAX_TILE_BYTES``, plus ``_SMEM_OTHER``) exceed the
    architecture's shared memory are dropped. fp32 dots run on the FMA units with their
    operands in registers: with 4 warps they spill on sm_90a (ptxas), so fp32 gets 8. The
    first entry is the default."""
    budget = smem_budget(capability)
    if dtype == torch.float32:
        candidates = [(8, 3), (8, 2), (8, 4)]
    else:
        candidates = [(4, 3), (4, 2), (4, 4), (8, 3)]
    return [triton.Config({}, num_warps=w, num_stages=s) for w, s in candidates
            if (s - 1) * 2 * _MAX_TILE_BYTES + _SMEM_OTHER <= budget]


_STAGE_KEY = ["SPLIT_LEN", "G", "PAGE_SIZE", "HEAD_DIM", "BLOCK_H", "BLOCK_N"]
_STAGE = TunedKernel(_decode_attn_partial_kernel, key=_STAGE_KEY, configs=_stage_configs,
                     interpreter_config=triton.Config({}, num_warps=4, num_stages=1))
_MERGE_WARPS = 4


def _block_n(head_dim: int, dtype: torch.dtype, on_gpu: bool) -> int:
    """Key positions per tile: the largest of 64, 32, 16 whose K tile stays within
    ``_MAX_TILE_BYTES`` (64 in 16-bit up to head dim 128), so that the pipeline stages of K
    and V fit shared memory."""
    if not on_gpu:
        return _INTERPRETER_BLOCK_N
    return next((n for n in (64, 32) if n * head_dim * dtype.itemsize <= _MAX_TILE_BYTES), 16)


def _block_h(group: int, head_dim: int, dtype: torch.dtype) -> int:
    """Query rows per program: the GQA group padded to a power of two >= 16 (tl.dot's
    smallest M), at most ``_MAX_ACC / head_dim`` rows (half that in fp32, whose dot operands
    also live in registers); a larger group takes several programs."""
    cap = _MAX_ACC // head_dim // (2 if dtype == torch.float32 else 1)
    return min(max(16, triton.next_power_of_2(group)), max(16, cap))


def choose_splits(programs: int, max_len: int, block_n: int, sms: int, *, group: int,
                  head_dim: int, itemsize: int) -> tuple[int, int]:
    """(S, SPLIT_LEN): how stage one splits the longest context ``max_len`` on a GPU with
    ``sms`` SMs, given ``programs`` = batch * n_kv_heads * head blocks per kv head.

    S aims for ``_WAVES`` programs per SM: cdiv(_WAVES * sms, programs), so a large batch
    gets S = 1. Two caps: at most one split per BLOCK_N tile of ``max_len``, and the fp32
    partials (8 (head_dim + 1) bytes per query head and split: written, then read by the
    merge) stay within 1/8 of the K and V bytes of the longest sequence
    (2 max_len head_dim itemsize per kv head). SPLIT_LEN is then a whole number of tiles,
    and S = cdiv(max_len, SPLIT_LEN); shorter sequences leave their last splits empty.
    """
    tiles = triton.cdiv(max_len, block_n)
    traffic_cap = (2 * max_len * head_dim * itemsize) // (8 * 8 * group * (head_dim + 1))
    splits = max(1, min(triton.cdiv(_WAVES * sms, programs), tiles, traffic_cap))
    return _split(max_len, splits, block_n)


def _split(max_len: int, splits: int, block_n: int) -> tuple[int, int]:
    split_len = triton.cdiv(triton.cdiv(max_len, block_n), splits) * block_n
    return triton.cdiv(max_len, split_len), split_len


def decode_attention_targets(dtype: torch.dtype, *, batch: int, n_heads: int, n_kv_heads: int,
                             head_dim: int, context: int, block_size: int, sms: int = 132,
                             impls: tuple[str, ...] | None = None) -> list[CompileTarget]:
    """``tritonlab inspect`` targets: stage one and the merge as :func:`decode_attention`
    launches them for ``batch`` sequences of ``context`` tokens on a GPU with ``sms`` SMs (an
    H100's 132 by default), q and out contiguous, the cache a contiguous pool of
    ``block_size`` blocks (a contiguous (batch, context, ...) cache when block_size is 0)."""
    group = n_heads // n_kv_heads
    block_n = _block_n(head_dim, dtype, on_gpu=True)
    block_h = _block_h(group, head_dim, dtype)
    head_blocks = triton.cdiv(group, block_h)
    n_splits, split_len = choose_splits(batch * n_kv_heads * head_blocks, context, block_n, sms,
                                        group=group, head_dim=head_dim, itemsize=dtype.itemsize)
    rows = block_size if block_size else context
    token = n_kv_heads * head_dim
    cache_strides = dict(stride_kb=rows * token, stride_kt=token, stride_kh=head_dim,
                         stride_kd=1)
    ws = dict(stride_wb=n_heads * n_splits * head_dim, stride_wh=n_splits * head_dim,
              stride_ws=head_dim, stride_lb=n_heads * n_splits, stride_lh=n_splits)
    stage = dict(
        qk_scale=head_dim**-0.5 * _LOG2E, SPLIT_LEN=split_len, G=group, HEAD_BLOCKS=head_blocks,
        stride_qb=n_heads * head_dim, stride_qh=head_dim, stride_qd=1,
        **cache_strides, **{k.replace("_k", "_v"): v for k, v in cache_strides.items()},
        stride_btb=triton.cdiv(context, block_size) if block_size else 0, stride_btn=1,
        **ws,
        seqlens_ptr=torch.int32, block_table_ptr=torch.int32 if block_size else None,
        ws_ptr=torch.float32, lse_ptr=torch.float32,
        PAGE_SIZE=block_size, HEAD_DIM=head_dim, BLOCK_H=block_h, BLOCK_N=block_n,
        INPUT_PRECISION=precision_for(dtype, None),
    )
    merge = dict(
        S=n_splits, **ws, stride_ob=n_heads * head_dim, stride_oh=head_dim, stride_od=1,
        ws_ptr=torch.float32, lse_ptr=torch.float32,
        HEAD_DIM=head_dim, BLOCK_S=_MERGE_BLOCK_S,
    )
    return [_STAGE.compile_target("split_kv", dtype, stage, impls=impls),
            CompileTarget("merge", _decode_attn_merge_kernel, dtype, merge,
                          configs=[{"num_warps": _MERGE_WARPS}], impls=impls)]


LAST = LastConfig()


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     cache_seqlens: torch.Tensor, *, block_table: torch.Tensor | None = None,
                     scale: float | None = None, num_splits: int | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(scale q K^T) V for one query token per sequence over its cached keys and values.

    q: (batch, n_heads, head_dim), any strides. k_cache, v_cache: the same shape, any strides:
    (batch, max_seq, n_kv_heads, head_dim) without ``block_table``, else a paged pool
    (num_blocks, block_size, n_kv_heads, head_dim) with block_table (batch,
    max_blocks_per_seq) int32, whose entry [b, i] is the pool block holding positions
    [i * block_size, (i + 1) * block_size) of sequence b (any block_size >= 1).
    cache_seqlens: (batch,) int32, sequence b attends to positions [0, cache_seqlens[b]),
    each length >= 1. n_heads must be a multiple of n_kv_heads; query head h reads kv head
    h // (n_heads // n_kv_heads). head_dim: 32, 64, 128 or 256. q, k_cache, v_cache share one
    dtype (float16, bfloat16 or float32) and one device with the int32 tensors.
    scale: default head_dim ** -0.5. num_splits: the most context splits to use (rounded to
    whole tiles, so fewer may run); None chooses from the SM count (:func:`choose_splits`),
    and 3 under the interpreter. out: (batch, n_heads, head_dim) of q's dtype, any strides,
    or None to allocate. Returns out.

    Scores, softmax statistics and accumulators are fp32. Inference only. Bad input raises
    TypeError or ValueError naming the constraint; validating the lengths and block indices
    copies cache_seqlens and the used block-table entries to the host (one sync per call).
    The config of the call, with its split count, is kept in ``LAST``.
    """
    batch, n_heads, n_kv_heads, head_dim, lengths = _check(q, k_cache, v_cache, cache_seqlens,
                                                           block_table)
    scale = _check_scale(scale, head_dim)
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int)
                                   or num_splits < 1):
        raise ValueError(f"num_splits must be a positive int or None, got {num_splits!r}")
    out = _prepare_out(out, q)
    if batch == 0:
        return out
    on_gpu = q.device.type == "cuda"
    group = n_heads // n_kv_heads
    block_n = _block_n(head_dim, q.dtype, on_gpu)
    block_h = _block_h(group, head_dim, q.dtype)
    head_blocks = triton.cdiv(group, block_h)
    max_len = max(lengths)
    tiles = triton.cdiv(max_len, block_n)
    if num_splits is not None:
        n_splits, split_len = _split(max_len, min(num_splits, tiles), block_n)
    elif on_gpu:
        index = q.device.index if q.device.index is not None else torch.cuda.current_device()
        n_splits, split_len = choose_splits(batch * n_kv_heads * head_blocks, max_len, block_n,
                                            sm_count(index), group=group, head_dim=head_dim,
                                            itemsize=q.dtype.itemsize)
    else:
        n_splits, split_len = _split(max_len, min(_INTERPRETER_SPLITS, tiles), block_n)
    page = k_cache.shape[1] if block_table is not None else 0
    bt_strides = block_table.stride() if block_table is not None else (0, 0)
    ws = torch.empty((batch, n_heads, n_splits, head_dim), dtype=torch.float32, device=q.device)
    lse = torch.empty((batch, n_heads, n_splits), dtype=torch.float32, device=q.device)
    precision = precision_for(q.dtype, None)
    _STAGE.launch(
        lambda meta: (batch, n_kv_heads * head_blocks, n_splits), q.dtype,
        q, k_cache, v_cache, cache_seqlens, block_table, ws, lse,
        scale * _LOG2E, split_len, group, head_blocks,
        *q.stride(), *k_cache.stride(), *v_cache.stride(), *bt_strides,
        ws.stride(0), ws.stride(1), ws.stride(2), lse.stride(0), lse.stride(1),
        PAGE_SIZE=page, HEAD_DIM=head_dim, BLOCK_H=block_h, BLOCK_N=block_n,
        INPUT_PRECISION=precision,
    )
    _decode_attn_merge_kernel[(batch, n_heads)](
        ws, lse, out, n_splits,
        ws.stride(0), ws.stride(1), ws.stride(2), lse.stride(0), lse.stride(1),
        *out.stride(),
        HEAD_DIM=head_dim, BLOCK_S=_MERGE_BLOCK_S, num_warps=_MERGE_WARPS,
    )
    LAST.value = {"path": "split_kv", "num_splits": n_splits, "split_len": split_len,
                  "BLOCK_N": block_n, "BLOCK_H": block_h, "paged": page > 0,
                  **(_STAGE.last_config or {})}
    return out


# ------------------------------------------------------------------------------- checks

def _check(q, k_cache, v_cache, cache_seqlens, block_table):
    """Validate the operands; returns (batch, n_heads, n_kv_heads, head_dim, lengths)."""
    check_operand("q", q, 3)
    check_operand("k_cache", k_cache, 4)
    check_operand("v_cache", v_cache, 4)
    _check_index("cache_seqlens", cache_seqlens, 1)
    if block_table is not None:
        _check_index("block_table", block_table, 2)
    check_same(q=q, k_cache=k_cache, v_cache=v_cache)
    for name, t in (("cache_seqlens", cache_seqlens), ("block_table", block_table)):
        if t is not None and t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; all tensors "
                             f"must be on the same device")
    check_no_grad("decode_attention", q=q, k_cache=k_cache, v_cache=v_cache)

    batch, n_heads, head_dim = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} "
                         f"must have the same shape")
    n_rows, rows, n_kv_heads, kv_dim = k_cache.shape
    if kv_dim != head_dim:
        raise ValueError(f"head_dim differs: q has {head_dim}, k_cache/v_cache have {kv_dim}")
    if head_dim not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head_dim {head_dim} is not supported; valid head dims: "
                         f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
    if n_kv_heads < 1 or n_heads < 1:
        raise ValueError(f"n_heads ({n_heads}) and n_kv_heads ({n_kv_heads}) must be >= 1")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
    if cache_seqlens.shape[0] != batch:
        raise ValueError(f"cache_seqlens has shape {tuple(cache_seqlens.shape)}; expected "
                         f"({batch},), one length per sequence of q")
    lengths = cache_seqlens.tolist()
    short = [(i, n) for i, n in enumerate(lengths) if n < 1]
    if short:
        raise ValueError(f"cache_seqlens must be >= 1 (a decode step attends to at least one "
                         f"position): cache_seqlens[{short[0][0]}] = {short[0][1]}")
    if block_table is None:
        if n_rows != batch:
            raise ValueError(f"batch sizes differ: q has {batch} sequences, k_cache/v_cache "
                             f"{n_rows} (contiguous cache: (batch, max_seq, n_kv_heads, "
                             f"head_dim))")
        long = [(i, n) for i, n in enumerate(lengths) if n > rows]
        if long:
            raise ValueError(f"cache_seqlens[{long[0][0]}] = {long[0][1]} exceeds the cache's "
                             f"max_seq ({rows})")
    else:
        _check_block_table(block_table, lengths, batch, n_rows, rows)
    return batch, n_heads, n_kv_heads, head_dim, lengths


def _check_index(name: str, t: object, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int32:
        raise TypeError(f"{name} has dtype {dtype_name(t.dtype)}; it must be int32")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")


def _check_block_table(block_table: torch.Tensor, lengths: list[int], batch: int,
                       num_blocks: int, block_size: int) -> None:
    """Every block a sequence uses has a table entry, and that entry indexes the pool."""
    if block_table.shape[0] != batch:
        raise ValueError(f"batch sizes differ: q has {batch} sequences, block_table "
                         f"{block_table.shape[0]} rows")
    if block_size < 1:
        raise ValueError(f"the paged pool's block_size (dim 1) must be >= 1, got {block_size}")
    width = block_table.shape[1]
    needed = [-(-n // block_size) for n in lengths]
    over = [i for i, n in enumerate(needed) if n > width]
    if over:
        i = over[0]
        raise ValueError(f"block_table has {width} blocks per sequence but sequence {i} needs "
                         f"{needed[i]} (length {lengths[i]}, block_size {block_size})")
    used = torch.arange(width)[None, :] < torch.tensor(needed)[:, None]
    table = block_table.cpu()
    bad = used & ((table < 0) | (table >= num_blocks))
    if bad.any():
        i, j = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"block_table[{i}, {j}] = {int(table[i, j])} is outside the pool's "
                         f"blocks [0, {num_blocks})")


def _check_scale(scale: object, head_dim: int) -> float:
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return float(scale)


def _prepare_out(out: torch.Tensor | None, q: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty(q.shape, dtype=q.dtype, device=q.device)
    check_operand("out", out, 3)
    check_same(q=q, out=out)
    if out.shape != q.shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; expected {tuple(q.shape)}")
    return out
