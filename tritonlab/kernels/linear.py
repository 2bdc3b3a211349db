"""linear: y = act(x W^T + b), a trainable layer whose forward and backward are Triton kernels.

(Over 500 lines on purpose: the forward kernel, the two backward kernels and the
autograd.Function that chooses between them share their saved-tensor contract, and read best
side by side.)

Forward (``_linear_fwd_kernel``): one GEMM with the bias add and the activation in the
epilogue. What it saves for backward, and why:

* GELU (erf and tanh) and SiLU: the activation's derivative D = act'(Z) at the
  pre-activation Z = x W^T + b, evaluated in the same epilogue (in fp32, sharing the erf /
  exp / tanh with act itself) and written beside y: one extra M x N store, the same bytes
  as saving Z. Saving D rather than Z keeps the transcendental math out of the backward:
  both backward GEMMs would otherwise re-evaluate act'(Z) on every tile in their main loops,
  which costs instructions and registers there (compiled for sm_80, the erf-GELU derivative
  in the dW loop spills hundreds of bytes per thread; the product G * D does not).
  Recomputing Z instead of saving anything would cost another 2MNK-FLOP GEMM (half the
  backward's matmul work) to save 2MN elements of traffic: at any shape worth a GEMM kernel
  the bytes are far cheaper.
* ReLU: nothing extra. act'(z) = [z > 0] = [y > 0], so y itself (an output) is saved.
* no activation: nothing but x and W.

Backward (``_linear_dx_kernel`` and ``_linear_dw_kernel``): the activation gradient
G' = G * act'(Z) is formed tile by tile as G is loaded, inside both GEMMs that consume it,
so no M x N elementwise pass and no G' tensor exist:

* dX = G' W in the dX kernel (reduction over N);
* dW = G'^T X in the dW kernel (reduction over M), whose programs of the first K column also
  sum the G' tiles they already hold into db: the bias gradient costs no pass over G.

Only the gradients autograd asks for are computed (``ctx.needs_input_grad``): no dX kernel
when x needs none, a dW kernel specialised to the column sums alone when only the bias does,
nothing saved (and only y written) when no input requires grad. Both GEMMs accumulate in
fp32 (fp64 for float64 inputs, which exist for gradcheck).

Second order (``create_graph=True``, e.g. a gradient penalty): without an activation or with
ReLU the gradients are bilinear in G and the saved x or W (ReLU's mask [y > 0] has zero
derivative almost everywhere), so the backward expresses them through :func:`linear`
itself, dX = linear(G', W^T) and dW = linear(G'^T, X^T), plus db = sum of G' rows: still
the lab's kernels, and differentiable to any order. GELU and SiLU would need act''(Z), and
Z cannot be rebuilt from what is saved (D = act'(Z), and x or W only when the other's
gradient is needed), so there a backward with create_graph=True raises a RuntimeError:
an error, never a silently wrong second-order gradient.

x may have any leading batch dimensions and any strides: its rows are addressed through up
to two levels of (size, stride), which covers every view whose leading dimensions collapse
to two groups (a transposed batch/sequence, a strided slice, a broadcast); only deeper
non-collapsible layouts are copied. Addresses switch to int64 only for tensors past 2^31
elements.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from tritonlab.kernels._activations import activation_grad, apply_activation, normalize_activation
from tritonlab.kernels._gemm import (
    SUPPORTED_DTYPES,
    check_operand,
    check_same,
    dtype_name,
    gemm_configs,
    grouped_tile,
    halves,
    needs_int64,
    precision_for,
)
from tritonlab.kernels._persistent import descriptor_problem, launch_persistent, tma_device
from tritonlab.kernels._splitk import DECODE_MAX_M, launch_splitk
from tritonlab.kernels.tuning import INTERPRETER_CONFIG, LastConfig, TunedKernel

__all__ = ["linear", "Linear", "KERNELS", "FWD_LAST", "SAVES_DACT", "acc_dtype", "dact_mode"]

# float64 is accepted for verification (torch.autograd.gradcheck); it accumulates in float64.
DTYPES = (*SUPPORTED_DTYPES, torch.float64)
# Activations whose derivative the forward saves (ReLU's is read off y).
SAVES_DACT = ("gelu", "gelu_tanh", "silu")


def dact_mode(activation: str) -> str:
    """How the backward kernels form G' from G and the saved tensor S: "none" (G' = G),
    "relu" (S = y; G' = G where y > 0, else 0), "saved" (S = act'(Z); G' = G * S)."""
    if activation == "none":
        return "none"
    return "relu" if activation == "relu" else "saved"


# ------------------------------------------------------------------------------- kernels

@triton.jit
def _row_offsets(rows, M_INNER, stride_outer, stride_inner, SPLIT_ROWS: tl.constexpr):
    """Element offsets of ``rows`` of a tensor whose leading dimensions, flattened in C order,
    collapse to two levels (outer, inner) with M_INNER rows in the inner level:
    offset = (row // M_INNER) * stride_outer + (row % M_INNER) * stride_inner. With
    SPLIT_ROWS=False the rows are one level and offset = row * stride_inner."""
    if SPLIT_ROWS:
        off = (rows // M_INNER) * stride_outer + (rows % M_INNER) * stride_inner
    else:
        off = rows * stride_inner
    return off


@triton.jit
def _grad_preact(g, s, DACT: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """G' = G * act'(Z) for a tile ``g`` of G and the matching tile ``s`` of the saved tensor
    (see ``dact_mode``), returned in G's dtype (the operand dtype of the GEMM that consumes
    it); the product is rounded once, as torch's activation backward does."""
    if DACT == "relu":
        g = tl.where(s > 0, g, tl.zeros_like(g))
    elif DACT == "saved":
        g = (g.to(ACC_DTYPE) * s.to(ACC_DTYPE)).to(g.dtype)
    return g


@triton.jit
def _fwd_epilogue(acc, offs_m, offs_n, y_ptr, d_ptr, M, N, stride_ym, stride_yn,
                  ACTIVATION: tl.constexpr, SAVE_DACT: tl.constexpr):
    """Store act(acc) to Y and, with SAVE_DACT, act'(acc) to D, for rows ``offs_m`` and
    columns ``offs_n`` (masked to M x N); both share Y's strides."""
    out_offs = offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SAVE_DACT:
        d = activation_grad(acc, ACTIVATION)
        tl.store(d_ptr + out_offs, d.to(d_ptr.dtype.element_ty), mask=mask)
    y = apply_activation(acc, ACTIVATION)
    tl.store(y_ptr + out_offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _linear_fwd_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, d_ptr,
    M, N, K, M_INNER,
    stride_xo, stride_xm, stride_xk,
    stride_wn, stride_wk,
    stride_b,
    stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    SAVE_DACT: tl.constexpr,
    SPLIT_ROWS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    USE_INT64: tl.constexpr,
    EVEN_K: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Y[M, N] = act(Z) with Z = X[M, K] @ W[N, K]^T + b[N]; also D = act'(Z) when SAVE_DACT.

    x_ptr: X, M rows of K elements; row m at ``_row_offsets(m, M_INNER, stride_xo,
        stride_xm, SPLIT_ROWS)``, element k of a row at k * stride_xk (any layout).
    w_ptr: W, shape (N, K), strides (stride_wn, stride_wk); read as the K x N operand W^T.
    b_ptr: b, shape (N,), stride stride_b; read only when HAS_BIAS.
    y_ptr: Y, shape (M, N), strides (stride_ym, stride_yn); written once, cast from ACC_DTYPE.
    d_ptr: D, same shape and strides as Y; written only when SAVE_DACT (for backward).
    ACTIVATION: "none" | "relu" | "gelu" | "gelu_tanh" | "silu", evaluated in ACC_DTYPE.
    INPUT_PRECISION: tl.dot precision for fp32 operands ("ieee" or "tf32").
    USE_INT64: int64 element offsets (a tensor spans >= 2^31 elements).
    EVEN_K: K % BLOCK_K == 0, so the K loop loads without masks.
    ACC_DTYPE: tl.float32 (tl.float64 for float64 operands).
    Grid: (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N),), tiles ordered by ``grouped_tile``.

    Rows of X and columns of W^T past the edge are wrapped (``% M``, ``% N``) rather than
    masked: they read valid memory and only feed outputs that are never stored. The
    epilogue runs on four column quarters of the tile, one after the other: the activation's
    (and its derivative's) temporaries for a quarter fit in registers, where those of a
    whole or half 128 x 256 tile spill (tritonlab inspect, sm_90a, bf16).
    """
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_m % M
    cols = offs_n % N
    if USE_INT64:
        offs_m = offs_m.to(tl.int64)
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    x_rows = _row_offsets(rows, M_INNER, stride_xo, stride_xm, SPLIT_ROWS)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        x_ptrs = x_ptr + x_rows[:, None] + ks[None, :] * stride_xk
        w_ptrs = w_ptr + ks[:, None] * stride_wk + cols[None, :] * stride_wn
        if EVEN_K:
            x = tl.load(x_ptrs)
            w = tl.load(w_ptrs)
        else:
            x = tl.load(x_ptrs, mask=ks[None, :] < K, other=0.0)
            w = tl.load(w_ptrs, mask=ks[:, None] < K, other=0.0)
        acc = tl.dot(x, w, acc, input_precision=INPUT_PRECISION)

    if HAS_BIAS:
        acc += tl.load(b_ptr + cols * stride_b).to(ACC_DTYPE)[None, :]
    h0, h1 = halves(acc, BLOCK_M, BLOCK_N)
    q0, q1 = halves(h0, BLOCK_M, BLOCK_N // 2)
    q2, q3 = halves(h1, BLOCK_M, BLOCK_N // 2)
    Q: tl.constexpr = BLOCK_N // 4
    offs_q = pid_n * BLOCK_N + tl.arange(0, Q)
    if USE_INT64:
        offs_q = offs_q.to(tl.int64)
    _fwd_epilogue(q0, offs_m, offs_q, y_ptr, d_ptr, M, N, stride_ym, stride_yn,
                  ACTIVATION, SAVE_DACT)
    _fwd_epilogue(q1, offs_m, offs_q + Q, y_ptr, d_ptr, M, N, stride_ym, stride_yn,
                  ACTIVATION, SAVE_DACT)
    _fwd_epilogue(q2, offs_m, offs_q + 2 * Q, y_ptr, d_ptr, M, N, stride_ym, stride_yn,
                  ACTIVATION, SAVE_DACT)
    _fwd_epilogue(q3, offs_m, offs_q + 3 * Q, y_ptr, d_ptr, M, N, stride_ym, stride_yn,
                  ACTIVATION, SAVE_DACT)


@triton.jit
def _linear_dx_kernel(
    g_ptr, s_ptr, w_ptr, dx_ptr,
    M, N, K,
    stride_gm, stride_gn,
    stride_sm, stride_sn,
    stride_wn, stride_wk,
    stride_dxm, stride_dxk,
    DACT: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    USE_INT64: tl.constexpr,
    EVEN_N: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """dX[M, K] = G'[M, N] @ W[N, K] with G' = G * act'(Z) formed from each G tile as it is
    loaded (G' never exists in memory).

    g_ptr: G = dL/dY, shape (M, N), strides (stride_gm, stride_gn).
    s_ptr: the saved tensor S (D = act'(Z), or Y for ReLU; see ``dact_mode``), shape
        (M, N), strides (stride_sm, stride_sn); not read when DACT == "none".
    w_ptr: W, shape (N, K), strides (stride_wn, stride_wk).
    dx_ptr: dX, shape (M, K), strides (stride_dxm, stride_dxk); written once.
    EVEN_N: N % BLOCK_N == 0 (unmasked reduction loop). Other constexprs as in the forward.
    Grid: (cdiv(M, BLOCK_M) * cdiv(K, BLOCK_K),), tiles ordered by ``grouped_tile``.
    Accumulates in ACC_DTYPE; G' is rounded to G's dtype before the dot, as torch does.
    """
    pid = tl.program_id(0)
    pid_m, pid_k = grouped_tile(pid, M, K, BLOCK_M, BLOCK_K, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    rows = offs_m % M
    cols = offs_k % K
    if USE_INT64:
        offs_m = offs_m.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
        offs_n = offs_n.to(tl.int64)
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC_DTYPE)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + offs_n
        g_ptrs = g_ptr + rows[:, None] * stride_gm + ns[None, :] * stride_gn
        w_ptrs = w_ptr + ns[:, None] * stride_wn + cols[None, :] * stride_wk
        if EVEN_N:
            g = tl.load(g_ptrs)
            w = tl.load(w_ptrs)
        else:
            g = tl.load(g_ptrs, mask=ns[None, :] < N, other=0.0)
            w = tl.load(w_ptrs, mask=ns[:, None] < N, other=0.0)
        if DACT != "none":
            s_ptrs = s_ptr + rows[:, None] * stride_sm + ns[None, :] * stride_sn
            if EVEN_N:
                sv = tl.load(s_ptrs)
            else:
                sv = tl.load(s_ptrs, mask=ns[None, :] < N, other=0.0)
            g = _grad_preact(g, sv, DACT, ACC_DTYPE)
        acc = tl.dot(g, w, acc, input_precision=INPUT_PRECISION)

    dx_ptrs = dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :] * stride_dxk
    mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _linear_dw_kernel(
    g_ptr, s_ptr, x_ptr, dw_ptr, db_ptr,
    M, N, K, M_INNER,
    stride_gm, stride_gn,
    stride_sm, stride_sn,
    stride_xo, stride_xm, stride_xk,
    stride_dwn, stride_dwk,
    stride_db,
    DACT: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    SPLIT_ROWS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    USE_INT64: tl.constexpr,
    EVEN_M: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """dW[N, K] = G'^T @ X and db[N] = column sums of G', in one pass over G, with
    G' = G * act'(Z) formed from each G tile as it is loaded.

    g_ptr: G = dL/dY, shape (M, N), strides (stride_gm, stride_gn), read as G^T tiles.
    s_ptr: the saved tensor S as in the dX kernel, shape (M, N), strides (stride_sm,
        stride_sn); not read when DACT == "none".
    x_ptr: X, M rows of K elements addressed as in the forward kernel (M_INNER, stride_xo,
        stride_xm, SPLIT_ROWS; stride_xk along a row).
    dw_ptr: dW, shape (N, K), strides (stride_dwn, stride_dwk); written when COMPUTE_DW.
    db_ptr: db, shape (N,), stride stride_db; written when COMPUTE_DB, by the programs of the
        first K column (pid_k == 0), from the G' tiles they load for dW anyway.
    COMPUTE_DW=False specialises the kernel to the column sums alone (bias-only gradient):
        one program per BLOCK_N columns, no X loads, no dot, K unused (it may be 0).
    EVEN_M: M % BLOCK_M == 0 (unmasked reduction loop). Other constexprs as in the forward.
    Grid: (cdiv(N, BLOCK_N) * cdiv(K, BLOCK_K),) with COMPUTE_DW, else (cdiv(N, BLOCK_N),).
    Accumulates dW and db in ACC_DTYPE; G' is rounded to G's dtype before both, as torch does.
    """
    pid = tl.program_id(0)
    if COMPUTE_DW:
        pid_n, pid_k = grouped_tile(pid, N, K, BLOCK_N, BLOCK_K, GROUP_M)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        ks = offs_k % K
        if USE_INT64:
            offs_k = offs_k.to(tl.int64)
            ks = ks.to(tl.int64)
    else:
        pid_n = pid
        pid_k = 0
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    ns = offs_n % N
    if USE_INT64:
        offs_n = offs_n.to(tl.int64)
        offs_m = offs_m.to(tl.int64)
        ns = ns.to(tl.int64)

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC_DTYPE)
    db = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
    for m0 in range(0, M, BLOCK_M):
        ms = m0 + offs_m
        gt_ptrs = g_ptr + ns[:, None] * stride_gn + ms[None, :] * stride_gm
        if EVEN_M:
            gt = tl.load(gt_ptrs)
        else:
            gt = tl.load(gt_ptrs, mask=ms[None, :] < M, other=0.0)
        if DACT != "none":
            st_ptrs = s_ptr + ns[:, None] * stride_sn + ms[None, :] * stride_sm
            if EVEN_M:
                st = tl.load(st_ptrs)
            else:
                st = tl.load(st_ptrs, mask=ms[None, :] < M, other=0.0)
            gt = _grad_preact(gt, st, DACT, ACC_DTYPE)
        if COMPUTE_DB:
            # Uniform per program: only the first K column pays for the row sums.
            if pid_k == 0:
                db += tl.sum(gt.to(ACC_DTYPE), axis=1)
        if COMPUTE_DW:
            x_rows = _row_offsets(ms, M_INNER, stride_xo, stride_xm, SPLIT_ROWS)
            x_ptrs = x_ptr + x_rows[:, None] + ks[None, :] * stride_xk
            if EVEN_M:
                x = tl.load(x_ptrs)
            else:
                x = tl.load(x_ptrs, mask=ms[:, None] < M, other=0.0)
            acc = tl.dot(gt, x, acc, input_precision=INPUT_PRECISION)

    if COMPUTE_DW:
        dw_ptrs = dw_ptr + offs_n[:, None] * stride_dwn + offs_k[None, :] * stride_dwk
        mask = (offs_n[:, None] < N) & (offs_k[None, :] < K)
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=mask)
    if COMPUTE_DB:
        if pid_k == 0:
            tl.store(db_ptr + offs_n * stride_db, db.to(db_ptr.dtype.element_ty),
                     mask=offs_n < N)


# ----------------------------------------------------------------------------- launchers

def _relabel(config: triton.Config, names: dict[str, str]) -> triton.Config:
    """A GEMM config (BLOCK_M x BLOCK_N output tile, BLOCK_K reduction) renamed for a kernel
    whose output tile and reduction run over other dimensions."""
    kwargs = {names.get(k, k): v for k, v in config.kwargs.items()}
    return triton.Config(kwargs, num_warps=config.num_warps, num_stages=config.num_stages)


def _relabelled(names: dict[str, str]):
    def configs(capability, dtype):
        return [_relabel(c, names) for c in gemm_configs(capability, dtype)]
    return configs


# dX: output tile (M, K), reduction over N.  dW: output tile (N, K), reduction over M.
_DX_NAMES = {"BLOCK_M": "BLOCK_M", "BLOCK_N": "BLOCK_K", "BLOCK_K": "BLOCK_N"}
_DW_NAMES = {"BLOCK_M": "BLOCK_N", "BLOCK_N": "BLOCK_K", "BLOCK_K": "BLOCK_M"}

# Which forward path ran last (tiled, or split-K for decode-sized M), for Impl.config().
FWD_LAST = LastConfig()
_FWD = TunedKernel(
    _linear_fwd_kernel,
    key=["M", "N", "K", "stride_xk", "stride_wk", "ACTIVATION", "HAS_BIAS", "SAVE_DACT",
         "INPUT_PRECISION"],
    configs=gemm_configs,
    heuristics={"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0},
)
_DX = TunedKernel(
    _linear_dx_kernel,
    key=["M", "N", "K", "stride_gn", "stride_wk", "DACT", "INPUT_PRECISION"],
    configs=_relabelled(_DX_NAMES),
    interpreter_config=_relabel(INTERPRETER_CONFIG, _DX_NAMES),
    heuristics={"EVEN_N": lambda args: args["N"] % args["BLOCK_N"] == 0},
)
_DW = TunedKernel(
    _linear_dw_kernel,
    key=["M", "N", "K", "stride_gm", "stride_xk", "DACT", "COMPUTE_DW", "COMPUTE_DB",
         "INPUT_PRECISION"],
    configs=_relabelled(_DW_NAMES),
    interpreter_config=_relabel(INTERPRETER_CONFIG, _DW_NAMES),
    heuristics={"EVEN_M": lambda args: args["M"] % args["BLOCK_M"] == 0},
)
# By the names of their compile targets (``tritonlab inspect``) and of Impl.config() keys.
KERNELS = {"fwd": _FWD, "bwd_dx": _DX, "bwd_dw": _DW}


def acc_dtype(dtype: torch.dtype):
    """The kernels' ACC_DTYPE for operands of ``dtype``: fp64 for float64, else fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _row_layout(t: torch.Tensor) -> tuple[int, int, int, bool] | None:
    """(M_INNER, stride_outer, stride_inner, split) addressing the rows of ``t``'s leading
    dimensions (flattened in C order), or None when they do not collapse to two levels.

    Adjacent leading dimensions merge when the outer stride equals size * stride of the inner
    one (dimensions of size 1 are ignored); one remaining group needs one stride, two need
    the (outer, inner) split, more cannot be addressed this way.
    """
    groups: list[tuple[int, int]] = []
    for size, stride in zip(t.shape[:-1], t.stride()[:-1]):
        if size == 1:
            continue
        if groups and groups[-1][1] == size * stride:
            groups[-1] = (groups[-1][0] * size, stride)
        else:
            groups.append((size, stride))
    if not groups:
        return 1, 0, 0, False
    if len(groups) == 1:
        return groups[0][0], 0, groups[0][1], False
    if len(groups) == 2:
        return groups[1][0], groups[0][1], groups[1][1], True
    return None


def _rows_of(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int, bool]]:
    """x itself with its row layout; a copy only for layouts of three or more levels."""
    layout = _row_layout(x)
    if layout is None:
        x = x.reshape(-1, x.shape[-1])
        layout = _row_layout(x)
    return x, layout


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
             activation: str, precision: str, *, save_dact: bool
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The forward launcher: y = act(x W^T + b) for x of shape (..., K), and D = act'(Z)
    (shape (M, N)) when ``save_dact``. Inputs are assumed validated by :func:`linear`.

    Every forward goes through here (training, no-grad and inference), so the dispatch to
    other kernels happens at this one place: the split-K decode path for M <= 16 (without
    a saved derivative), on the Hopper class the persistent TMA kernel of :mod:`._persistent` (same
    epilogue: bias, activation, D = act'(Z)) when a tensor descriptor can read x and the
    weight, else the tiled forward kernel, with the reason in ``FWD_LAST`` ("fallback").
    """
    n, k = weight.shape
    lead = x.shape[:-1]
    m = math.prod(lead)
    # y is returned as allocated (not a view), so callers may modify it in place.
    y = torch.empty((*lead, n), dtype=x.dtype, device=x.device)
    y2 = y.view(m, n)
    d = torch.empty((m, n), dtype=x.dtype, device=x.device) if save_dact else None
    if 0 < m <= DECODE_MAX_M and n > 0 and k > 0 and not save_dact and x.dtype != torch.float64:
        # Decode-sized M: one program per column tile would leave most SMs idle, so split K.
        # (The reshape copies x only when its leading dims cannot be viewed: at most 16 rows.)
        FWD_LAST.value = launch_splitk(x.reshape(m, k), weight.t(), y2, bias=bias,
                                        activation=activation, precision=precision)
        return y, d
    if m > 0 and n > 0:
        xr, (m_inner, stride_xo, stride_xm, split) = _rows_of(x)
        fallback = None
        if k > 0 and x.dtype != torch.float64 and tma_device(x.device):
            # Hopper: the persistent TMA main loop with the same fused epilogue, when x's rows
            # are one (M, K) matrix a tensor descriptor can read.
            x2 = (xr.as_strided((m, k), (stride_xm, xr.stride(-1)), xr.storage_offset())
                  if not split else None)
            # y2 is written through a descriptor too (and d, which has its shape and
            # strides): an N whose rows are no multiple of 16 bytes must fall back.
            fallback = ("x's leading dimensions do not collapse to one row stride" if split
                        else descriptor_problem("x", x2) or descriptor_problem("weight", weight)
                        or descriptor_problem("out", y2, row_major=True))
            if fallback is None:
                FWD_LAST.value = launch_persistent(x2, weight.t(), y2, precision=precision,
                                                   bias=bias, activation=activation, dact=d)
                return y, d
        _FWD.launch(
            lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),),
            x.dtype,
            xr, weight, bias if bias is not None else y2, y2, d if d is not None else y2,
            m, n, k, m_inner,
            stride_xo, stride_xm, xr.stride(-1),
            weight.stride(0), weight.stride(1),
            bias.stride(0) if bias is not None else 0,
            y2.stride(0), y2.stride(1),
            HAS_BIAS=bias is not None, ACTIVATION=activation, SAVE_DACT=save_dact,
            SPLIT_ROWS=split, INPUT_PRECISION=precision,
            USE_INT64=needs_int64(xr, weight, y2), ACC_DTYPE=acc_dtype(x.dtype),
        )
        FWD_LAST.tiled(_FWD)
        if fallback:
            FWD_LAST.value["fallback"] = fallback
    return y, d


def _backward(grad_y: torch.Tensor, x: torch.Tensor | None, weight: torch.Tensor | None,
              saved: torch.Tensor | None, n: int, k: int, dact: str, precision: str,
              need_x: bool, need_w: bool, need_b: bool):
    """(dx, dW, db) of y = act(x W^T + b) for weight of shape (n, k), each None unless asked
    for. ``weight`` is needed (and given) only for dx, ``x`` only for dW. ``saved`` is the
    forward's D = act'(Z), or y for ReLU, or None (see ``dact_mode`` for ``dact``)."""
    # A view for contiguous and broadcast gradients (what autograd passes); a copy otherwise.
    g = grad_y.reshape(-1, n)
    m = g.shape[0]
    s = saved.reshape(m, n) if saved is not None else g
    acc = acc_dtype(g.dtype)
    dx = dw = db = None
    if need_x:
        dx = torch.empty((*grad_y.shape[:-1], k), dtype=g.dtype, device=g.device)
        dx2 = dx.view(m, k)
        if n == 0:
            dx.zero_()
        elif m > 0 and k > 0:
            _DX.launch(
                lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(k, meta["BLOCK_K"]),),
                g.dtype,
                g, s, weight, dx2, m, n, k,
                g.stride(0), g.stride(1), s.stride(0), s.stride(1),
                weight.stride(0), weight.stride(1), dx2.stride(0), dx2.stride(1),
                DACT=dact, INPUT_PRECISION=precision,
                USE_INT64=needs_int64(g, s, weight, dx2), ACC_DTYPE=acc,
            )
    if need_w or need_b:
        dw = torch.empty((n, k), dtype=g.dtype, device=g.device) if need_w else None
        db = torch.empty((n,), dtype=g.dtype, device=g.device) if need_b else None
        compute_dw = need_w and k > 0
        if m == 0:
            for t in (dw, db):
                if t is not None:
                    t.zero_()
        elif n > 0 and (compute_dw or need_b):
            # Without dW the kernel reads no x: g stands in for its pointer.
            xr, (m_inner, stride_xo, stride_xm, split) = (
                _rows_of(x) if compute_dw else (g, (1, 0, 0, False)))
            dw_buf = dw if dw is not None else g
            db_buf = db if db is not None else g

            def grid(meta):
                tiles_k = triton.cdiv(k, meta["BLOCK_K"]) if compute_dw else 1
                return (triton.cdiv(n, meta["BLOCK_N"]) * tiles_k,)

            _DW.launch(
                grid, g.dtype,
                g, s, xr, dw_buf, db_buf, m, n, k, m_inner,
                g.stride(0), g.stride(1), s.stride(0), s.stride(1),
                stride_xo, stride_xm, xr.stride(-1),
                dw_buf.stride(0), dw_buf.stride(-1), db_buf.stride(0),
                DACT=dact, COMPUTE_DW=compute_dw, COMPUTE_DB=need_b,
                SPLIT_ROWS=split, INPUT_PRECISION=precision,
                USE_INT64=needs_int64(g, s, xr, dw_buf), ACC_DTYPE=acc,
            )
    return dx, dw, db


def _differentiable_backward(grad_y, x, weight, saved, n, k, dact, precision,
                             need_x, need_w, need_b):
    """(dx, dW, db) as differentiable :func:`linear` calls and torch ops, for
    ``create_graph=True`` with no activation or ReLU (``dact`` "none" or "relu")."""
    g = grad_y.masked_fill(saved <= 0, 0) if dact == "relu" else grad_y
    dx = linear(g, weight.t(), input_precision=precision) if need_x else None
    g2 = g.reshape(-1, n)
    dw = linear(g2.t(), x.reshape(-1, k).t(), input_precision=precision) if need_w else None
    db = g2.sum(0) if need_b else None
    return dx, dw, db


class _LinearFunction(torch.autograd.Function):
    """Autograd glue: forward saves x (only if dW is needed), W (only if dX is needed) and
    act'(Z), y or nothing depending on the activation; backward launches only the kernels of
    the gradients autograd asks for.

    Double backward (backward called with grad mode on, i.e. ``create_graph=True``): exact
    and itself differentiable for no activation and ReLU (:func:`_differentiable_backward`);
    a RuntimeError for GELU and SiLU (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, activation, precision):
        need_x, need_w, _ = ctx.needs_input_grad[:3]
        save_dact = activation in SAVES_DACT
        y, d = _forward(x, weight, bias, activation, precision, save_dact=save_dact)
        saved = d if save_dact else (y if activation == "relu" else None)
        ctx.save_for_backward(x if need_w else None, weight if need_x else None, saved)
        ctx.activation = activation
        ctx.precision = precision
        ctx.n, ctx.k = weight.shape
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, weight, saved = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dact = dact_mode(ctx.activation)
        args = (x, weight, saved, ctx.n, ctx.k, dact, ctx.precision, need_x, need_w, need_b)
        if not torch.is_grad_enabled():
            return (*_backward(grad_y, *args), None, None)
        if dact == "saved":
            # Raised here, not deferred to a node that fails when differentiated (torch's
            # once_differentiable): such a node hangs off fresh leaves, so
            # torch.autograd.grad(..., inputs=(x, W)) would prune it and silently return
            # gradients without the second-order terms.
            raise RuntimeError(
                f"linear with activation {ctx.activation!r} has no double backward: "
                f"create_graph=True asks for differentiable gradients, which need the "
                f"activation's second derivative at the pre-activation, and the kernels do not "
                f"save it. Use activation None or 'relu' (both support second order), the "
                f"eager torch chain, or a backward without create_graph")
        return (*_differentiable_backward(grad_y, *args), None, None)


# -------------------------------------------------------------------------------- public API

def _check_inputs(x, weight, bias) -> None:
    check_operand("x", x, dtypes=DTYPES)
    check_operand("weight", weight, 2, dtypes=DTYPES)
    if x.dim() == 0:
        raise ValueError("x must have shape (..., in_features), got a 0-D tensor")
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features in its last dimension (shape "
                         f"{tuple(x.shape)}) but weight {tuple(weight.shape)} expects "
                         f"in_features = {k}: x.shape[-1] must equal weight.shape[1]")
    tensors = {"x": x, "weight": weight}
    if bias is not None:
        check_operand("bias", bias, dtypes=DTYPES)
        if tuple(bias.shape) != (n,):
            raise ValueError(f"bias must have shape ({n},) (weight's out_features), got "
                             f"{tuple(bias.shape)}")
        tensors["bias"] = bias
    for name, t in tensors.items():
        if t.dtype != x.dtype:
            raise ValueError(f"{name} is {dtype_name(t.dtype)} but x is {dtype_name(x.dtype)}; "
                             f"linear expects x, weight and bias in one dtype")
    check_same(**tensors)
    if x.dtype == torch.float64 and x.device.type == "cuda":
        # The kernels' tile configs are sized for 2- and 4-byte elements (fp64 tiles overflow
        # shared memory), and fp64 exists here only so gradcheck can run on the interpreter.
        raise TypeError("float64 is supported on the interpreter backend only (for "
                        "torch.autograd.gradcheck); on CUDA use float16, bfloat16 or float32")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str | None = None, *, input_precision: str | None = None
           ) -> torch.Tensor:
    """y = act(x W^T + b), like ``act(torch.nn.functional.linear(x, weight, bias))``.

    x: (..., K), any leading dimensions and strides. weight: (N, K). bias: (N,) or None.
    activation: None, "relu", "gelu" (erf), "gelu_tanh" or "silu". All three tensors share
    one dtype (float16, bfloat16, float32; float64 for verification) and device. Returns
    (..., N) in that dtype.

    Differentiable in x, weight and bias through Triton kernels (see the module docstring);
    without autograd (``torch.no_grad``, ``torch.inference_mode``, or no input requiring
    grad) only the fused forward kernel runs and nothing is saved. Second-order gradients
    (``create_graph=True``) are supported without an activation and with ReLU; for GELU and
    SiLU such a backward raises a RuntimeError. ``input_precision``
    ("ieee" or "tf32") applies to float32 as in :func:`tritonlab.kernels.matmul`.
    """
    act = normalize_activation(activation)
    _check_inputs(x, weight, bias)
    precision = precision_for(x.dtype, input_precision)
    if torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, weight, bias)):
        return _LinearFunction.apply(x, weight, bias, act, precision)
    return _forward(x, weight, bias, act, precision, save_dact=False)[0]


class Linear(torch.nn.Linear):
    """A drop-in ``torch.nn.Linear`` (same constructor, parameters, initialisation and
    state_dict) whose forward runs :func:`linear`, with an optional fused ``activation``.
    Unlike ``torch.nn.Linear`` followed by GELU or SiLU, a backward with
    ``create_graph=True`` through it raises a RuntimeError (see :func:`linear`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=None, *, activation: str | None = None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.activation = None if activation is None else normalize_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.activation)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={self.activation}"

