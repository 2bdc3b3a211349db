"""Pieces shared by the GEMM-family kernels (matmul, linear, the fused inference ops):
program-to-tile mapping, the tensor-descriptor (TMA) operand loads of the persistent main
loop, per-architecture autotune config lists, and operand checks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from tritonlab import backend
from tritonlab.kernels.tuning import hopper_class

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INT32_MAX = 2**31 - 1


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``, for error messages."""
    return str(dtype).removeprefix("torch.")


@triton.jit
def grouped_tile(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Map a linear program id to a (pid_m, pid_n) output tile.

    Programs walk GROUP_M tile-rows at a time, column by column, so that programs running
    together share the same A row-panels and B column-panels in L2 (the "grouped ordering" of
    Triton's matmul tutorial). Returns the tile's row and column indices.
    """
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
    pid_in_group = pid % num_pid_in_group
    pid_m = first_pid_m + (pid_in_group % group_size_m)
    pid_n = pid_in_group // group_size_m
    return pid_m, pid_n


@triton.jit
def tile_offsets(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, USE_INT64: tl.constexpr):
    """The index vectors of program ``pid``'s output tile (ordered by :func:`grouped_tile`).

    Returns (offs_m, offs_n, rows, cols, offs_k): offs_m (BLOCK_M,) and offs_n (BLOCK_N,) are
    the tile's int32 row and column indices, for the store mask; rows = offs_m % M and
    cols = offs_n % N are the indices to *load* with: rows/columns past the edge wrap onto
    valid memory, so operand loads need no M/N mask, and what they compute lands only in
    outputs that are never stored. offs_k = arange(BLOCK_K). With USE_INT64, rows, cols and
    offs_k are int64 so that index * stride cannot overflow.
    """
    pid_m, pid_n = grouped_tile(pid, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_m % M
    cols = offs_n % N
    if USE_INT64:
        rows = rows.to(tl.int64)
        cols = cols.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    return offs_m, offs_n, rows, cols, offs_k


@triton.jit
def operand_desc(ptr, ROWS, COLS, stride_rows, stride_cols, BLOCK_ROWS: tl.constexpr,
                 BLOCK_COLS: tl.constexpr, TRANS: tl.constexpr):
    """A tensor descriptor (TMA on sm_90+) for a ROWS x COLS operand read in BLOCK_ROWS x
    BLOCK_COLS tiles.

    A descriptor needs a contiguous last dimension, so an operand is described in the
    orientation in which it is contiguous: row-major (stride_cols == 1, TRANS=False) as
    itself, column-major (stride_rows == 1, TRANS=True) as its transpose, a COLS x ROWS
    row-major tensor read in BLOCK_COLS x BLOCK_ROWS tiles; :func:`desc_tile` undoes the
    transpose in registers (free: wgmma reads either orientation from shared memory).
    Out-of-bounds elements of a tile load as zeros, so neither edges nor the K tail need a
    mask. Base and leading stride must be 16-byte aligned (checked by the launcher).
    """
    if TRANS:
        desc = tl.make_tensor_descriptor(ptr, shape=[COLS, ROWS], strides=[stride_cols, 1],
                                         block_shape=[BLOCK_COLS, BLOCK_ROWS])
    else:
        desc = tl.make_tensor_descriptor(ptr, shape=[ROWS, COLS], strides=[stride_rows, 1],
                                         block_shape=[BLOCK_ROWS, BLOCK_COLS])
    return desc


@triton.jit
def desc_tile(desc, row, col, TRANS: tl.constexpr):
    """The (BLOCK_ROWS, BLOCK_COLS) tile at (row, col) of an operand described by
    :func:`operand_desc` with the same TRANS."""
    if TRANS:
        tile = desc.load([col, row]).T
    else:
        tile = desc.load([row, col])
    return tile


@triton.jit
def halves(t, ROWS: tl.constexpr, COLS: tl.constexpr):
    """The left and right column halves of a ROWS x COLS tile."""
    return tl.split(tl.permute(tl.reshape(t, (ROWS, 2, COLS // 2)), (0, 2, 1)))


def _cfg(bm, bn, bk, stages, warps, group=8, **extra) -> triton.Config:
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": group, **extra},
                         num_stages=stages, num_warps=warps)


def gemm_configs(capability: tuple[int, int], dtype: torch.dtype) -> list[triton.Config]:
    """Autotune candidates for a GEMM tile kernel on a GPU of compute ``capability``.

    Hopper class (:func:`~tritonlab.kernels.tuning.hopper_class`: 9.x, 10.x) gets large
    128x256 / 256x128 tiles with 8 warps (two warpgroups, so wgmma has work for both) and 3-4
    stages that fit 228 KB of shared memory; Ampere/Ada (8.x, and consumer Blackwell 12.x) gets
    the 128x128 family with 3-4 stages for 164 KB (A100) or 100 KB (Ada); its default has 8
    warps because with 4 the fused-epilogue kernels (linear's gelu_tanh forward) spill on
    sm_80 (seen with ``tritonlab inspect``: 56 bytes of spill at 255 registers). fp32 operands are
    twice as wide, so their K tile is halved to keep the same shared-memory footprint.
    The first entry is the default used when autotuning is turned off.
    """
    major = capability[0]
    if hopper_class(capability):
        configs = [
            _cfg(128, 256, 64, 3, 8), _cfg(256, 128, 64, 3, 8), _cfg(128, 128, 64, 4, 8),
            _cfg(128, 128, 64, 4, 4), _cfg(64, 256, 64, 4, 4), _cfg(128, 64, 64, 4, 4),
            _cfg(64, 128, 64, 4, 4), _cfg(64, 64, 64, 5, 4),
        ]
    elif major >= 8:
        configs = [
            _cfg(128, 128, 32, 4, 8), _cfg(128, 256, 32, 3, 8), _cfg(256, 128, 32, 3, 8),
            _cfg(128, 128, 32, 4, 4), _cfg(128, 128, 64, 3, 4), _cfg(128, 64, 32, 4, 4),
            _cfg(64, 128, 32, 4, 4), _cfg(64, 64, 32, 5, 2),
        ]
    else:
        configs = [_cfg(128, 128, 32, 2, 4), _cfg(64, 64, 32, 2, 4)]
    if dtype == torch.float32:
        configs = [triton.Config({**c.kwargs, "BLOCK_K": max(16, c.kwargs["BLOCK_K"] // 2)},
                                 num_stages=c.num_stages, num_warps=c.num_warps)
                   for c in configs]
    return configs


def max_offset(t: torch.Tensor) -> int:
    """The largest element offset a kernel computes for ``t`` (sum of (size-1)*stride)."""
    return sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0)


def needs_int64(*tensors: torch.Tensor) -> bool:
    """True when some offset into one of ``tensors`` does not fit in int32: the kernels then
    compute addresses in int64 (slower, so only when needed)."""
    return any(max_offset(t) > INT32_MAX for t in tensors)


def check_operand(name: str, t: object, ndim: int | None = None,
                  dtypes: Sequence[torch.dtype] = SUPPORTED_DTYPES) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} has dtype {dtype_name(t.dtype)}; supported: "
                        f"{', '.join(dtype_name(d) for d in dtypes)}")
    return t


def check_same(**tensors: torch.Tensor) -> None:
    """All tensors share one dtype and one device, and that device is the backend's."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {dtype_name(t.dtype)} but {first_name} has "
                            f"{dtype_name(first.dtype)}; they must match")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; "
                             f"they must be on the same device")
    want = backend.current().device
    if first.device.type != want:
        raise ValueError(f"tensors are on {first.device} but the {backend.current().name} "
                         f"backend runs on {want}")


def check_no_grad(op: str, **tensors: torch.Tensor | None) -> None:
    """Refuse to run an inference-only kernel where autograd would record it: with grad mode
    on and an input requiring grad, its output would have no grad_fn and a later backward
    would silently treat it as a constant. Raises RuntimeError naming the op and the input."""
    if not torch.is_grad_enabled():
        return
    for name, t in tensors.items():
        if t is not None and t.requires_grad:
            raise RuntimeError(
                f"{op} is an inference kernel with no backward, but {name} requires grad "
                f"with grad mode on, so its gradient would be silently missing; call {op} "
                f"under torch.no_grad() or torch.inference_mode(), or pass {name}.detach()")


def check_matmul_operands(a: object, b: object) -> tuple[int, int, int]:
    """Validate A (M, K) and B (K, N) of a matmul and return (M, N, K)."""
    check_operand("a", a, 2)
    check_operand("b", b, 2)
    check_same(a=a, b=b)
    M, K = a.shape
    if b.shape[0] != K:
        raise ValueError(f"inner dimensions differ: a is {tuple(a.shape)} and b is "
                         f"{tuple(b.shape)}; a.shape[1] must equal b.shape[0]")
    return M, b.shape[1], K


def precision_for(dtype: torch.dtype, input_precision: str | None) -> str:
    """The ``tl.dot`` input precision: explicit, else TF32 for fp32 only where torch allows
    it (``torch.backends.cuda.matmul.allow_tf32``), so the kernel matches torch.matmul."""
    valid = ("ieee", "tf32")
    if input_precision is not None and input_precision not in valid:
        raise ValueError(f"input_precision must be one of {valid}, got {input_precision!r}")
    if dtype != torch.float32:
        return "ieee"
    if input_precision is not None:
        return input_precision
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"

