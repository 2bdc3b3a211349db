"""Typed records of a sweep: the :class:`Point` measured, the :class:`ResultRow` written to
``results.jsonl`` for each of its implementations (docs/design.md, "The run directory"), and
the :class:`PointKey` that pairs rows across runs.

A row stays a plain ``dict`` at run time (``ResultRow`` is a ``TypedDict``), so the JSON on
disk is exactly what it was and rows from older runs, which may lack later fields, still
load; the type says which keys a row of this version carries and what they hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, NotRequired, TypedDict

import torch

from tritonlab.ops.contract import Impl, OpSpec, Shape, dtype_name

SCHEMA_VERSION = 1


class ResultRow(TypedDict):
    """One line of ``results.jsonl``: one implementation at one point.

    Times are milliseconds; ``ms`` is the median of ``samples_ms`` and ``ms_ci`` its
    bootstrap 95% interval. Fields that do not apply or were not measured are None (a point
    that failed keeps its ``error`` and nulls). ``speedup`` maps each baseline timed at the
    point to baseline ms / this ms (Triton rows only).
    """

    schema_version: int
    op: str
    impl: str
    kind: str  # "triton" or "baseline"
    mode: str
    dtype: str
    shape: dict[str, int]
    backend: str
    device: str  # the device's model name, as the driver reports it (the CPU's under the interpreter)
    # Where the row was measured: the host, and the GPU by model name and UUID (``gpu_name``
    # is ``device`` on every backend; ``gpu_uuid`` is None on the CPU). A cluster sweep's
    # rows come from many hosts and GPUs; a local sweep's all carry the one it ran on.
    node: str | None
    gpu_name: str | None
    gpu_uuid: str | None
    seed: int
    flops: int
    bytes: int
    intensity: float | None
    unfused_bytes: int | None
    ms: float | None
    ms_ci: list[float] | None
    iqr_ms: float | None
    rel_ci: float | None
    samples_ms: list[float]
    n_samples: int
    stop_reason: str | None
    calls_per_round: int | None
    host_ms: float | None
    launch_bound: bool | None
    tflops: float | None
    gbps: float | None
    correct: bool | None
    max_rel_err: float | None
    rel_fro_err: float | None
    speedup: dict[str, float] | None
    roofline_tflops: float | None
    pct_roofline: float | None
    roofline_tflops_measured: float | None
    pct_roofline_measured: float | None
    config: dict[str, Any] | None
    autotune_timings: dict[str, Any] | None
    tf32: bool | None
    timer: str
    cache: str
    graph: bool
    graph_error: str | None
    warmup_calls: int | None
    settled: bool | None
    clocks_start: dict[str, Any] | None
    clocks_end: dict[str, Any] | None
    throttled: bool | None
    error: str | None
    time: str | None
    # Present when ceilings were known (tritonlab.report.roofline.annotate_row).
    roofline_bound: NotRequired[str | None]
    roofline_bound_measured: NotRequired[str | None]
    # On a cluster sweep's rows that were measured again after their worker died: why.
    retried_after: NotRequired[str]
    # Added by point hooks on a GPU (tritonlab.runs.point_hooks) or by hooks of the caller.
    static: NotRequired[dict[str, Any]]
    counters: NotRequired[dict[str, Any]]
    hook_errors: NotRequired[dict[str, str]]
    # Computed by the report for fused ops, never written by the sweep.
    unfused_intensity: NotRequired[float]


class PointKey(NamedTuple):
    """What identifies a row across runs: (op, impl, mode, dtype, shape as (dim, size)...)."""

    op: str
    impl: str
    mode: str
    dtype: str
    shape: tuple[tuple[str, int], ...]

    def __str__(self) -> str:
        return (f"{self.op} {self.impl} {self.mode} {self.dtype} "
                f"{'x'.join(str(v) for _, v in self.shape)}")


def shape_str(shape: Mapping[str, int]) -> str:
    """``4096x4096x4096``: a shape in its op's dimension order."""
    return "x".join(str(v) for v in shape.values())


def point_key(row: Mapping) -> PointKey:
    """The :class:`PointKey` of a row (KeyError, TypeError or ValueError when it has none)."""
    return PointKey(row["op"], row["impl"], row["mode"], row["dtype"],
                    tuple((k, int(v)) for k, v in row["shape"].items()))


@dataclass(frozen=True)
class Point:
    """One (op, mode, dtype, shape) and the implementations to measure there."""

    op: OpSpec
    mode: str
    dtype: torch.dtype
    shape: Shape
    impls: tuple[Impl, ...]

    def key(self, impl: Impl) -> PointKey:
        return PointKey(self.op.name, impl.name, self.mode, dtype_name(self.dtype),
                        tuple((k, int(v)) for k, v in self.shape.items()))

    @property
    def label(self) -> str:
        return f"{self.op.name} {self.mode} {dtype_name(self.dtype)} {shape_str(self.shape)}"

    def range_name(self, impl: Impl) -> str:
        """The NVTX range of ``impl``'s timed calls at this point, so that a Nsight Systems
        capture shows which kernel ran where: ``tritonlab:matmul/triton/fwd/float16/64x64x64``."""
        return (f"tritonlab:{self.op.name}/{impl.name}/{self.mode}/{dtype_name(self.dtype)}/"
                f"{shape_str(self.shape)}")


def blank_row(point: Point, impl: Impl, *, backend: str, device: str, seed: int, timer: str,
              cache: str, node: str | None = None, gpu_uuid: str | None = None) -> ResultRow:
    """The row of ``impl`` at ``point`` before anything is measured: identity, where it is
    measured (``device`` is also the row's ``gpu_name``), the op's FLOP and byte formulas,
    and None in every measured field."""
    op, shape, mode, dtype = point.op, point.shape, point.mode, point.dtype
    flops = int(op.flops(shape, mode))
    nbytes = int(op.bytes(shape, dtype, mode))
    return ResultRow(
        schema_version=SCHEMA_VERSION, op=op.name, impl=impl.name, kind=impl.kind, mode=mode,
        dtype=dtype_name(dtype), shape=dict(shape), backend=backend, device=device,
        node=node, gpu_name=device, gpu_uuid=gpu_uuid, seed=seed,
        flops=flops, bytes=nbytes, intensity=flops / nbytes if nbytes else None,
        unfused_bytes=int(op.unfused_bytes(shape, dtype, mode)) if op.fused else None,
        ms=None, ms_ci=None, iqr_ms=None, rel_ci=None, samples_ms=[], n_samples=0,
        stop_reason=None, calls_per_round=None, host_ms=None, launch_bound=None,
        tflops=None, gbps=None, correct=None, max_rel_err=None, rel_fro_err=None,
        speedup=None, roofline_tflops=None, pct_roofline=None,
        roofline_tflops_measured=None, pct_roofline_measured=None,
        config=None, autotune_timings=None,
        # fp32 GEMMs (the Triton kernels' default and torch.matmul) follow this flag.
        tf32=bool(torch.backends.cuda.matmul.allow_tf32) if dtype == torch.float32 else None,
        timer=timer, cache=cache, graph=False, graph_error=None, warmup_calls=None,
        settled=None, clocks_start=None, clocks_end=None, throttled=None, error=None,
        time=None,
    )
