"""matmul: C = A @ B, the lab's forward GEMM.

A tiled kernel written for performance: grouped program ordering for L2 reuse, fp32
accumulation, a software-pipelined K loop (``num_stages``), masked edges for any M, N, K, any
strides (transposed and non-contiguous operands are read in place, never copied), and int64
addressing switched on only for tensors whose offsets overflow int32.

Dispatch (docs/matmul.md): decode-sized M (<= 16) runs the split-K kernel of
:mod:`._splitk`; on the Hopper class (sm_90, sm_100) every other problem whose operands a
tensor descriptor can take (one unit stride, 16-byte aligned base and leading stride, C
row-major) runs the persistent TMA kernel of :mod:`._persistent`, anything else the tiled
kernel below, with the reason recorded in ``MATMUL_LAST`` (``"fallback"``). Ampere/Ada,
consumer Blackwell and the interpreter run the tiled
kernel unless ``path="persistent"`` asks for the persistent one (the CPU tests check it that
way). ``MATMUL_LAST()["path"]`` says which ran, and the sweep records it in every row.

Differentiable: with grad mode on and an input requiring grad, :func:`matmul` runs through
an autograd.Function whose backward is the same kernel on transposed views,
dA = dC B^T and dB = A^T dC, each launched only when autograd asks for it. The backward
calls :func:`matmul` itself, so under ``create_graph=True`` the gradients are again
differentiable (to any order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tritonlab.errors import UsageError
from tritonlab.kernels._gemm import (
    check_matmul_operands,
    gemm_configs,
    needs_int64,
    precision_for,
    tile_offsets,
)
from tritonlab.kernels._persistent import descriptor_problem, launch_persistent, tma_device
from tritonlab.kernels._splitk import DECODE_MAX_M, launch_splitk, prepare_out
from tritonlab.kernels.tuning import LastConfig, TunedKernel

__all__ = ["matmul", "MATMUL_KERNEL", "MATMUL_LAST", "PATHS", "persistent_problem"]


@triton.jit
def _matmul_fwd_kernel(
    a_ptr, b_ptr, c_ptr,
    M, N, K,
    stride_am, stride_ak,
    stride_bk, stride_bn,
    stride_cm, stride_cn,
    INPUT_PRECISION: tl.constexpr,
    USE_INT64: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """C[M, N] = A[M, K] @ B[K, N], one BLOCK_M x BLOCK_N tile of C per program.

    a_ptr: A, shape (M, K), strides (stride_am, stride_ak), any layout.
    b_ptr: B, shape (K, N), strides (stride_bk, stride_bn), any layout.
    c_ptr: C, shape (M, N), strides (stride_cm, stride_cn); written once, cast from fp32.
    INPUT_PRECISION: "ieee" or "tf32", used by tl.dot for fp32 operands only.
    USE_INT64: compute element offsets in int64 (set when a tensor spans >= 2^31 elements).
    EVEN_K: K is a multiple of BLOCK_K, so the K loop needs no mask.
    Grid: (cdiv(M, BLOCK_M) * cdiv(N, BLOCK_N),), tiles ordered by ``grouped_tile``.

    Rows of A and columns of B past the edge are wrapped (``% M``, ``% N``) instead of masked:
    they load valid memory whose products land only in rows/columns of C that are never
    stored, which keeps the loads unmasked and vectorisable. Accumulates in fp32.
    """
    pid = tl.program_id(0)
    offs_m, offs_n, rows, cols, offs_k = tile_offsets(pid, M, N, BLOCK_M, BLOCK_N, BLOCK_K,
                                                      GROUP_M, USE_INT64)
    a_ptrs = a_ptr + rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + cols[None, :] * stride_bn
    if USE_INT64:
        a_step = tl.cast(stride_ak, tl.int64) * BLOCK_K
        b_step = tl.cast(stride_bk, tl.int64) * BLOCK_K
    else:
        a_step = stride_ak * BLOCK_K
        b_step = stride_bk * BLOCK_K

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += a_step
        b_ptrs += b_step

    c_rows = offs_m
    c_cols = offs_n
    if USE_INT64:
        c_rows = c_rows.to(tl.int64)
        c_cols = c_cols.to(tl.int64)
    c_ptrs = c_ptr + c_rows[:, None] * stride_cm + c_cols[None, :] * stride_cn
    mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask)


# The tiled kernel and the config of matmul's last call (tiled or split-K), public for the op
# declaration (compile targets, Impl.config).
MATMUL_KERNEL = TunedKernel(
    _matmul_fwd_kernel,
    key=["M", "N", "K", "stride_am", "stride_ak", "stride_bk", "stride_bn", "INPUT_PRECISION"],
    configs=gemm_configs,
    heuristics={"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0},
)

MATMUL_LAST = LastConfig()


def _grid(M: int, N: int):
    return lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)


# The values of matmul's ``path`` argument (None: choose, see the module docstring).
PATHS = ("tiled", "persistent")


def persistent_problem(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> str | None:
    """Why the persistent kernel cannot take these operands (the tensor-descriptor rules of
    :func:`descriptor_problem`), or None."""
    return (descriptor_problem("a", a) or descriptor_problem("b", b)
            or descriptor_problem("out", out, row_major=True))


def _choose_path(a, b, out, path: str | None) -> tuple[str, str | None]:
    """(path to run, why the persistent kernel was not taken or None) outside split-K."""
    if path == "tiled":
        return "tiled", None
    problem = persistent_problem(a, b, out)
    if path == "persistent":
        if problem:
            raise UsageError(f"matmul(path='persistent') cannot read these operands through "
                             f"tensor descriptors: {problem}; pass path='tiled' or None "
                             f"(which falls back to the tiled kernel)")
        return "persistent", None
    if not tma_device(a.device):
        return "tiled", None
    return ("tiled", problem) if problem else ("persistent", None)


def _launch(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None, precision: str,
            splitk: bool | None, path: str | None) -> torch.Tensor:
    """C = A @ B on validated operands (see :func:`matmul`), into ``out`` or a new tensor."""
    M, K = a.shape
    N = b.shape[1]
    out, _ = prepare_out(out, a, (M,), N)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()
    if (M <= DECODE_MAX_M and path is None) if splitk is None else splitk:
        MATMUL_LAST.value = launch_splitk(a, b, out, precision=precision)
        return out
    chosen, fallback = _choose_path(a, b, out, path)
    if chosen == "persistent":
        MATMUL_LAST.value = launch_persistent(a, b, out, precision=precision)
        return out
    MATMUL_KERNEL.launch(
        _grid(M, N), a.dtype,
        a, b, out, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        INPUT_PRECISION=precision, USE_INT64=needs_int64(a, b, out),
    )
    MATMUL_LAST.tiled(MATMUL_KERNEL)
    if fallback:
        MATMUL_LAST.value["fallback"] = fallback
    return out


class _MatmulFunction(torch.autograd.Function):
    """C = A @ B with backward dA = dC B^T, dB = A^T dC, both by :func:`matmul` on
    transposed views (read in place, whatever their strides). Saves B only when dA is
    needed and A only when dB is. The backward's matmuls are themselves differentiable
    when autograd records them (``create_graph=True``)."""

    @staticmethod
    def forward(ctx, a, b, precision, splitk, path):
        need_a, need_b = ctx.needs_input_grad[:2]
        ctx.save_for_backward(a if need_b else None, b if need_a else None)
        ctx.precision = precision
        return _launch(a, b, None, precision, splitk, path)

    @staticmethod
    def backward(ctx, grad_c):
        a, b = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[:2]
        grad_a = matmul(grad_c, b.t(), input_precision=ctx.precision) if need_a else None
        grad_b = matmul(a.t(), grad_c, input_precision=ctx.precision) if need_b else None
        return grad_a, grad_b, None, None, None


def matmul(a: torch.Tensor, b: torch.Tensor, *, input_precision: str | None = None,
           out: torch.Tensor | None = None, splitk: bool | None = None,
           path: str | None = None) -> torch.Tensor:
    """C = A @ B with A (M, K) and B (K, N), both float16, bfloat16 or float32, any strides.

    Returns C (M, N) in the inputs' dtype (or writes ``out``, which may be a strided view).
    ``input_precision`` applies to float32: ``"ieee"`` (exact fp32 products) or ``"tf32"``;
    by default it follows ``torch.backends.cuda.matmul.allow_tf32`` like torch.matmul.
    Accumulation is always fp32. ``splitk``: None sends decode-sized M (at most
    ``DECODE_MAX_M`` = 16 rows) to the split-K kernel of :mod:`._splitk`, which keeps every SM
    busy where the tiled kernel would run one program per column tile; True/False force it.
    ``path``: None chooses by the dispatch rule of the module docstring (the persistent TMA
    kernel on the Hopper class when the operands allow it, else the tiled one); "tiled" or
    "persistent" force that kernel for every M (a forced "persistent" raises UsageError
    for operands a tensor descriptor cannot take). ``MATMUL_LAST()`` records the path run.

    Differentiable in a and b (see the module docstring) unless ``out`` is given: like
    ``torch.matmul(..., out=...)``, writing into ``out`` is refused with a RuntimeError
    when autograd would have to record it.
    """
    check_matmul_operands(a, b)
    if path is not None and path not in PATHS:
        raise UsageError(f"unknown matmul path {path!r}; valid: None (choose), "
                         + ", ".join(repr(p) for p in PATHS))
    precision = precision_for(a.dtype, input_precision)
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        if out is not None:
            raise RuntimeError("matmul(out=...) does not support autograd: a or b requires "
                               "grad with grad mode on; drop out= to get a differentiable "
                               "result, or call it under torch.no_grad() / "
                               "torch.inference_mode()")
        return _MatmulFunction.apply(a, b, precision, splitk, path)
    return _launch(a, b, out, precision, splitk, path)
