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


def ffn_block(x: torch.Tensor, params: dict[str, torch.Tensor], activation: str = "silu",
              eps: float = EPS) -> torch.Tensor:
    """The workloads' feed-forward block with its residual, in x's dtype (float64 tensors
    give the reference): y = x + W_down (act(W_gate h) * (W_up h)), h = rms_norm(x).
    ``params`` has the keys of :func:`tritonlab.workloads.model.init_params`."""
    h = rms_norm(x, params["norm_weight"], eps)
    gate = torch_activation(h @ params["w_gate"].t(), activation)
    up = h @ params["w_up"].t()
    return x + (gate * up) @ params["w_down"].t()
