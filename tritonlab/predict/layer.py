"""The decoder layer of :mod:`tritonlab.workloads.layer` as a list of kernels per regime, each
with its FLOPs and compulsory bytes, and the memory footprint of each regime by part.

The sizes are the workloads' own (:mod:`tritonlab.workloads.layer_config`, plain Python).
The per-kernel formulas are restated here rather than imported because
:mod:`tritonlab.workloads.layer` imports the attention op and through it the Triton kernels
(seconds of start-up), and a prediction needs none of them; their totals are checked against
the workloads' (``train_flops``, ``prefill_flops``, ``decode_flops``, the ``footprint()`` of
each workload and ``KVCache.bytes_for``) in tests/test_predict.py, so the two cannot drift
apart silently.

Notation: T tokens of the step, L layers, s the dtype's size in bytes, d = dim, q = n_heads
head_dim, kv = n_kv_heads head_dim, h = hidden, P the elements of one layer's weights. The
bytes of a kernel are its compulsory DRAM traffic: each input read once, each output written
once (the op contract's convention); a GEMM (M, K) x (K, N) moves s (MK + KN + MN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tritonlab.workloads.layer_config import PARAM_NAMES, LayerConfig
from tritonlab.workloads.layer_config import REGIMES as REGIMES  # re-exported for predict
from tritonlab.workloads.layer_config import SIZES as SIZES  # re-exported for predict

MODEL_LAYERS = {"tiny": 1, "small": 1, "llama3-8b": 32}
# Tokens per block of the paged KV cache (the contrast's BLOCK_SIZE, vLLM's default).
BLOCK_SIZE = 16
# Weight tensors per layer: two norms and seven projections.
PARAM_TENSORS = len(PARAM_NAMES)


@dataclass(frozen=True)
class Kernel:
    """One kernel (or a group of identical elementwise kernels) of a step: its FLOPs and
    compulsory bytes for all layers together, and how many launches it takes."""

    name: str
    flops: int
    bytes: int
    launches: int


def causal_pairs(sq: int, sk: int) -> int:
    """(query, key) pairs a causal mask leaves, queries aligned to the end of the keys
    (the attention op's ``causal_pairs``): Sq (Sk - Sq + 1) + Sq (Sq - 1) / 2."""
    return sq * (sk - sq + 1) + sq * (sq - 1) // 2


def decode_lengths(batch: int, context: int) -> list[int]:
    """Cached lengths of a decode batch (the decode-attention op's ``seq_lengths``, the
    spread the contrast decodes at): ``context`` for the first sequence, the others down to
    about context / 2, the last of three or more a fresh one-token request."""
    lengths = [max(1, context - (i * context) // (2 * batch)) for i in range(batch)]
    if batch >= 3:
        lengths[-1] = 1
    return lengths


def _gemm(name: str, m: int, k: int, n: int, s: int, layers: int) -> Kernel:
    """Forward GEMM (M, K) x (K, N) in every layer: 2MNK FLOPs, s (MK + KN + MN) bytes."""
    return Kernel(name, layers * 2 * m * n * k, layers * s * (m * k + k * n + m * n), layers)


def _gemm_backward(name: str, m: int, k: int, n: int, s: int, layers: int,
                   grad_s: int = 4) -> Kernel:
    """dX = dY W^T and dW = X^T dY (4MNK FLOPs): dY is read by both, W and X once each, dX
    written in the working dtype and dW in ``grad_s`` bytes per element (fp32 in the
    layer's mixed precision: the gradients land on the fp32 masters)."""
    nbytes = s * (2 * m * n + k * n + m * k) + s * m * k + grad_s * k * n
    return Kernel(name, layers * 4 * m * n * k, layers * nbytes, 2 * layers)


def train_kernels(cfg: LayerConfig, layers: int, batch: int, seq: int, s: int) -> list[Kernel]:
    """A training step of :class:`~tritonlab.workloads.layer_train.LayerTrainStep` (triton
    impl): the weights cast from the fp32 masters, per layer the five GEMMs forward (QKV
    stacked, O, gate with SiLU fused, up, down) and backward, flash attention forward
    (4 H D per causal pair) and backward (10 H D: five GEMMs), the elementwise work in torch
    (RMSNorm, RoPE, residuals, the SwiGLU product, each forward and backward), then AdamW.

    FLOPs: 3x the projections' forward plus 14 H D per causal pair (= train_flops). Bytes of
    the elementwise work, per token and layer, forward: norms 2 (2d) + RoPE 2 (q + kv) +
    residuals 2 (3d) + product 3h, times s; the backward moves twice that. AdamW reads the
    fp32 masters, gradients and both moments and writes masters and moments (28 P bytes);
    the cast reads the masters and writes the working copies ((4 + s) P)."""
    t, d, q, kv, h = batch * seq, cfg.dim, cfg.q_dim, cfg.kv_dim, cfg.hidden
    pairs = batch * causal_pairs(seq, seq)
    hd = cfg.n_heads * cfg.head_dim
    p = layers * cfg.param_count()
    gemms = (("qkv", d, q + 2 * kv), ("o", q, d), ("gate", d, h), ("up", d, h), ("down", h, d))
    out = [Kernel("cast weights", 0, (4 + s) * p, layers * PARAM_TENSORS)]
    out += [_gemm(f"{n} fwd", t, k, nn, s, layers) for n, k, nn in gemms]
    out.append(Kernel("attention fwd", layers * 4 * hd * pairs,
                      layers * (s * t * (2 * q + 2 * kv) + 4 * t * cfg.n_heads), layers))
    elementwise = s * t * (4 * d + 2 * (q + kv) + 6 * d + 3 * h)
    out.append(Kernel("elementwise fwd", 0, layers * elementwise, 8 * layers))
    out += [_gemm_backward(f"{n} bwd", t, k, nn, s, layers) for n, k, nn in gemms]
    # Reads Q, K, V, O, dO and the log-sum-exp; writes dQ, dK, dV.
    out.append(Kernel("attention bwd", layers * 10 * hd * pairs,
                      layers * (s * t * (3 * q + 2 * kv) + s * t * (q + 2 * kv)
                                + 4 * t * cfg.n_heads), 2 * layers))
    out.append(Kernel("elementwise bwd", 0, layers * 2 * elementwise, 8 * layers))
    out.append(Kernel("adamw", 0, 28 * p, PARAM_TENSORS * layers))
    return out


def _serving_layer(cfg: LayerConfig, layers: int, t: int, s: int) -> list[Kernel]:
    """The kernels a prefill or decode step shares, for T tokens: the fused RMSNorm + QKV
    GEMM, RoPE and the cache write (q and k read and written, K and V written to the cache:
    s T (2 (q + kv) + 2 kv)), the O projection, the residual add (3 s T d), the gated MLP
    (norm folded in: reads x and both weights, writes the gated product) and the down
    projection with its residual."""
    d, q, kv, h = cfg.dim, cfg.q_dim, cfg.kv_dim, cfg.hidden
    return [
        Kernel("rmsnorm+qkv", layers * 2 * t * d * (q + 2 * kv),
               layers * s * (t * d + d * (q + 2 * kv) + t * (q + 2 * kv) + d), layers),
        Kernel("rope+cache write", 0, layers * s * t * (2 * (q + kv) + 2 * kv), 2 * layers),
        _gemm("o", t, q, d, s, layers),
        Kernel("residuals", 0, layers * 2 * 3 * s * t * d, 2 * layers),
        Kernel("gated mlp", layers * 4 * t * d * h,
               layers * s * (t * d + 2 * d * h + t * h + d), layers),
        _gemm("down", t, h, d, s, layers),
    ]


def prefill_kernels(cfg: LayerConfig, layers: int, batch: int, prompt: int, s: int) -> list[Kernel]:
    """A prefill of ``batch`` prompts of ``prompt`` tokens (:class:`Prefill`): the serving
    kernels on T = batch x prompt tokens and causal flash attention (4 H D per causal pair;
    reads Q, K, V, writes O). FLOPs = prefill_flops."""
    t = batch * prompt
    pairs = batch * causal_pairs(prompt, prompt)
    attn = Kernel("attention", layers * 4 * cfg.n_heads * cfg.head_dim * pairs,
                  layers * s * t * (2 * cfg.q_dim + 2 * cfg.kv_dim), layers)
    out = _serving_layer(cfg, layers, t, s)
    return out[:2] + [attn] + out[2:]


def decode_kernels(cfg: LayerConfig, layers: int, batch: int, context: int, s: int) -> list[Kernel]:
    """One decode step (:class:`Decode`) of ``batch`` sequences at the cached lengths of
    :func:`decode_lengths`: the serving kernels on T = batch tokens and split-KV decode
    attention, each token attending to its cache and itself (4 H D per key; reads the K
    and V of every cached position, the query, writes O). FLOPs = decode_flops."""
    keys = sum(n + 1 for n in decode_lengths(batch, context))
    attn = Kernel("decode attention", layers * 4 * cfg.n_heads * cfg.head_dim * keys,
                  layers * s * (2 * keys * cfg.kv_dim + 2 * batch * cfg.q_dim), 2 * layers)
    out = _serving_layer(cfg, layers, batch, s)
    return out[:2] + [attn] + out[2:]


def kernels(regime: str, cfg: LayerConfig, layers: int, batch: int, second: int,
            s: int) -> list[Kernel]:
    """The kernels of one step of ``regime`` at (batch, second): second is the training
    sequence, the prompt or the decode context."""
    build = {"train": train_kernels, "prefill": prefill_kernels, "decode": decode_kernels}
    return build[regime](cfg, layers, batch, second, s)


def tokens(regime: str, batch: int, second: int) -> int:
    """Tokens one step processes: batch x sequence in training and prefill, one per
    sequence in decode."""
    return batch if regime == "decode" else batch * second


# ---------------------------------------------------------------------------- footprint

def train_activation_bytes(cfg: LayerConfig, layers: int, batch: int, seq: int, s: int) -> int:
    """What the triton training forward saves for backward (workloads.layer's formula): per
    token and layer s (4 d + (3 H + 2 H_kv) D + 4 h) + 4 (2 + H), plus 8 d per token for the
    fp32 loss input and target, plus the fp32 RoPE tables (8 seq D)."""
    per_token_layer = (s * (4 * cfg.dim + (3 * cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
                            + 4 * cfg.hidden) + 4 * (2 + cfg.n_heads))
    return batch * seq * (layers * per_token_layer + 8 * cfg.dim) + 8 * seq * cfg.head_dim


def kv_cache_bytes(cfg: LayerConfig, layers: int, batch: int, max_seq: int, s: int) -> int:
    """A paged cache for ``batch`` sequences of up to ``max_seq`` tokens (KVCache.bytes_for):
    whole blocks of :data:`BLOCK_SIZE` slots, K and V per layer, plus the int32 block table
    and lengths."""
    per_seq = -(-max_seq // BLOCK_SIZE)
    slots = batch * per_seq * BLOCK_SIZE
    return 2 * layers * slots * cfg.kv_dim * s + 4 * batch * per_seq + 4 * batch


def footprint(regime: str, cfg: LayerConfig, layers: int, batch: int, second: int, s: int,
              max_seq: int) -> dict[str, int]:
    """Bytes held by part, and ``total``. Training (mixed precision, AdamW): weights (working
    copies, s P), gradients (fp32 on the masters, 4 P), optimizer (fp32 masters, exp_avg,
    exp_avg_sq: 12 P, plus a 4-byte step count per tensor), saved activations. Serving:
    weights and the KV cache of ``batch`` x ``max_seq`` (inference saves no activations).
    Not counted: embeddings and the LM head (the lab's model is the decoder stack), the CUDA
    context and allocator slack."""
    p = layers * cfg.param_count()
    if regime == "train":
        parts = {"weights": s * p, "gradients": 4 * p,
                 "optimizer": 12 * p + 4 * PARAM_TENSORS * layers,
                 "activations": train_activation_bytes(cfg, layers, batch, second, s)}
    else:
        parts = {"weights": s * p, "kv_cache": kv_cache_bytes(cfg, layers, batch, max_seq, s)}
    return {**parts, "total": sum(parts.values())}


def largest_batch(regime: str, cfg: LayerConfig, layers: int, second: int, s: int, max_seq: int,
                  capacity: int) -> int:
    """The largest batch whose footprint fits in ``capacity`` bytes (0: not even one). The
    footprint is affine in the batch (fixed weights and state, then activations or cache per
    sequence), so it is solved exactly from two evaluations."""
    one = footprint(regime, cfg, layers, 1, second, s, max_seq)["total"]
    per = footprint(regime, cfg, layers, 2, second, s, max_seq)["total"] - one
    fixed = one - per
    return max(0, math.floor((capacity - fixed) / per)) if capacity >= one else 0


# ------------------------------------------------------------------ the feed-forward block

# Mirrors tritonlab.workloads.model.SIZES: (dim, hidden) of the FFN contrast's block.
FFN_SIZES = {"tiny": (64, 192), "small": (128, 384), "base": (1024, 2816), "large": (4096, 14336)}


def ffn_kernels(mode: str, dim: int, hidden: int, tokens: int, s: int) -> list[Kernel]:
    """A step of the FFN contrast's block y = x + W_down (silu(W_gate n) * (W_up n)),
    n = RMSNorm(x) w, on ``tokens`` tokens (:mod:`tritonlab.workloads.train` and ``infer``).

    ``infer``: the gated MLP with the norm folded in (reads x and both weights, writes the
    gated product), the down projection, the residual. ``train``: forward GEMMs gate, up,
    down and their backwards, the torch elementwise work (norm 2 s T d, product 3 s T h,
    residual 3 s T d forward; twice that backward) and SGD with momentum (reads weights,
    gradients and momentum, writes weights and momentum: 5 s P). FLOPs: 2 T d h per GEMM
    forward, twice that backward (the workloads' ``flops``: 3x the forward in training)."""
    d, h, t = dim, hidden, tokens
    if mode == "infer":
        return [Kernel("gated mlp", 4 * t * d * h, s * (t * d + 2 * d * h + t * h + d), 1),
                _gemm("down", t, h, d, s, 1),
                Kernel("residual", 0, 3 * s * t * d, 1)]
    gemms = (("gate", d, h), ("up", d, h), ("down", h, d))
    elementwise = s * t * (2 * d + 3 * h + 3 * d)
    return ([_gemm(f"{n} fwd", t, k, nn, s, 1) for n, k, nn in gemms]
            + [Kernel("elementwise fwd", 0, elementwise, 4)]
            + [_gemm_backward(f"{n} bwd", t, k, nn, s, 1, grad_s=s) for n, k, nn in gemms]
            + [Kernel("elementwise bwd", 0, 2 * elementwise, 6),
               Kernel("sgd", 0, 5 * s * (3 * d * h + d), 4)])
