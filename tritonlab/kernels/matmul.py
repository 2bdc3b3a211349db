"""matmul: C = A @ B, the lab's forward GEMM.

A tiled kernel written for performance: grouped program ordering for L2 reuse, fp32
accumulation, a software-pipelined K loop (``num_stages``), masked edges for any M, N, K, any
strides (transposed and non-contiguous operands are read in place, never copied), and int64
addressing switched on only for tensors whose offsets overflow int32.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from tritonlab.kernels._gemm import (
    check_matmul_operands,
    gemm_configs,
    mnk,
    needs_int64,
    precision_for,
    tile_offsets,
)
from tritonlab.kernels._splitk import DECODE_MAX_M, launch_splitk, prepare_out
from tritonlab.kernels._splitk import compile_targets as splitk_targets
from tritonlab.kernels.tuning import LastConfig, TunedKernel
from tritonlab.ops.contract import Impl, OpSpec, reduction_tolerance

__all__ = ["matmul", "SPEC"]


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


_MATMUL = TunedKernel(
    _matmul_fwd_kernel,
    key=["M", "N", "K", "stride_am", "stride_ak", "stride_bk", "stride_bn", "INPUT_PRECISION"],
    configs=gemm_configs,
    heuristics={"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0},
)


_LAST = LastConfig()


def _grid(M: int, N: int):
    return lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)


def matmul(a: torch.Tensor, b: torch.Tensor, *, input_precision: str | None = None,
           out: torch.Tensor | None = None, splitk: bool | None = None) -> torch.Tensor:
    """C = A @ B with A (M, K) and B (K, N), both float16, bfloat16 or float32, any strides.

    Returns C (M, N) in the inputs' dtype (or writes ``out``, which may be a strided view).
    ``input_precision`` applies to float32: ``"ieee"`` (exact fp32 products) or ``"tf32"``;
    by default it follows ``torch.backends.cuda.matmul.allow_tf32`` like torch.matmul.
    Accumulation is always fp32. ``splitk``: None sends decode-sized M (at most
    ``DECODE_MAX_M`` = 16 rows) to the split-K kernel of :mod:`._splitk`, which keeps every SM
    busy where the tiled kernel would run one program per column tile; True/False force it.
    """
    M, N, K = check_matmul_operands(a, b)
    precision = precision_for(a.dtype, input_precision)
    out, _ = prepare_out(out, a, (M,), N)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()
    if (M <= DECODE_MAX_M) if splitk is None else splitk:
        _LAST.value = launch_splitk(a, b, out, precision=precision)
        return out
    _MATMUL.launch(
        _grid(M, N), a.dtype,
        a, b, out, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        INPUT_PRECISION=precision, USE_INT64=needs_int64(a, b, out),
    )
    _LAST.tiled(_MATMUL)
    return out


# ----------------------------------------------------------------------------- the op's SPEC

_LLAMA3_8B_KN = [(4096, 4096), (4096, 14336), (14336, 4096), (4096, 1024)]



PRESETS = {
    # tiny: interpreter-sized, odd on purpose so every edge mask is exercised.
    "tiny": [mnk(64, 64, 64), mnk(97, 83, 131), mnk(1, 130, 75), mnk(128, 192, 96)],
    "quick": [mnk(512, 512, 512), mnk(2048, 2048, 2048), mnk(4096, 4096, 4096),
              mnk(16, 4096, 4096), mnk(4096, 14336, 4096)],
    "square": [mnk(s, s, s) for s in (256, 512, 1024, 2048, 3072, 4096, 6144, 8192)],
    # llm: Llama-3-8B projections (K -> N) at decode (M = 1..16) and prefill (2048..16384).
    "llm": [mnk(m, n, k) for m in (1, 16, 2048, 8192, 16384) for (k, n) in _LLAMA3_8B_KN],
}


def make_inputs(shape, dtype, device, seed):
    """A (M, K) and B (K, N) with N(0, 1) entries scaled by K^-1/4 each, so C has unit-scale
    entries like the activations of a real layer."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    m, n, k = shape["M"], shape["N"], shape["K"]
    scale = k ** -0.25
    a = (torch.randn(m, k, generator=g) * scale).to(device=device, dtype=dtype)
    b = (torch.randn(k, n, generator=g) * scale).to(device=device, dtype=dtype)
    return {"a": a, "b": b}


def reference(inputs, mode):
    return (inputs["a"].double() @ inputs["b"].double(),)


def flops(shape, mode):
    return 2 * shape["M"] * shape["N"] * shape["K"]


def bytes_moved(shape, dtype, mode):
    s = torch.empty((), dtype=dtype).element_size()
    m, n, k = shape["M"], shape["N"], shape["K"]
    return s * (m * k + k * n + m * n)


def tolerance(dtype, shape, mode):
    return reduction_tolerance(dtype, shape["K"],
                               tf32=precision_for(dtype, None) == "tf32")


def _build_triton(inputs, mode):
    a, b = inputs["a"], inputs["b"]
    out = torch.empty((a.shape[0], b.shape[1]), dtype=a.dtype, device=a.device)
    return lambda: (matmul(a, b, out=out),)


def _build_torch(inputs, mode):
    a, b = inputs["a"], inputs["b"]
    out = torch.empty((a.shape[0], b.shape[1]), dtype=a.dtype, device=a.device)
    return lambda: (torch.matmul(a, b, out=out),)


def compile_targets(dtype):
    """What ``tritonlab inspect`` compiles: the tiled kernel as launched on a row-major 4096^3
    problem (unit strides become constants, as Triton's JIT specialises them), and the
    split-K decode path that M <= DECODE_MAX_M takes, at M = 16 with the same row-major B."""
    n = 4096
    tiled = _MATMUL.compile_target("fwd", dtype, dict(
        M=n, N=n, K=n, stride_am=n, stride_ak=1, stride_bk=n, stride_bn=1, stride_cm=n,
        stride_cn=1, INPUT_PRECISION=precision_for(dtype, None), USE_INT64=False))
    partial, *reduce = splitk_targets("decode", dtype, DECODE_MAX_M, n, n)
    row_major_b = dict(stride_bk=n, stride_bn=1, stride_b2k=n, stride_b2n=1)
    return [tiled, dataclasses.replace(partial, values={**partial.values, **row_major_b}),
            *reduce]


SPEC = OpSpec(
    name="matmul",
    description="C = A @ B (forward GEMM), fp32 accumulation, any layout",
    dims=("M", "N", "K"),
    presets=PRESETS,
    impls=(
        Impl("triton", "triton", _build_triton, "tiled Triton GEMM, grouped ordering, autotuned",
             config=_LAST),
        Impl("torch", "baseline", _build_torch, "torch.matmul (cuBLAS on CUDA)"),
    ),
    modes=("fwd", "infer"),
    make_inputs=make_inputs,
    reference=reference,
    flops=flops,
    bytes=bytes_moved,
    tolerance=tolerance,
    compile_targets=compile_targets,
)
