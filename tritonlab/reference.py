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


def ffn_block(x: torch.Tensor, params: dict[str, torch.Tensor], activation: str = "silu",
              eps: float = EPS) -> torch.Tensor:
    """The workloads' feed-forward block with its residual, in x's dtype (float64 tensors
    give the reference): y = x + W_down (act(W_gate h) * (W_up h)), h = rms_norm(x).
    ``params`` has the keys of :func:`tritonlab.workloads.model.init_params`."""
    h = rms_norm(x, params["norm_weight"], eps)
    gate = torch_activation(h @ params["w_gate"].t(), activation)
    up = h @ params["w_up"].t()
    return x + (gate * up) @ params["w_down"].t()
