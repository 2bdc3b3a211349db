"""The decoder-layer contrast (``tritonlab contrast --model layer``): the layer of
:mod:`tritonlab.workloads.layer` in three regimes on the same weights,

* ``train``: :class:`~tritonlab.workloads.layer_train.LayerTrainStep` (forward, backward,
  AdamW) on ``batch`` sequences of ``seq`` tokens;
* ``prefill``: :class:`~tritonlab.workloads.layer_serve.Prefill` of ``batch`` prompts of
  ``prompt`` tokens into a paged KV cache, reset before every step so that each step fills
  it afresh;
* ``decode``: :class:`~tritonlab.workloads.layer_serve.Decode`, one token per sequence per
  step, against a paged cache prefilled to ragged lengths whose longest is ``context``
  (:func:`tritonlab.ops.decode_attention.seq_lengths`, the spread the decode-attention op
  uses), rolled back after every step so that each step decodes at the same lengths.

This module holds the plan (grid, defaults, checks), the step builders, the compulsory-byte
formulas and the per-phase metrics added to the rows; the verdict is in
:mod:`~tritonlab.contrast.layer_verdict`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from tritonlab.contrast.plan import (
    IMPLS,
    PlanDtypes,
    PlannedPhase,
    check_dtype,
    choices,
    timing_options,
    train_dtype_for,
)
from tritonlab.errors import UsageError
from tritonlab.hw import counters as counters_mod
from tritonlab.measure.regimes import first_batch_reaching
from tritonlab.measure.stats import median_ci
from tritonlab.ops.contract import DTYPES
from tritonlab.ops.decode_attention import seq_lengths
from tritonlab.workloads.fp8 import FP8, compute_dtype
from tritonlab.workloads.kv_cache import KVCache
from tritonlab.workloads.layer import (
    SIZES,
    LayerConfig,
    decode_flops,
    init_params,
    kv_cache_bytes,
    optimizer_bytes,
    train_activation_bytes,
    weight_bytes,
)
from tritonlab.workloads.layer_config import REGIMES as REGIMES  # re-exported: the regimes
from tritonlab.workloads.layer_serve import (
    Decode,
    Prefill,
    ServingWeights,
    fp8_activation_bytes,
    fp8_weight_bytes,
)
from tritonlab.workloads.layer_train import LayerTrainStep

INTERPRETER_SIZES = ("tiny", "small")
# Tokens per block of the paged KV caches (vLLM's default).
BLOCK_SIZE = 16

LAYER_DEFAULTS = {
    # A GPU gets Llama-3-8B's layer at one long sequence for training and prefill, and decode
    # from one sequence (latency) to a serving batch, at a long context: 8 phases of about
    # 7 s (warm-up, measured, cool-down) plus the idle baseline fit a ~70 s budget.
    "cuda": dict(train=((1, 2048),), prefill=((1, 2048),), decode=((1, 4096), (64, 4096)),
                 duration_s=4.0, model_size="llama3-8b", dtype="bfloat16", warmup_s=1.0,
                 idle_s=2.0, cooldown_s=1.0),
    # The interpreter (about 1 ms per Triton program) keeps to tiny shapes: a step of the
    # tiny layer then takes 0.01 to 1 s.
    "interpreter": dict(train=((1, 16),), prefill=((1, 16),), decode=((1, 32), (4, 32)),
                        duration_s=2.0, model_size="tiny", dtype="float32", warmup_s=0.2,
                        idle_s=1.0, cooldown_s=0.2),
}


@dataclass(frozen=True)
class LayerPlan(PlanDtypes):
    """What a layer contrast runs: the regimes, impls and grid points (``train``: (batch,
    seq); ``prefill``: (batch, prompt); ``decode``: (batch, context)), the layer's size and
    count, the KV caches' capacity ``max_seq`` (tokens per sequence), the dtypes
    (:class:`~tritonlab.contrast.plan.PlanDtypes`) and the timing."""

    model: str
    model_size: str
    n_layers: int
    impls: tuple[str, ...]
    modes: tuple[str, ...]
    train: tuple[tuple[int, int], ...]
    prefill: tuple[tuple[int, int], ...]
    decode: tuple[tuple[int, int], ...]
    max_seq: int
    dtype: str
    duration_s: float
    warmup_s: float
    idle_s: float
    cooldown_s: float
    interval_ms: float
    seed: int
    train_dtype: str | None = None

    def config(self) -> LayerConfig:
        """The layer's dimensions."""
        return LayerConfig.from_size(self.model_size)

    def phases(self) -> list[PlannedPhase]:
        """Every measured phase in run order: regime, then grid point, then impl."""
        return [PlannedPhase(mode, impl, batch, second)
                for mode in self.modes for batch, second in getattr(self, mode)
                for impl in self.impls]


def _grid(batches: Sequence[int] | None, seconds: Sequence[int] | None,
          default: tuple[tuple[int, int], ...], what: str) -> tuple[tuple[int, int], ...]:
    """The grid of one regime: every batch with every second size (seq, prompt, context);
    an axis not given keeps the default's values. UsageError for a value < 1."""
    for name, values in (("batch", batches), (what, seconds)):
        bad = [v for v in values or () if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad:
            raise UsageError(f"{what} grid: {name} must be integers >= 1; got "
                             f"{', '.join(map(str, bad))}")
    b = tuple(dict.fromkeys(batches)) if batches else tuple(dict.fromkeys(p[0] for p in default))
    s = tuple(dict.fromkeys(seconds)) if seconds else tuple(dict.fromkeys(p[1] for p in default))
    return tuple(itertools.product(b, s))


def make_layer_plan(backend_name: str, *, model_size: str | None = None, n_layers: int = 1,
                    impls: Sequence[str] = IMPLS, modes: Sequence[str] = REGIMES,
                    train_batches: Sequence[int] | None = None,
                    train_seqs: Sequence[int] | None = None,
                    prefill_batches: Sequence[int] | None = None,
                    prompts: Sequence[int] | None = None,
                    decode_batches: Sequence[int] | None = None,
                    contexts: Sequence[int] | None = None, max_seq: int | None = None,
                    dtype: str | None = None, duration_s: float | None = None,
                    warmup_s: float | None = None, idle_s: float | None = None,
                    cooldown_s: float | None = None,
                    interval_ms: float = 1e3 * counters_mod.DEFAULT_INTERVAL_S,
                    seed: int = 0) -> tuple[LayerPlan, list[str]]:
    """Validate a layer contrast's options (UsageError naming the valid choices) and fill the
    backend's defaults (:data:`LAYER_DEFAULTS`). ``max_seq``: the KV caches' capacity per
    sequence, default the longest prompt or context + 1 (room for the decoded token); a
    prompt or context that does not fit an explicit one is refused. Returns the plan and
    warnings."""
    d = LAYER_DEFAULTS["cuda" if backend_name == "cuda" else "interpreter"]
    model_size = model_size or d["model_size"]
    if model_size not in SIZES:
        raise UsageError(f"unknown layer size {model_size!r}; valid sizes: {', '.join(SIZES)}")
    if backend_name != "cuda" and model_size not in INTERPRETER_SIZES:
        raise UsageError(f"layer size {model_size!r} needs a GPU; under the interpreter use "
                         f"one of: {', '.join(INTERPRETER_SIZES)}")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise UsageError(f"--layers must be an integer >= 1, got {n_layers}")
    impls = choices(impls, IMPLS, "unknown impl", "valid impls")
    modes = choices(modes, REGIMES, "unknown regime", "valid modes of --model layer")
    train = _grid(train_batches, train_seqs, d["train"], "train seq")
    prefill = _grid(prefill_batches, prompts, d["prefill"], "prompt")
    decode = _grid(decode_batches, contexts, d["decode"], "context")
    longest = max([p for _, p in prefill] * ("prefill" in modes)
                  + [c + 1 for _, c in decode] * ("decode" in modes) or [1])
    if max_seq is None:
        max_seq = longest
    elif isinstance(max_seq, bool) or not isinstance(max_seq, int) or max_seq < 1:
        raise UsageError(f"--max-seq must be an integer >= 1, got {max_seq}")
    elif longest > max_seq:
        raise UsageError(f"a prompt or context (+1 decoded token) of {longest} tokens is longer "
                         f"than the KV cache (--max-seq {max_seq}); use contexts <= "
                         f"{max_seq - 1} and prompts <= {max_seq}, or a larger --max-seq")
    dtype = check_dtype(dtype or d["dtype"], backend_name)
    train_dtype, dtype_warnings = train_dtype_for(dtype, d, backend_name, modes)
    timing, warnings = timing_options(d, duration_s=duration_s, warmup_s=warmup_s,
                                      idle_s=idle_s, cooldown_s=cooldown_s,
                                      interval_ms=interval_ms)
    plan = LayerPlan(model="layer", model_size=model_size, n_layers=n_layers, impls=impls,
                     modes=modes, train=train, prefill=prefill, decode=decode, max_seq=max_seq,
                     dtype=dtype, seed=seed, train_dtype=train_dtype, **timing)
    return plan, dtype_warnings + warnings


# ------------------------------------------------------------------- bytes and footprint

def storage(dtype: str) -> tuple[torch.dtype, bool]:
    """A phase's dtype name as the torch dtype its activations, KV cache and 16-bit weights
    are stored in, and whether its projections are fp8 (then the rest is in the fp8 path's
    :func:`~tritonlab.workloads.fp8.compute_dtype`)."""
    return (compute_dtype(), True) if dtype == FP8 else (DTYPES[dtype], False)


def compulsory_bytes(cfg: LayerConfig, n_layers: int, mode: str, batch: int, second: int,
                     dtype: torch.dtype, *, fp8: bool = False) -> dict[str, int]:
    """The bytes one step must move to and from memory at the least, by part (each read or
    written once; a kernel that re-reads moves more), with W the weights in ``dtype``
    (:func:`~tritonlab.workloads.layer.weight_bytes`), W32 the same in fp32, O the AdamW
    state (:func:`~tritonlab.workloads.layer.optimizer_bytes`), A the saved activations
    (:func:`~tritonlab.workloads.layer.train_activation_bytes`), KV(n) the K and V of n
    token positions (:func:`~tritonlab.workloads.layer.kv_cache_bytes`), T the step's
    tokens and s the dtype's size:

    * train (T = batch * seq): weights 2 W (read in the forward and again in the backward),
      gradients W32 (written), optimizer 2 O + W32 (masters and moments read and written,
      the gradients read), activations 2 A (saved in the forward, read in the backward),
      io 2 T dim s (input and target read);
    * prefill (T = batch * prompt): weights W, kv_write KV(T), io 2 T dim s (input read,
      output written);
    * decode (T = batch, at the lengths L_b of :func:`decode_lengths`): weights W, kv_read
      KV(sum L_b), kv_write KV(T), io 2 T dim s.

    ``fp8`` (prefill and decode of ``--dtype fp8``, with ``dtype`` the compute dtype): W is
    the fp8 weights as they sit in memory (one byte per projection weight, float32 scales,
    16-bit norms: :func:`~tritonlab.workloads.layer_serve.fp8_weight_bytes`), and the part
    act_quant adds the per-token e4m3 codes and scales the quantiser writes and the fp8 GEMMs
    read back before each projection
    (:func:`~tritonlab.workloads.layer_serve.fp8_activation_bytes`); KV cache and io stay
    in ``dtype``.

    The dict holds the parts and their sum under ``total``."""
    s = dtype.itemsize
    w = fp8_weight_bytes(cfg, n_layers, dtype) if fp8 else weight_bytes(cfg, n_layers, dtype)
    if mode == "train":
        tokens = batch * second
        w32 = weight_bytes(cfg, n_layers, torch.float32)
        parts = {"weights": 2 * w, "gradients": w32,
                 "optimizer": 2 * optimizer_bytes(cfg, n_layers) + w32,
                 "activations": 2 * train_activation_bytes(cfg, n_layers, batch, second, dtype),
                 "io": 2 * tokens * cfg.dim * s}
    elif mode == "prefill":
        tokens = batch * second
        parts = {"weights": w, "kv_write": kv_cache_bytes(cfg, n_layers, tokens, dtype),
                 "io": 2 * tokens * cfg.dim * s}
    else:
        parts = {"weights": w,
                 "kv_read": kv_cache_bytes(cfg, n_layers, sum(decode_lengths(batch, second)),
                                           dtype),
                 "kv_write": kv_cache_bytes(cfg, n_layers, batch, dtype),
                 "io": 2 * batch * cfg.dim * s}
    if fp8 and mode != "train":
        tokens = batch * second if mode == "prefill" else batch
        parts["act_quant"] = fp8_activation_bytes(cfg, n_layers, tokens)
    return {**parts, "total": sum(parts.values())}


def decode_lengths(batch: int, context: int) -> list[int]:
    """The cached lengths a decode phase's sequences hold: ``context`` for the first, the
    others spread down to about context / 2, the last of three or more a fresh request of one
    token (:func:`tritonlab.ops.decode_attention.seq_lengths`)."""
    return seq_lengths({"B": batch, "CTX": context})


def estimated_footprint(cfg: LayerConfig, plan: LayerPlan, phase: PlannedPhase) -> int:
    """Bytes a phase will hold, from the workloads' formulas, before anything is built (the
    capacity check): the sum of the parts :func:`build_step`'s footprint reports, with the
    triton impl's saved activations standing in for both impls in training."""
    dt, fp8 = storage(plan.dtype_of(phase.mode))
    L = plan.n_layers
    if phase.mode == "train":
        return (weight_bytes(cfg, L, dt) + weight_bytes(cfg, L, torch.float32)
                + optimizer_bytes(cfg, L)
                + train_activation_bytes(cfg, L, phase.batch, phase.second, dt))
    weights = fp8_weight_bytes(cfg, L, dt) if fp8 else weight_bytes(cfg, L, dt)
    return weights + KVCache.bytes_for(cfg, L, phase.batch, plan.max_seq, dt,
                                       block_size=BLOCK_SIZE)


def over_capacity(plan: LayerPlan, capacity_bytes: int | None) -> dict[str, str]:
    """The phases whose estimated footprint exceeds ``capacity_bytes``, each with the reason
    it is skipped (the bytes it would need); nothing when the capacity is unknown."""
    if not capacity_bytes:
        return {}
    cfg = plan.config()
    out = {}
    for ph in plan.phases():
        need = estimated_footprint(cfg, plan, ph)
        if need > capacity_bytes:
            out[ph.name] = (f"needs {need / 2**30:.3g} GiB ({need} bytes), more than the "
                            f"card's {capacity_bytes / 2**30:.3g} GiB")
    return out


# ---------------------------------------------------------------------------- the steps

@dataclass
class Built:
    """A phase's step and what the rows need of it: FLOPs, tokens and compulsory bytes per
    step, the workload's footprint by part."""

    step: Callable[[], object]
    flops: int
    tokens: int
    bytes: dict[str, int]
    footprint: dict[str, int]


@functools.lru_cache(maxsize=1)
def _master_weights(cfg: LayerConfig, n_layers: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """The serving phases' fp32 weights on the CPU, drawn once per run rather than once per
    phase (a Llama-3-8B layer takes seconds to draw); serving never writes them."""
    return init_params(cfg, n_layers, torch.float32, "cpu", seed)


def build_step(plan: LayerPlan, phase: PlannedPhase, *, data_seed: int, device) -> Built:
    """Build the workload of ``phase`` on the plan's weights (:func:`init_params` from the
    plan's seed: the same values in every regime) and one fixed input, in the phase's dtype
    (:meth:`~tritonlab.contrast.plan.PlanDtypes.dtype_of`: an fp8 plan's serving weights
    are quantised once here, its training is not)."""
    cfg, L = plan.config(), plan.n_layers
    dt, fp8 = storage(plan.dtype_of(phase.mode))
    b, n = phase.batch, phase.second
    nbytes = compulsory_bytes(cfg, L, phase.mode, b, n, dt, fp8=fp8)
    if phase.mode == "train":
        work = LayerTrainStep(cfg, L, impl=phase.impl, dtype=dt, device=device, seed=plan.seed)
        x, target = work.make_batch(b, n, data_seed)
        return Built(lambda: work.step(x, target), work.flops(b, n), b * n, nbytes,
                     work.footprint(b, n))
    weights = ServingWeights(cfg, _master_weights(cfg, L, plan.seed), dtype=FP8 if fp8 else dt,
                             device=device)
    g = torch.Generator(device="cpu").manual_seed(data_seed)
    cache = KVCache(cfg, L, b, plan.max_seq, dtype=dt, device=device, block_size=BLOCK_SIZE,
                    seed=plan.seed)
    if phase.mode == "prefill":
        prefill = Prefill(weights, impl=phase.impl)
        x = torch.randn(b, n, cfg.dim, generator=g).to(device=device, dtype=dt)
        lens = [n] * b

        def prefill_step():
            """One prefill into the emptied cache (its blocks stay handed out, as a server
            reuses a slot's blocks)."""
            cache.rewind([0] * b)
            return prefill.step(x, lens, cache)

        return Built(prefill_step, prefill.flops(lens), b * n, nbytes,
                     prefill.footprint(b, plan.max_seq, block_size=BLOCK_SIZE))
    lengths = decode_lengths(b, n)
    # The cache is filled by the torch prefill whatever the impl: filling it is setup, and
    # the eager path is the fast one under the interpreter.
    longest = max(lengths)
    prompt = torch.randn(b, longest, cfg.dim, generator=g).to(device=device, dtype=dt)
    Prefill(weights, impl="torch").step(prompt, lengths, cache)
    decode = Decode(weights, cache, impl=phase.impl, capture_graph=device_is_cuda(device))
    token = torch.randn(b, cfg.dim, generator=g).to(device=device, dtype=dt)
    flops = decode.flops(1)

    def decode_step():
        """One decode step, then the lengths rolled back so every step decodes at the same
        context (the next step overwrites this step's K and V)."""
        out = decode.step(token)
        cache.rewind(lengths)
        return out

    return Built(decode_step, flops, b, nbytes, decode.footprint())


def device_is_cuda(device) -> bool:
    """Whether ``device`` is a CUDA device (decode then replays CUDA graphs, as a server
    does; elsewhere it runs eagerly)."""
    return torch.device(device).type == "cuda"


# ------------------------------------------------------------------------------ the rows

def compute_key(dtype: str) -> str:
    """The device table's compute ceiling for a dtype: tensor-core rates for the 16-bit
    types and fp8 (the fp8 phases' GEMMs, which hold their FLOPs), the CUDA-core FP32 rate
    for float32 (the lab's kernels do not round to TF32)."""
    return {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16",
            FP8: "fp8"}[dtype]


def layer_metrics(row: dict, built_info: dict, latencies_s: Sequence[float], *,
                  peaks, capacity_bytes: int | None, dtype: str) -> None:
    """Add the layer contrast's metrics to a measured phase's row, in place: tokens per step
    and per second, the compulsory bytes (:func:`compulsory_bytes`) and achieved GB/s, the
    arithmetic intensity, % of the compute and bandwidth peaks (``peaks``: a
    :class:`~tritonlab.hw.specs.Ceilings` or None), energy per token, the footprint by
    part and % of ``capacity_bytes``, and the median per-step TFLOP/s and GB/s with their
    bootstrap 95% intervals, and the same for the per-step % of the compute peak (what
    the verdict compares). ``dtype`` is the phase's own (an
    fp8 plan's inference phases against the fp8 peak, its training against the 16-bit
    one). A value that cannot be computed is None with its reason in
    ``row["unavailable"]``."""
    why = row.setdefault("unavailable", {})

    def put(key, value, reason):
        """Store a value, or None with the reason in ``unavailable``."""
        row[key] = value
        if value is None:
            why[key] = reason

    steps, seconds = row["steps"], row["seconds"]
    tokens, nbytes = built_info["tokens"], built_info["bytes"]
    flops = row["flops_per_step"]
    row["tokens_per_step"] = tokens
    row["tokens_per_s"] = steps * tokens / seconds
    row["bytes_per_step"] = nbytes
    row["achieved_gbps"] = steps * nbytes["total"] / seconds / 1e9
    row["arithmetic_intensity"] = flops / nbytes["total"]
    seconds_per_step = np.asarray(latencies_s, dtype=float)
    rates = flops / seconds_per_step / 1e12
    row["step_tflops_median"] = float(np.median(rates))
    put("step_tflops_ci", _ci(rates), "fewer than 2 steps")
    gbps = nbytes["total"] / seconds_per_step / 1e9
    row["step_gbps_median"] = float(np.median(gbps))
    put("step_gbps_ci", _ci(gbps), "fewer than 2 steps")
    key = compute_key(dtype)
    peak = peaks.peak(key) if peaks else None
    no_peak = ("no compute peak known for this device" if peaks is None
               else f"no {key} compute peak for this device")
    put("compute_peak_tflops", peak, no_peak)
    put("compute_pct", 100 * row["tflops"] / peak if peak else None, no_peak)
    # The per-step % of the phase's own dtype's peak: what the verdict compares when the
    # phases' dtypes differ (fp8 inference beside 16-bit training).
    put("step_compute_pct_median", float(np.median(rates)) * 100 / peak if peak else None,
        no_peak)
    put("step_compute_pct_ci",
        None if not peak or row["step_tflops_ci"] is None else
        [v * 100 / peak for v in row["step_tflops_ci"]],
        no_peak if not peak else "fewer than 2 steps")
    bw = peaks.bandwidth_gbps if peaks else None
    put("bandwidth_peak_gbps", bw, "no memory-bandwidth peak known for this device")
    put("bandwidth_pct", 100 * row["achieved_gbps"] / bw if bw else None,
        "no memory-bandwidth peak known for this device")
    energy = row.get("energy_j")
    put("energy_per_token_j", energy / (steps * tokens) if energy is not None else None,
        why.get("energy_j", "no energy reading"))
    footprint = built_info["footprint"]
    row["footprint"] = footprint
    row["footprint_bytes"] = footprint["total"]
    put("capacity_bytes", capacity_bytes, "no device memory capacity known (not a GPU)")
    put("capacity_pct", 100 * footprint["total"] / capacity_bytes if capacity_bytes else None,
        "no device memory capacity known (not a GPU)")
    row["unavailable"] = why  # last again, after the values it explains


def _ci(values: np.ndarray) -> list[float] | None:
    """The bootstrap 95% interval of the median of ``values`` (None below 2)."""
    ci = median_ci(values) if values.size >= 2 else None
    return None if ci is None else [ci[0], ci[1]]


def ridge_point(peaks, dtype: str) -> float | None:
    """FLOP/byte at which the device's memory roof meets its compute roof for ``dtype``;
    None when either peak is unknown."""
    return peaks.ridge(compute_key(dtype)) if peaks else None


def decode_flip_batch(cfg: LayerConfig, n_layers: int, context: int, dtype: str,
                      ridge: float, limit: int = 1 << 16) -> int | None:
    """The smallest decode batch at ``context`` whose arithmetic intensity (the formulas'
    FLOPs over :func:`compulsory_bytes`) reaches ``ridge``: from there decode is compute
    bound. None when no batch up to ``limit`` does (the KV reads grow with the batch as the
    FLOPs do, so the intensity levels off, possibly below the ridge). The ragged spread
    makes the intensity rise with the batch only nearly monotonically, so the bisection's
    answer is the crossing to within a batch or two."""
    dt, fp8 = storage(dtype)

    def intensity(b: int) -> float:
        """FLOP per compulsory byte of a decode step at batch ``b``."""
        return (decode_flops(cfg, n_layers, decode_lengths(b, context))
                / compulsory_bytes(cfg, n_layers, "decode", b, context, dt, fp8=fp8)["total"])

    return first_batch_reaching(intensity, ridge, limit)

