"""Predicted points: the decoder layer's regimes over a grid (one row per target, regime and
grid point), and single op points such as a sweep's (from the op's own FLOPs and bytes).

A row carries the fields of a contrast phase that the verdict compares
(``step_tflops_median``, ``step_gbps_median``, ``footprint_bytes``, ``avg_power_w``,
``energy_per_token_j``) beside the prediction's own (``time_s``, ``bound``, ...), and
``predicted: True``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tritonlab.errors import UsageError
from tritonlab.predict import layer as L
from tritonlab.predict.model import DEFAULT_EFFICIENCY, Efficiency, StepPrediction, predict_step
from tritonlab.predict.targets import DTYPES, Target

# The contrast's GPU grid (contrast.layer.LAYER_DEFAULTS["cuda"]): one 2k sequence for
# training and prefill, decode from one sequence to a serving batch at a 4k context.
DEFAULT_GRID = {"train": ((1,), (2048,)), "prefill": ((1,), (2048,)),
                "decode": ((1, 64), (4096,))}
SECOND = {"train": "seq", "prefill": "prompt", "decode": "context"}


@dataclass(frozen=True)
class Grid:
    """What to predict: the layer size and count, the dtype, the regimes, each regime's
    (batch, second) points (second: training sequence, prompt or decode context) and the KV
    caches' capacity per sequence."""

    model_size: str
    n_layers: int
    dtype: str
    regimes: tuple[str, ...]
    points: Mapping[str, tuple[tuple[int, int], ...]]
    max_seq: int

    def config(self) -> L.LayerConfig:
        return L.LayerConfig.from_size(self.model_size)

    def to_dict(self) -> dict:
        return {"model_size": self.model_size, "n_layers": self.n_layers, "dtype": self.dtype,
                "regimes": list(self.regimes), "max_seq": self.max_seq,
                "points": {r: [list(p) for p in self.points[r]] for r in self.regimes}}


def make_grid(*, model_size: str = "llama3-8b", n_layers: int | None = None,
              dtype: str = "bfloat16", regimes: Sequence[str] = (),
              batches: Mapping[str, Sequence[int]] | None = None,
              seconds: Mapping[str, Sequence[int]] | None = None,
              max_seq: int | None = None) -> Grid:
    """Check the options (UsageError naming the valid choices) and fill the defaults: the
    size's layer count (:data:`~tritonlab.predict.layer.MODEL_LAYERS`), every regime, the
    contrast's GPU grid (:data:`DEFAULT_GRID`; each regime's batches crossed with its
    sequences), ``max_seq`` the longest prompt or context + 1."""
    if model_size not in L.SIZES:
        raise UsageError(f"unknown model size {model_size!r}; valid sizes: "
                         f"{', '.join(L.SIZES)}")
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
    bad = [r for r in regimes if r not in L.REGIMES]
    if bad:
        raise UsageError(f"unknown regime {bad[0]!r}; valid regimes: {', '.join(L.REGIMES)}")
    regimes = tuple(dict.fromkeys(regimes)) or L.REGIMES
    batches, seconds = batches or {}, seconds or {}
    points = {}
    for r in L.REGIMES:
        b = tuple(dict.fromkeys(batches.get(r) or ())) or DEFAULT_GRID[r][0]
        s = tuple(dict.fromkeys(seconds.get(r) or ())) or DEFAULT_GRID[r][1]
        points[r] = tuple(itertools.product(b, s))
    longest = max([p for r in ("prefill",) if r in regimes for _, p in points[r]]
                  + [c + 1 for r in ("decode",) if r in regimes for _, c in points[r]] or [1])
    if max_seq is None:
        max_seq = longest
    elif longest > max_seq:
        raise UsageError(f"a prompt or context (+1 decoded token) of {longest} tokens is longer "
                         f"than the KV cache (--max-seq {max_seq}); use a larger --max-seq")
    return Grid(model_size, n_layers or L.MODEL_LAYERS[model_size], dtype, regimes, points,
                max_seq)


def _pct(value: float, peak: float | None) -> float | None:
    return 100 * value / peak if peak else None


def point_row(target: Target, regime: str, batch: int, second: int, grid: Grid,
              eff: Efficiency) -> dict:
    """One predicted (target, regime, grid point): the step's time, bound and kernels,
    tokens/s, % of the compute and bandwidth ceilings, footprint by part against the
    capacity and the largest batch that fits, power and energy per token."""
    cfg = grid.config()
    key, s = DTYPES[grid.dtype]
    peak = target.peak(grid.dtype)
    bw = target.ceilings.bandwidth_gbps
    ks = L.kernels(regime, cfg, grid.n_layers, batch, second, s)
    step = predict_step(ks, peak, bw, eff, target.power, key)
    tokens = L.tokens(regime, batch, second)
    fp = L.footprint(regime, cfg, grid.n_layers, batch, second, s, grid.max_seq)
    cap = target.capacity_bytes
    fits_batch = (L.largest_batch(regime, cfg, grid.n_layers, second, s, grid.max_seq, cap)
                  if cap else None)
    return {
        "predicted": True, "gpu": target.name, "regime": regime, "mode": regime,
        "name": f"{regime}/b{batch}{SECOND[regime][0]}{second}", "batch": batch,
        "seq": second, "second_is": SECOND[regime], "layers": grid.n_layers,
        "model_size": grid.model_size, "dtype": grid.dtype, "tokens": tokens,
        **_step_fields(step, tokens, peak, bw),
        "footprint": fp, "footprint_bytes": fp["total"], "capacity_bytes": cap,
        "capacity_pct": _pct(fp["total"], cap), "fits": None if cap is None else fp["total"] <= cap,
        "largest_batch": fits_batch,
        "efficiency": eff.to_dict(),
    }


def _step_fields(step: StepPrediction, tokens: int, peak: float, bw: float) -> dict:
    """The fields a step contributes to a row (shared by layer and op points)."""
    tflops = step.flops / step.time_s / 1e12
    gbps = step.bytes / step.time_s / 1e9
    return {
        "time_s": step.time_s, "ms": 1e3 * step.time_s, "bound": step.bound,
        "time_by_bound_s": step.time_by_bound, "flops": step.flops, "bytes": step.bytes,
        "intensity": step.flops / step.bytes if step.bytes else None,
        "tokens_per_s": tokens / step.time_s,
        "step_tflops_median": tflops, "step_gbps_median": gbps,
        "compute_peak_tflops": peak, "compute_pct": _pct(tflops, peak),
        "bandwidth_peak_gbps": bw, "bandwidth_pct": _pct(gbps, bw),
        "power_w": step.power_w, "avg_power_w": step.power_w, "energy_j": step.energy_j,
        "energy_per_token_j": None if step.energy_j is None else step.energy_j / tokens,
        "power_unavailable": step.power_reason,
        "kernels": [k.to_dict() for k in step.kernels],
    }


def layer_rows(target: Target, grid: Grid,
               efficiency: Mapping[str, Efficiency] | None = None) -> list[dict]:
    """Every regime and grid point of ``grid`` on ``target``, in regime then grid order."""
    eff = {**DEFAULT_EFFICIENCY, **(efficiency or {})}
    return [point_row(target, r, b, n, grid, eff[r])
            for r in grid.regimes for b, n in grid.points[r]]


# ------------------------------------------------------------------------------ op points

# Kernels one call of a mode launches, for the launch overhead: the forward one, the backward
# two (input and weight gradients, or attention's dQ and dK/dV), both three.
LAUNCHES = {"fwd": 1, "infer": 1, "bwd": 2, "fwd_bwd": 3}


def op_regime(op: str, mode: str) -> str:
    """The regime whose efficiencies an op point takes: ``decode`` for the decode ops,
    ``prefill`` for another op's inference path, ``train`` for forward and backward."""
    if op.startswith("decode"):
        return "decode"
    return "prefill" if mode == "infer" else "train"


def op_row(target: Target, *, op: str, mode: str, dtype: str, flops: int, nbytes: int,
           efficiency: Mapping[str, Efficiency] | None = None) -> dict:
    """One op call predicted from its FLOPs and compulsory bytes (the op contract's
    ``flops(shape, mode)`` and ``bytes(shape, dtype, mode)``, as a sweep row records them):
    one kernel group with the launches of :data:`LAUNCHES`, the efficiencies of
    :func:`op_regime`."""
    eff = {**DEFAULT_EFFICIENCY, **(efficiency or {})}[op_regime(op, mode)]
    key = DTYPES[dtype][0]
    peak, bw = target.peak(dtype), target.ceilings.bandwidth_gbps
    step = predict_step([L.Kernel(op, int(flops), int(nbytes), LAUNCHES.get(mode, 1))],
                        peak, bw, eff, target.power, key)
    return {"predicted": True, "gpu": target.name, "op": op, "mode": mode, "dtype": dtype,
            "regime": op_regime(op, mode), **_step_fields(step, 1, peak, bw),
            "efficiency": eff.to_dict()}


def spec_row(target: Target, spec, shape: Mapping[str, int], dtype: str, mode: str,
             efficiency: Mapping[str, Efficiency] | None = None) -> dict:
    """An op of the lab (its :class:`~tritonlab.ops.contract.OpSpec`) at ``shape`` predicted
    on ``target``: FLOPs and bytes from the op's own formulas."""
    torch_dtype = _torch_dtype(spec, dtype)
    return {**op_row(target, op=spec.name, mode=mode, dtype=dtype,
                     flops=spec.flops(dict(shape), mode),
                     nbytes=spec.bytes(dict(shape), torch_dtype, mode),
                     efficiency=efficiency), "shape": dict(shape)}


def _torch_dtype(spec, dtype: str):
    """The torch dtype an op's ``bytes`` formula takes for a dtype name (looked up among the
    op's own dtypes, so this module needs no torch import)."""
    for d in spec.dtypes:
        if str(d).removeprefix("torch.") == dtype:
            return d
    raise UsageError(f"op {spec.name} has no dtype {dtype}; its dtypes: "
                     f"{', '.join(str(d).removeprefix('torch.') for d in spec.dtypes)}")
