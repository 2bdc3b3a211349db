"""attention: softmax(Q K^T * scale + mask) V, the flash-attention forward and backward.

Layout (batch, heads, seq, head_dim), any strides. Grouped-query attention: K and V have
``n_kv_heads`` heads and query head h reads KV head h // (n_heads // n_kv_heads) (the
``repeat_interleave`` convention of torch's ``enable_gqa``); multi-query is n_kv_heads = 1.
Queries and keys may have different lengths: with ``causal=True`` the queries are aligned to
the END of the keys, so query i sees keys j <= i + (seq_k - seq_q), as in chunked prefill
where a prompt's chunk attends to the cached prefix and to itself.

Forward (``_attn_fwd_kernel``): one program per (query block, batch * head) walks the key
blocks with an online softmax in base 2 (scores pre-multiplied by scale * log2(e), so each
exponential is one ``exp2``), accumulates O in fp32 and saves only O and the row
log-sum-exp (base 2, fp32). Key blocks that no row of the query block masks run without any
mask arithmetic; only the diagonal blocks of a causal mask and the last partial block pay
for it.

Backward, three kernels and no S x S matrix in memory:

1. ``_attn_bwd_delta_kernel``: delta_i = rowsum(dO_i * O_i) (fp32), the softmax-Jacobian
   term of dS = P * (dP - delta).
2. ``_attn_bwd_dkdv_kernel``: one program per (key block, batch * KV head) holds its K and
   V tile and dK, dV accumulators, and walks the query blocks of every query head of its
   group, recomputing P = exp2(S - lse) from the saved log-sum-exp: dV += P^T dO,
   dP^T = V dO^T, dK += dS^T Q. Each KV head's gradient is summed over its group in
   registers, so GQA needs no atomics and no per-query-head buffer.
3. ``_attn_bwd_dq_kernel``: one program per (query block, batch * head) walks the key blocks
   as the forward does: dQ += dS K.

So the backward runs seven block GEMMs per (query, key) tile pair where the algorithm needs
five: S and dP are computed once for dK/dV and again for dQ, which keeps every gradient
written exactly once by one program (deterministic, no atomics). Sequence lengths need not
be multiples of a block (the Triton tutorial's backward requires multiples of 128): rows of
Q and dO past the end load as zeros and lse/delta as zeros, which makes their P^T dO,
dS^T Q contributions exactly zero without a mask; keys past the end are masked where they
could reach a stored result.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from tritonlab.kernels._gemm import INT32_MAX, check_operand, check_same, max_offset
from tritonlab.kernels.tuning import LastConfig, TunedKernel, hopper_class

__all__ = ["attention", "HEAD_DIMS", "KERNELS", "LAST"]

HEAD_DIMS = (32, 64, 128, 256)
_LOG2E = math.log2(math.e)


@triton.jit
def _attn_fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd, stride_vn,
                    stride_vd, lo, hi, offs_m, offs_n, offs_d, SEQ_K, causal_shift, qk_scale,
                    MASKED: tl.constexpr, CAUSAL: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """Fold key blocks [lo, hi) into the running softmax state of one query block.

    acc (BLOCK_M, HEAD_DIM) fp32: sum_j exp2(s_ij - m_i) v_j so far. l_i, m_i (BLOCK_M,)
    fp32: the running sum of exp2(s_ij - m_i) and the running row max of s (base-2 units).
    q (BLOCK_M, HEAD_DIM): the query tile. k_base/v_base: K and V of this batch and KV head.
    MASKED: mask keys past SEQ_K and (CAUSAL) keys j > i + causal_shift; without it every
    key of [lo, hi) is assumed visible to every row. Returns the updated (acc, l_i, m_i).
    The first block folded always contains key 0, which every row sees, so m_i is finite
    after it and exp2(m_i - m_new) never meets -inf - -inf.
    """
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            in_k = cols < SEQ_K
            kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                         mask=in_k[None, :], other=0.0)
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd,
                        mask=in_k[:, None], other=0.0)
        else:
            kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd)
            v = tl.load(v_base + cols[:, None] * stride_vn + offs_d[None, :] * stride_vd)
        s = tl.dot(q, kt, input_precision=INPUT_PRECISION) * qk_scale
        if MASKED:
            keep = cols[None, :] < SEQ_K
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + causal_shift)
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _query_block_heads(bh, H, GROUP):
    """(batch, query head, KV head) of program row ``bh`` = batch * H + head, as int64 so
    that index * stride cannot overflow."""
    b = (bh // H).to(tl.int64)
    h = bh % H
    return b, h.to(tl.int64), (h // GROUP).to(tl.int64)


@triton.jit
def _visible_keys(start_m, SEQ_Q, SEQ_K, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr):
    """The key range of the query block [start_m, start_m + BLOCK_M) as (full_end, hi):
    the key blocks [0, full_end) are seen by every row (they need no mask), and keys up to
    hi (exclusive) by some row. Causal: row i sees keys j <= i + SEQ_K - SEQ_Q, so the
    first row sees up to start_m + shift and the last up to start_m + BLOCK_M - 1 + shift;
    otherwise every key, the last partial block masked for the keys past SEQ_K."""
    if CAUSAL:
        shift = SEQ_K - SEQ_Q
        full_end = (tl.minimum(start_m + shift + 1, SEQ_K) // BLOCK_N) * BLOCK_N
        hi = tl.minimum(start_m + BLOCK_M + shift, SEQ_K)
    else:
        full_end = (SEQ_K // BLOCK_N) * BLOCK_N
        hi = SEQ_K
    return full_end, hi


@triton.jit
def _attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, GROUP, SEQ_Q, SEQ_K, qk_scale,
    CAUSAL: tl.constexpr, STORE_LSE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """O = softmax(Q K^T * scale + mask) V for one BLOCK_M block of queries of one head.

    q_ptr: Q (B, H, SEQ_Q, HEAD_DIM), strides (stride_qb, stride_qh, stride_qm, stride_qd).
    k_ptr, v_ptr: K, V (B, H // GROUP, SEQ_K, HEAD_DIM), their strides likewise.
    o_ptr: O (B, H, SEQ_Q, HEAD_DIM), written once, cast from fp32.
    lse_ptr: (B * H, SEQ_Q) fp32, contiguous: the row log-sum-exp in base 2,
      m_i + log2(l_i) of the scores s = q.k * scale * log2(e); written when STORE_LSE.
    GROUP: query heads per KV head. qk_scale: scale * log2(e).
    CAUSAL: query i sees keys j <= i + SEQ_K - SEQ_Q (queries aligned to the end of the
      keys; the launcher requires SEQ_Q <= SEQ_K, so every row sees key 0).
    INPUT_PRECISION: tl.dot precision for fp32 operands ("ieee"); ignored for 16-bit.
    Grid: (cdiv(SEQ_Q, BLOCK_M), B * H), query blocks in reverse order so that, under a
    causal mask, the longest rows start first and the short ones fill the tail.
    Accumulates in fp32; P is rounded to V's dtype for the P V product, as FlashAttention
    does.
    """
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    bh = tl.program_id(1)
    b, h, kvh = _query_block_heads(bh, H, GROUP)
    q_base = q_ptr + b * stride_qb + h * stride_qh
    k_base = k_ptr + b * stride_kb + kvh * stride_kh
    v_base = v_ptr + b * stride_vb + kvh * stride_vh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < SEQ_Q
    q = tl.load(q_base + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
                mask=in_q[:, None], other=0.0)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    causal_shift = SEQ_K - SEQ_Q
    full_end, hi = _visible_keys(start_m, SEQ_Q, SEQ_K, CAUSAL, BLOCK_M, BLOCK_N)
    acc, l_i, m_i = _attn_fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd,
                                    stride_vn, stride_vd, 0, full_end, offs_m, offs_n, offs_d,
                                    SEQ_K, causal_shift, qk_scale, False, CAUSAL,
                                    INPUT_PRECISION, BLOCK_N)
    acc, l_i, m_i = _attn_fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_kd,
                                    stride_vn, stride_vd, full_end, hi, offs_m, offs_n, offs_d,
                                    SEQ_K, causal_shift, qk_scale, True, CAUSAL,
                                    INPUT_PRECISION, BLOCK_N)

    o = acc / l_i[:, None]
    o_base = o_ptr + b * stride_ob + h * stride_oh
    tl.store(o_base + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             o.to(o_ptr.dtype.element_ty), mask=in_q[:, None])
    if STORE_LSE:
        tl.store(lse_ptr + bh.to(tl.int64) * SEQ_Q + offs_m, m_i + tl.log2(l_i), mask=in_q)


@triton.jit
def _attn_bwd_delta_kernel(
    o_ptr, do_ptr, delta_ptr,
    stride_ob, stride_oh, stride_om, stride_od,
    stride_dob, stride_doh, stride_dom, stride_dod,
    H, SEQ_Q,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta[b * H + h, i] = sum_d dO[b, h, i, d] * O[b, h, i, d], in fp32.

    o_ptr, do_ptr: O and dO (B, H, SEQ_Q, HEAD_DIM), any strides.
    delta_ptr: (B * H, SEQ_Q) fp32, contiguous.
    Grid: (cdiv(SEQ_Q, BLOCK_M), B * H).
    """
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < SEQ_Q
    o = tl.load(o_ptr + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om
                + offs_d[None, :] * stride_od, mask=in_q[:, None], other=0.0)
    do = tl.load(do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom
                 + offs_d[None, :] * stride_dod, mask=in_q[:, None], other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(delta_ptr + bh.to(tl.int64) * SEQ_Q + offs_m, delta, mask=in_q)


@triton.jit
def _attn_bwd_dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qm,
                         stride_qd, stride_dom, stride_dod, lo, hi, offs_n, offs_d, SEQ_Q,
                         causal_shift, qk_scale, BLOCK_M: tl.constexpr, MASKED: tl.constexpr,
                         INPUT_PRECISION: tl.constexpr):
    """Add the query blocks [lo, hi) of one query head to the dK, dV of one key block.

    dk, dv (BLOCK_N, HEAD_DIM) fp32 accumulators; k, v (BLOCK_N, HEAD_DIM) the key block.
    q_base/do_base: Q and dO of this (batch, query head); lse_base/delta_base: its rows of
    the saved base-2 log-sum-exp and of delta. Works on transposed tiles (keys as rows), so
    P^T = exp2(K Q^T * qk_scale - lse) comes out in the layout of dV += P^T dO.
    MASKED: zero P^T where key j > query i + causal_shift (the causal diagonal).
    Rows of Q and dO past SEQ_Q load as zeros and lse/delta as zeros: their P^T entries are
    exp2(0) = 1 but multiply zero dO and zero (dP^T - delta) rows, so they add nothing.
    """
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        in_q = offs_m < SEQ_Q
        qt = tl.load(q_base + offs_m[None, :] * stride_qm + offs_d[:, None] * stride_qd,
                     mask=in_q[None, :], other=0.0)
        do = tl.load(do_base + offs_m[:, None] * stride_dom + offs_d[None, :] * stride_dod,
                     mask=in_q[:, None], other=0.0)
        lse = tl.load(lse_base + offs_m, mask=in_q, other=0.0)
        delta = tl.load(delta_base + offs_m, mask=in_q, other=0.0)
        pt = tl.exp2(tl.dot(k, qt, input_precision=INPUT_PRECISION) * qk_scale - lse[None, :])
        if MASKED:
            pt = tl.where(offs_m[None, :] + causal_shift >= offs_n[:, None], pt, 0.0)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=INPUT_PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=INPUT_PRECISION)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dkb, stride_dkh, stride_dkn, stride_dkd,
    stride_dvb, stride_dvh, stride_dvn, stride_dvd,
    H, GROUP, SEQ_Q, SEQ_K, qk_scale, sm_scale,
    CAUSAL: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dK = scale * dS^T Q and dV = P^T dO for one BLOCK_N block of keys of one KV head,
    summed over the GROUP query heads that read it.

    q_ptr, do_ptr: Q and dO (B, H, SEQ_Q, HEAD_DIM). k_ptr, v_ptr: K, V
    (B, H // GROUP, SEQ_K, HEAD_DIM). lse_ptr, delta_ptr: (B * H, SEQ_Q) fp32, contiguous:
    the forward's base-2 log-sum-exp and rowsum(dO * O). dk_ptr, dv_ptr: dK, dV shaped like
    K and V, each element written once. Any strides.
    qk_scale: scale * log2(e); sm_scale: scale (dS is in natural units).
    CAUSAL: as in the forward (query i sees keys j <= i + SEQ_K - SEQ_Q): query blocks
    before the first that sees this key block are skipped, those crossing the diagonal are
    masked, the rest run unmasked.
    Grid: (cdiv(SEQ_K, BLOCK_N), B * (H // GROUP)). Accumulates in fp32.
    """
    start_n = tl.program_id(0) * BLOCK_N
    bkv = tl.program_id(1)
    n_kv = H // GROUP
    b = (bkv // n_kv).to(tl.int64)
    kvh = (bkv % n_kv).to(tl.int64)
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    in_k = offs_n < SEQ_K
    k = tl.load(k_ptr + b * stride_kb + kvh * stride_kh + offs_n[:, None] * stride_kn
                + offs_d[None, :] * stride_kd, mask=in_k[:, None], other=0.0)
    v = tl.load(v_ptr + b * stride_vb + kvh * stride_vh + offs_n[:, None] * stride_vn
                + offs_d[None, :] * stride_vd, mask=in_k[:, None], other=0.0)
    dk = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)
    dv = tl.zeros((BLOCK_N, HEAD_DIM), dtype=tl.float32)

    causal_shift = SEQ_K - SEQ_Q
    if CAUSAL:
        # Query i sees key j iff i >= j - shift: the first query block that sees this key
        # block, and the first that sees all of it (start_m >= start_n + BLOCK_N - 1 - shift).
        lo = (tl.maximum(start_n - causal_shift, 0) // BLOCK_M) * BLOCK_M
        mid = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - causal_shift, 0), BLOCK_M) * BLOCK_M
        mid = tl.minimum(mid, SEQ_Q)
    else:
        lo = 0
        mid = 0
    for g in range(0, GROUP):
        h = kvh * GROUP + g
        bh = b * H + h
        q_base = q_ptr + b * stride_qb + h * stride_qh
        do_base = do_ptr + b * stride_dob + h * stride_doh
        lse_base = lse_ptr + bh * SEQ_Q
        delta_base = delta_ptr + bh * SEQ_Q
        dk, dv = _attn_bwd_dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                                      stride_qm, stride_qd, stride_dom, stride_dod, lo, mid,
                                      offs_n, offs_d, SEQ_Q, causal_shift, qk_scale, BLOCK_M,
                                      True, INPUT_PRECISION)
        dk, dv = _attn_bwd_dkdv_tiles(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                                      stride_qm, stride_qd, stride_dom, stride_dod,
                                      mid, SEQ_Q, offs_n, offs_d, SEQ_Q,
                                      causal_shift, qk_scale, BLOCK_M, False, INPUT_PRECISION)
    dk = dk * sm_scale
    tl.store(dk_ptr + b * stride_dkb + kvh * stride_dkh + offs_n[:, None] * stride_dkn
             + offs_d[None, :] * stride_dkd, dk.to(dk_ptr.dtype.element_ty), mask=in_k[:, None])
    tl.store(dv_ptr + b * stride_dvb + kvh * stride_dvh + offs_n[:, None] * stride_dvn
             + offs_d[None, :] * stride_dvd, dv.to(dv_ptr.dtype.element_ty), mask=in_k[:, None])


@triton.jit
def _attn_bwd_dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd, stride_vn,
                       stride_vd, lo, hi, offs_m, offs_n, offs_d, SEQ_K, causal_shift,
                       qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                       INPUT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """Add the key blocks [lo, hi) to dQ (BLOCK_M, HEAD_DIM, fp32, unscaled) of one query
    block: P = exp2(Q K^T * qk_scale - lse), dP = dO V^T, dS = P (dP - delta), dQ += dS K.
    MASKED: zero P for keys past SEQ_K and (CAUSAL) keys j > i + causal_shift."""
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        if MASKED:
            in_k = cols < SEQ_K
            kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd,
                         mask=in_k[None, :], other=0.0)
            vt = tl.load(v_base + cols[None, :] * stride_vn + offs_d[:, None] * stride_vd,
                         mask=in_k[None, :], other=0.0)
        else:
            kt = tl.load(k_base + cols[None, :] * stride_kn + offs_d[:, None] * stride_kd)
            vt = tl.load(v_base + cols[None, :] * stride_vn + offs_d[:, None] * stride_vd)
        p = tl.exp2(tl.dot(q, kt, input_precision=INPUT_PRECISION) * qk_scale - lse[:, None])
        if MASKED:
            keep = cols[None, :] < SEQ_K
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + causal_shift)
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, vt, input_precision=INPUT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=INPUT_PRECISION)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_dob, stride_doh, stride_dom, stride_dod,
    stride_dqb, stride_dqh, stride_dqm, stride_dqd,
    H, GROUP, SEQ_Q, SEQ_K, qk_scale, sm_scale,
    CAUSAL: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ = scale * dS K for one BLOCK_M block of queries of one head, recomputing P and dP
    from Q, K, V, dO and the saved log-sum-exp.

    Arguments as in ``_attn_bwd_dkdv_kernel``; dq_ptr: dQ shaped like Q, any strides, each
    element written once. The key blocks walked are the forward's: unmasked up to the last
    block every row sees, masked from there to the last key the block's last row sees.
    Grid: (cdiv(SEQ_Q, BLOCK_M), B * H), longest rows first. Accumulates in fp32.
    """
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    bh = tl.program_id(1)
    b, h, kvh = _query_block_heads(bh, H, GROUP)
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < SEQ_Q
    q = tl.load(q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm
                + offs_d[None, :] * stride_qd, mask=in_q[:, None], other=0.0)
    do = tl.load(do_ptr + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom
                 + offs_d[None, :] * stride_dod, mask=in_q[:, None], other=0.0)
    row = bh.to(tl.int64) * SEQ_Q + offs_m
    lse = tl.load(lse_ptr + row, mask=in_q, other=0.0)
    delta = tl.load(delta_ptr + row, mask=in_q, other=0.0)
    k_base = k_ptr + b * stride_kb + kvh * stride_kh
    v_base = v_ptr + b * stride_vb + kvh * stride_vh

    causal_shift = SEQ_K - SEQ_Q
    full_end, hi = _visible_keys(start_m, SEQ_Q, SEQ_K, CAUSAL, BLOCK_M, BLOCK_N)
    dq = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    dq = _attn_bwd_dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd,
                            stride_vn, stride_vd, 0, full_end, offs_m, offs_n, offs_d, SEQ_K,
                            causal_shift, qk_scale, False, CAUSAL, INPUT_PRECISION, BLOCK_N)
    dq = _attn_bwd_dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_kd,
                            stride_vn, stride_vd, full_end, hi, offs_m, offs_n, offs_d, SEQ_K,
                            causal_shift, qk_scale, True, CAUSAL, INPUT_PRECISION, BLOCK_N)
    dq = dq * sm_scale
    tl.store(dq_ptr + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm
             + offs_d[None, :] * stride_dqd, dq.to(dq_ptr.dtype.element_ty), mask=in_q[:, None])


# ------------------------------------------------------------------------ configs

def _cfg(bm: int, bn: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


def fwd_configs(capability: tuple[int, int], dtype: torch.dtype, head_dim: int
                ) -> list[triton.Config]:
    """Forward candidates. BLOCK_M rows of queries stay in registers (the Q tile and the
    fp32 accumulator, BLOCK_M x HEAD_DIM each), so the tiles shrink as the head grows;
    128-row tiles take 8 warps (on Hopper, two warpgroups of 64 rows for wgmma). The first
    entry is the default. Every entry of every list (head dims 64, 128 and 256; 32 needs
    fewer registers than 64) was compiled spill-free for its architecture, sm_80 or sm_90a,
    with ``tritonlab inspect`` (docs/attention.md)."""
    if head_dim >= 256:
        return [_cfg(32, 64, 4, 2), _cfg(64, 64, 8, 2)]
    if head_dim <= 64:
        return [_cfg(128, 128, 8, 3)] + ([_cfg(128, 64, 4, 3), _cfg(128, 32, 4, 4)]
                                         if hopper_class(capability) else [_cfg(64, 64, 4, 3)])
    if hopper_class(capability):
        return [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(128, 64, 8, 2),
                _cfg(64, 64, 4, 3)]
    return [_cfg(128, 64, 8, 3), _cfg(64, 64, 4, 3), _cfg(64, 32, 4, 3), _cfg(32, 128, 8, 2)]


def dkdv_configs(capability: tuple[int, int], dtype: torch.dtype, head_dim: int
                 ) -> list[triton.Config]:
    """dK/dV candidates: a key block (K, V and the fp32 dK, dV accumulators, BLOCK_N x
    HEAD_DIM each, live in registers for the whole kernel) and a narrow query block streamed
    through it. At head_dim 128 that is four BLOCK_N x 128 tiles held by every thread: only
    8 warps over 64-key blocks (or 128-key blocks with 16-query steps on Hopper) stay
    spill-free on both architectures."""
    if head_dim >= 256:
        return [_cfg(16, 16, 4, 2), _cfg(16, 32, 8, 2)]
    if head_dim <= 64:
        return [_cfg(32, 128, 8, 2)] + ([_cfg(32, 64, 4, 3), _cfg(64, 64, 8, 2)]
                                        if hopper_class(capability) else [])
    if hopper_class(capability):
        return [_cfg(32, 64, 8, 2), _cfg(16, 128, 8, 2)]
    return [_cfg(32, 64, 8, 2), _cfg(64, 64, 8, 2)]


def dq_configs(capability: tuple[int, int], dtype: torch.dtype, head_dim: int
               ) -> list[triton.Config]:
    """dQ candidates: a query block (Q, dO and the dQ accumulator in registers) and a
    key block streamed through it."""
    if head_dim >= 256:
        return [_cfg(32, 32, 4, 2)] + ([_cfg(64, 16, 4, 2)] if hopper_class(capability) else [])
    if head_dim <= 64:
        return [_cfg(128, 32, 4, 3)] + ([_cfg(128, 64, 8, 2), _cfg(64, 64, 4, 3)]
                                        if hopper_class(capability) else [])
    if hopper_class(capability):
        return [_cfg(128, 64, 8, 2), _cfg(64, 64, 4, 3), _cfg(128, 64, 8, 3), _cfg(64, 32, 4, 3)]
    return [_cfg(64, 32, 4, 3), _cfg(64, 64, 8, 2), _cfg(32, 64, 8, 2)]


# fp32 runs its dots on the FMA units, operands staged through shared memory, so its tiles
# need about twice the bytes of 16-bit ones: compiled at head dim 128, no entry of the
# forward, dK/dV or dQ lists fits the 99 KB of sm_89 / sm_120 (the forward's first needs
# 224.5 KB there, more than sm_80's 163 too, and 225.5 KB of sm_90a's 227). This floor
# fits (52 KB forward, 68 KB for each backward kernel on both); it ends every fp32 list up
# to head dim 128, so that a GPU where no larger tile fits still launches (the autotuner
# skips a tile that does not fit, and with autotuning off TunedKernel falls back to the
# next).
_FP32_FLOOR = _cfg(32, 32, 4, 2)


def _with_fp32_floor(configs, capability: tuple[int, int], dtype: torch.dtype,
                     head_dim: int) -> list[triton.Config]:
    """``configs(capability, dtype, head_dim)``, ending with :data:`_FP32_FLOOR` in fp32."""
    out = configs(capability, dtype, head_dim)
    if dtype == torch.float32 and head_dim <= 128:
        out = [*out, _FP32_FLOOR]
    return out


def delta_configs(capability: tuple[int, int], dtype: torch.dtype, head_dim: int
                  ) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=1),
            triton.Config({"BLOCK_M": 128}, num_warps=8, num_stages=1)]


# Under the interpreter, blocks of unequal size (and a narrow block where a GPU has a wide
# one) make the tiny test shapes cross several diagonal, full and partial blocks.
_INTERPRETER = {
    "fwd": _cfg(32, 16, 4, 1), "bwd_dkdv": _cfg(16, 32, 4, 1), "bwd_dq": _cfg(32, 16, 4, 1),
    "bwd_delta": triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=1),
}
# fp32 attention is the lab's exact path (interpreter, references), so its dots run at full
# fp32 precision rather than TF32; 16-bit operands ignore the setting.
_PRECISION = "ieee"
_KEY = ["H", "GROUP", "SEQ_Q", "SEQ_K", "CAUSAL", "INPUT_PRECISION"]


def _kernels(head_dim: int) -> dict[str, TunedKernel]:
    def floored(configs):
        return functools.partial(_with_fp32_floor, configs)

    spec = {"fwd": (_attn_fwd_kernel, floored(fwd_configs), _KEY + ["STORE_LSE"]),
            "bwd_delta": (_attn_bwd_delta_kernel, delta_configs, ["H", "SEQ_Q"]),
            "bwd_dkdv": (_attn_bwd_dkdv_kernel, floored(dkdv_configs), _KEY),
            "bwd_dq": (_attn_bwd_dq_kernel, floored(dq_configs), _KEY)}
    return {name: TunedKernel(kernel, key=key,
                              configs=functools.partial(configs, head_dim=head_dim),
                              interpreter_config=_INTERPRETER[name])
            for name, (kernel, configs, key) in spec.items()}


# One TunedKernel per (kernel, head_dim): the config lists depend on the head dim.
KERNELS: dict[int, dict[str, TunedKernel]] = {d: _kernels(d) for d in HEAD_DIMS}

# The configs of the last call's kernels, by kernel name ("fwd", "bwd_delta", "bwd_dkdv",
# "bwd_dq"), for Impl.config.
LAST = LastConfig()
LAST.value = {}


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


def _record(name: str, kernel: TunedKernel) -> None:
    LAST.value = {**(LAST.value or {}), name: kernel.last_config}


# ----------------------------------------------------------------------- launchers

def _check(q: object, k: object, v: object, causal: object, scale: object) -> float:
    """Validate the operands; return the softmax scale."""
    check_operand("q", q, 4)
    check_operand("k", k, 4)
    check_operand("v", v, 4)
    check_same(q=q, k=k, v=v)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    B, H, Sq, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (batch, n_kv_heads, seq_k, "
                         f"head_dim), got {tuple(k.shape)} and {tuple(v.shape)}")
    Bk, Hkv, Sk, Dk = k.shape
    if Bk != B:
        raise ValueError(f"batch sizes differ: q has {B}, k and v have {Bk}")
    if Dk != D:
        raise ValueError(f"head dims differ: q has {D}, k and v have {Dk}")
    if D not in HEAD_DIMS:
        raise ValueError(f"head_dim {D} is not supported; supported: "
                         f"{', '.join(map(str, HEAD_DIMS))}")
    if Hkv == 0 or H % Hkv:
        raise ValueError(f"n_heads ({H}) must be a multiple of n_kv_heads ({Hkv})")
    if Sq > 0 and Sk == 0:
        raise ValueError("seq_k is 0: a softmax over no keys is undefined")
    if causal and Sq > Sk:
        raise ValueError(f"causal attention aligns the queries to the end of the keys, so "
                         f"seq_q ({Sq}) must not exceed seq_k ({Sk})")
    for name, t in (("q", q), ("k", k), ("v", v)):
        within_head = max_offset(t[0, 0]) if t.shape[0] and t.shape[1] else 0
        if within_head > INT32_MAX:
            raise ValueError(f"{name}: offsets within one head reach {within_head}, beyond "
                             f"32-bit indexing; use a layout with seq * stride < 2**31")
    if scale is None:
        return D ** -0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) \
            or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    return float(scale)


def _forward(q, k, v, causal: bool, scale: float, store_lse: bool):
    """O (B, H, Sq, D) in q's dtype and, when ``store_lse``, the base-2 log-sum-exp
    (B * H, Sq) fp32."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    o = torch.empty((B, H, Sq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B * H, Sq), dtype=torch.float32, device=q.device) if store_lse else None
    if o.numel() == 0:
        return o, lse
    kernel = KERNELS[D]["fwd"]
    kernel.launch(
        lambda meta: (triton.cdiv(Sq, meta["BLOCK_M"]), B * H), q.dtype,
        q, k, v, o, lse if store_lse else o,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        H, H // Hkv, Sq, Sk, scale * _LOG2E,
        CAUSAL=causal, STORE_LSE=store_lse, INPUT_PRECISION=_PRECISION, HEAD_DIM=D,
    )
    LAST.value = {"fwd": kernel.last_config}
    return o, lse


def _backward(q, k, v, o, lse, do, causal: bool, scale: float):
    """(dQ, dK, dV) shaped like (q, k, v), from the forward's O and log-sum-exp."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if Sq == 0 or B * H == 0:
        return dq, dk.zero_(), dv.zero_()
    kernels = KERNELS[D]
    delta = torch.empty((B * H, Sq), dtype=torch.float32, device=q.device)
    kernels["bwd_delta"].launch(
        lambda meta: (triton.cdiv(Sq, meta["BLOCK_M"]), B * H), q.dtype,
        o, do, delta, *_strides(o), *_strides(do), H, Sq, HEAD_DIM=D)
    _record("bwd_delta", kernels["bwd_delta"])
    common = (H, H // Hkv, Sq, Sk, scale * _LOG2E, scale)
    kernels["bwd_dkdv"].launch(
        lambda meta: (triton.cdiv(Sk, meta["BLOCK_N"]), B * Hkv), q.dtype,
        q, k, v, do, lse, delta, dk, dv,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
        *common, CAUSAL=causal, INPUT_PRECISION=_PRECISION, HEAD_DIM=D)
    _record("bwd_dkdv", kernels["bwd_dkdv"])
    kernels["bwd_dq"].launch(
        lambda meta: (triton.cdiv(Sq, meta["BLOCK_M"]), B * H), q.dtype,
        q, k, v, do, lse, delta, dq,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
        *common, CAUSAL=causal, INPUT_PRECISION=_PRECISION, HEAD_DIM=D)
    _record("bwd_dq", kernels["bwd_dq"])
    return dq, dk, dv


class _AttentionFunction(torch.autograd.Function):
    """Flash attention with its flash backward. Saves Q, K, V, O and the (B * H, Sq) fp32
    log-sum-exp; the backward recomputes P from them, block by block."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        o, lse = _forward(q, k, v, causal, scale, store_lse=True)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        if torch.is_grad_enabled():
            # A create_graph backward would get gradients with no graph behind them.
            raise RuntimeError("attention's backward is not differentiable: double backward "
                               "(create_graph=True) through tritonlab attention is not "
                               "supported")
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, do, ctx.causal, ctx.scale)
        need = ctx.needs_input_grad
        return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None,
                None, None)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
              scale: float | None = None) -> torch.Tensor:
    """softmax(Q K^T * scale + mask) V.

    q: (batch, n_heads, seq_q, head_dim); k, v: (batch, n_kv_heads, seq_k, head_dim), any
    strides, one dtype (float16, bfloat16 or float32). n_heads must be a multiple of
    n_kv_heads (grouped-query attention; 1 is multi-query); head_dim one of 32, 64, 128,
    256. ``causal``: query i sees keys j <= i + seq_k - seq_q (queries aligned to the end of
    the keys; seq_q <= seq_k). ``scale`` defaults to head_dim ** -0.5.

    Returns O (batch, n_heads, seq_q, head_dim) in q's dtype. Differentiable in q, k and v
    (first order) when grad mode is on and one of them requires grad; otherwise (inference)
    the log-sum-exp is not even stored.
    """
    scale = _check(q, k, v, causal, scale)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _AttentionFunction.apply(q, k, v, causal, scale)
    return _forward(q, k, v, causal, scale, store_lse=False)[0]
