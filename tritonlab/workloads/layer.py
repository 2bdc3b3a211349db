"""The decoder layer the layer workloads run: a Llama-style pre-norm transformer block,

    h = x + W_o Attention(RoPE(W_q n), RoPE(W_k n), W_v n),   n = RMSNorm(x) * attn_norm
    y = h + W_down (silu(W_gate m) * (W_up m)),               m = RMSNorm(h) * mlp_norm

with causal grouped-query attention (n_heads query heads sharing n_kv_heads key/value heads)
and the rotary embedding of :func:`tritonlab.reference.rope_cos_sin`. Three workloads run it
on the same weights: training (:mod:`.layer_train`), prefill and decode over a KV cache
(:mod:`.layer_serve`, :mod:`.kv_cache`).

This module holds what they share: the config and its sizes (defined in
:mod:`.layer_config`, re-exported here), :func:`init_params`,
:func:`reference_forward` (the plain-torch definition every implementation is checked
against), the FLOP formulas of each regime and the footprint formulas (weights, gradients,
optimizer state, saved activations, KV cache), with :func:`saved_tensor_bytes`, which counts
what a forward really saves for backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tritonlab.ops.attention import causal_pairs
from tritonlab.reference import apply_rope, eager_attention, ffn_block, rms_norm, rope_cos_sin
from tritonlab.workloads.layer_config import PARAM_NAMES, LayerConfig, check_count
from tritonlab.workloads.layer_config import SIZES as SIZES  # re-exported: the sizes by name


def init_params(cfg: LayerConfig, n_layers: int, dtype: torch.dtype, device,
                seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Weights of ``n_layers`` layers, one dict per layer with the keys of
    :data:`PARAM_NAMES` and the shapes of :meth:`LayerConfig.param_shapes`, drawn on the CPU
    from ``seed`` (the same values on every device and dtype) and converted.

    Projections are N(0, 1/fan_in), which keeps each projection's output at the scale of
    its input; the two that write into the residual stream (wo, w_down) are further scaled
    by 1/sqrt(2 n_layers) so the stream stays O(1) however many branches add into it. The
    norm weights are 1 + N(0, 0.1^2): near 1, but not 1, so their gradients are tested."""
    check_count(n_layers, "n_layers")
    g = torch.Generator(device="cpu").manual_seed(seed)
    residual = (2 * n_layers) ** -0.5
    layers = []
    for _ in range(n_layers):
        p = {}
        for name, shape in cfg.param_shapes().items():
            if len(shape) == 1:
                t = 1.0 + 0.1 * torch.randn(shape, generator=g)
            else:
                t = torch.randn(shape, generator=g) * shape[1] ** -0.5
                if name in ("wo", "w_down"):
                    t = t * residual
            p[name] = t.to(device=device, dtype=dtype)
        layers.append(p)
    return layers


def rope_tables(cfg: LayerConfig, positions: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of :func:`rope_cos_sin` at ``positions`` (seq,) or (batch, seq), with a
    head axis inserted before head_dim, so they broadcast against (batch, seq, heads,
    head_dim) activations."""
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, dtype)
    return cos.unsqueeze(-2), sin.unsqueeze(-2)


def reference_forward(cfg: LayerConfig, params: list[dict[str, torch.Tensor]], x: torch.Tensor,
                      positions: torch.Tensor | None = None) -> torch.Tensor:
    """The layers in plain torch, in x's dtype (float64 tensors give the reference).

    x: (batch, seq, dim); params: a list as :func:`init_params` returns, applied in order;
    positions: the RoPE positions, (seq,) or (batch, seq) ints, default 0..seq-1. Each
    sequence attends causally to itself only (:func:`tritonlab.reference.eager_attention`,
    KV heads repeated for GQA); run sequences of different lengths one call each. Returns
    (batch, seq, dim)."""
    batch, seq, _ = x.shape
    if positions is None:
        positions = torch.arange(seq, device=x.device)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    cos, sin = rope_tables(cfg, positions, work)
    H, Hkv, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    for p in params:
        n = rms_norm(x, p["attn_norm"], cfg.eps)
        q = apply_rope((n @ p["wq"].t()).view(batch, seq, H, D), cos, sin)
        k = apply_rope((n @ p["wk"].t()).view(batch, seq, Hkv, D), cos, sin)
        v = (n @ p["wv"].t()).view(batch, seq, Hkv, D)
        o = eager_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                            causal=True)
        x = x + o.transpose(1, 2).reshape(batch, seq, H * D) @ p["wo"].t()
        x = ffn_block(x, {"norm_weight": p["mlp_norm"], "w_gate": p["w_gate"],
                          "w_up": p["w_up"], "w_down": p["w_down"]}, "silu", cfg.eps)
    return x


# ---------------------------------------------------------------------------- FLOPs

def train_flops(cfg: LayerConfig, n_layers: int, batch: int, seq: int) -> int:
    """FLOPs of one training step (forward and backward) of ``n_layers`` layers on
    ``batch`` sequences of ``seq`` tokens: the projections 3x their forward (the backward
    computes an input and a weight gradient per GEMM), attention 4 + 10 = 14 * n_heads *
    head_dim per causal pair (the five backward GEMMs of docs/attention.md; the lab's
    kernels execute seven, rated on five like every other impl)."""
    pairs = batch * causal_pairs(seq, seq)
    per_layer = 3 * cfg.projection_flops(batch * seq) + 14 * cfg.n_heads * cfg.head_dim * pairs
    return n_layers * per_layer


def prefill_flops(cfg: LayerConfig, n_layers: int, prompt_lens: list[int]) -> int:
    """Forward FLOPs of prefilling prompts of the given lengths: the projections of every
    prompt token and causal attention within each prompt. Useful work only: an
    implementation that pads the batch to its longest prompt does more."""
    tokens = sum(prompt_lens)
    pairs = sum(causal_pairs(n, n) for n in prompt_lens)
    return n_layers * (cfg.projection_flops(tokens) + cfg.attention_flops(pairs))


def decode_flops(cfg: LayerConfig, n_layers: int, lengths: list[int], steps: int = 1) -> int:
    """FLOPs of ``steps`` decode steps of one token per sequence, starting from cached
    ``lengths``: at step t sequence b's token attends to lengths[b] + t + 1 keys (its cache
    and itself)."""
    total = 0
    for t in range(steps):
        pairs = sum(n + t + 1 for n in lengths)
        total += n_layers * (cfg.projection_flops(len(lengths)) + cfg.attention_flops(pairs))
    return total


# ------------------------------------------------------------------------ footprint

def weight_bytes(cfg: LayerConfig, n_layers: int, dtype: torch.dtype) -> int:
    """Bytes of the weights of ``n_layers`` layers stored in ``dtype``."""
    return n_layers * cfg.param_count() * dtype.itemsize


def optimizer_bytes(cfg: LayerConfig, n_layers: int) -> int:
    """Bytes of mixed-precision AdamW state: the fp32 master weights (the optimizer's
    parameters), exp_avg and exp_avg_sq (fp32 each), and the fp32 step count torch keeps
    per parameter tensor: 12 bytes per weight + 4 per tensor."""
    return n_layers * (12 * cfg.param_count() + 4 * len(PARAM_NAMES))


def train_activation_bytes(cfg: LayerConfig, n_layers: int, batch: int, seq: int,
                           dtype: torch.dtype) -> int:
    """Bytes the Triton training forward (:class:`.layer_train.LayerTrainStep`, impl
    "triton") saves for backward, weights excluded. With s = dtype.itemsize, per token and
    layer:

    * s * 4 dim: the layer input and the residual after attention (each RMSNorm's input),
      and both normalised activations (the inputs of the QKV and of the gate/up GEMMs);
    * s * (3 n_heads + 2 n_kv_heads) head_dim: attention's Q and K (after RoPE), V and O,
      and O transposed to (tokens, heads * head_dim), the O projection's input;
    * s * 4 hidden: the gate GEMM's saved silu'(Z), silu(gate), up, and their product
      (the down projection's input);
    * 4 (2 + n_heads): both norms' fp32 1/rms, attention's fp32 log-sum-exp per head;

    plus 8 dim per token for the loss (its fp32 input and target) and, once per forward,
    the fp32 cos and sin tables (2 * 4 seq head_dim)."""
    s = dtype.itemsize
    per_token_layer = (s * (4 * cfg.dim + (3 * cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim
                            + 4 * cfg.hidden)
                       + 4 * (2 + cfg.n_heads))
    tokens = batch * seq
    return tokens * (n_layers * per_token_layer + 8 * cfg.dim) + 8 * seq * cfg.head_dim


def kv_cache_bytes(cfg: LayerConfig, n_layers: int, slots: int, dtype: torch.dtype) -> int:
    """Bytes of K and V for ``slots`` token positions in each of ``n_layers`` layers:
    2 * n_layers * slots * n_kv_heads * head_dim * itemsize."""
    return 2 * n_layers * slots * cfg.kv_dim * dtype.itemsize


def with_total(parts: dict[str, int]) -> dict[str, int]:
    """``parts`` plus their sum under "total"."""
    return {**parts, "total": sum(parts.values())}


def saved_tensor_bytes(fn: Callable[[], object], exclude: list[torch.Tensor] = ()
                       ) -> tuple[object, int]:
    """Run ``fn`` and count what autograd saves for backward meanwhile: the nbytes of every
    distinct storage a saved tensor lives in (a saved view keeps its whole storage alive;
    two tensors in one storage count once), except the storages of ``exclude`` (the
    weights, counted as weights). Uses ``torch.autograd.graph.saved_tensors_hooks``, which
    sees what every autograd node and Function saves. Returns (fn's result, bytes)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            # Every saved tensor stays alive until backward, so no address is reused
            # among them and the pointer identifies the storage.
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, sum(storages.values())
