"""The eager torch definitions every implementation is checked against: the activations, the
RMSNorm of the model, and the unfused chains the fused kernels replace.

The ops time these chains as their eager baselines and call them on float64 tensors for their
references; the workloads and the tests use the same functions, so there is one definition
of each computation in the lab. Plain torch only: nothing here depends on the kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The epsilon of Llama's RMSNorm, the default of every chain with a norm.
EPS = 1e-5

_ACTIVATIONS = {
    "none": lambda x: x,
    "relu": torch.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def torch_activation(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    """act(x) for an activation name of the kernels (None or "none" is the identity)."""
    name = "none" if activation is None else activation
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of: None, "
                         + ", ".join(repr(a) for a in _ACTIVATIONS if a != "none"))
    return _ACTIVATIONS[name](x)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """RMSNorm over the last dimension as the model defines it: computed in fp32 (float64
    stays float64), rounded back to x's dtype, then multiplied by ``weight``."""
    xf = x.float() if x.dtype != torch.float64 else x
    scale = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * scale).to(x.dtype) * weight


def eager_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 activation: str | None) -> torch.Tensor:
    """act(x W^T + b): F.linear, then the activation as a separate pass."""
    return torch_activation(F.linear(x, weight, bias), activation)


def eager_gated(x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                activation: str = "silu") -> torch.Tensor:
    """The unfused gated up-projection: two GEMMs, the activation and the product, each its
    own pass."""
    return torch_activation(F.linear(x, w_gate), activation) * F.linear(x, w_up)


def eager_rmsnorm_gated(x: torch.Tensor, norm_weight: torch.Tensor, w_gate: torch.Tensor,
                        w_up: torch.Tensor, eps: float = EPS,
                        activation: str = "silu") -> torch.Tensor:
    """:func:`rms_norm`, then :func:`eager_gated`."""
    return eager_gated(rms_norm(x, norm_weight, eps), w_gate, w_up, activation)


def eager_rmsnorm_linear(x: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor,
                         eps: float = EPS, bias: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`rms_norm`, then F.linear."""
    return F.linear(rms_norm(x, norm_weight, eps), weight, bias)


def causal_mask(seq_q: int, seq_k: int, device: torch.device | str | None = None
                ) -> torch.Tensor:
    """(seq_q, seq_k) bool, True where query i sees key j: j <= i + seq_k - seq_q (queries
    aligned to the end of the keys, as a prompt chunk attends to its cached prefix)."""
    i = torch.arange(seq_q, device=device)[:, None]
    j = torch.arange(seq_k, device=device)[None, :]
    return j <= i + (seq_k - seq_q)


def attention_probs(q: torch.Tensor, k: torch.Tensor, causal: bool,
                    scale: float | None = None) -> torch.Tensor:
    """P = softmax(Q K^T * scale + mask), materialised, for q (B, H, Sq, D) and k
    (B, H_kv, Sk, D) with H a multiple of H_kv (each KV head repeated for its query
    heads, as eager Llama code does). The softmax runs in fp32 (float64 stays float64) and
    P is rounded back to q's dtype."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if causal:
        s = s.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.softmax(s.to(work), dim=-1).to(q.dtype)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                    scale: float | None = None) -> torch.Tensor:
    """softmax(Q K^T * scale + mask) V with the S x S matrix materialised
    (:func:`attention_probs`), the eager attention of a model without a fused kernel."""
    return attention_probs(q, k, causal, scale) @ v.repeat_interleave(
        q.shape[1] // v.shape[1], dim=1)


def eager_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale q K^T masked) V, every intermediate materialised in the input dtype.
    q (B, KVH, G, D): one token's G query heads per KV head; k and v (B, KVH, CTX, D): a
    padded cache; mask (B, 1, 1, CTX) bool, True at each sequence's cached positions."""
    scores = (q @ k.transpose(-1, -2)) * scale
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


def ffn_block(x: torch.Tensor, params: dict[str, torch.Tensor], activation: str = "silu",
              eps: float = EPS) -> torch.Tensor:
    """The workloads' feed-forward block with its residual, in x's dtype (float64 tensors
    give the reference): y = x + W_down (act(W_gate h) * (W_up h)), h = rms_norm(x).
    ``params`` has the keys of :func:`tritonlab.workloads.model.init_params`."""
    h = rms_norm(x, params["norm_weight"], eps)
    gate = torch_activation(h @ params["w_gate"].t(), activation)
    up = h @ params["w_up"].t()
    return x + (gate * up) @ params["w_down"].t()


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 500000.0,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary embedding at integer ``positions`` (any shape), each of
    shape (*positions.shape, head_dim), in Llama's "rotate half" layout: the angle of
    position p in column i is p * theta ** (-2 (i mod head_dim/2) / head_dim), the same
    frequencies repeated for the two halves. Computed in float64 and rounded to ``dtype``,
    so every precision rounds the same exact angles."""
    if head_dim % 2:
        raise ValueError(f"the rotary embedding needs an even head_dim, got {head_dim}")
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64,
                                       device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin over the last dimension (head_dim), with
    rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2]) (Llama / Hugging Face convention).
    cos and sin (from :func:`rope_cos_sin`) broadcast against x, e.g. (seq, 1, head_dim) for
    x (batch, seq, heads, head_dim). Computed in fp32 (float64 stays float64) and rounded
    back to x's dtype, like :func:`rms_norm`."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(work)
    half = x.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos.to(work) + rotated * sin.to(work)).to(x.dtype)
