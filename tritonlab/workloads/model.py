"""The model both workloads run: a Llama-style feed-forward block with a residual,

    h = RMSNorm(x) * norm_weight
    y = x + W_down (act(W_gate h) * (W_up h))

with ``act`` = SiLU by default. :func:`init_params` draws its weights;
:func:`reference_forward` is the plain-torch definition every implementation is checked
against (:func:`tritonlab.reference.ffn_block`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from tritonlab.reference import ffn_block

SIZES = {
    # name: (dim, hidden). tiny/small run under the interpreter; the rest need a GPU.
    "tiny": (64, 192),
    "small": (128, 384),
    "base": (1024, 2816),
    "large": (4096, 14336),  # Llama-3-8B
}


@dataclass(frozen=True)
class MLPConfig:
    dim: int = 64
    hidden: int = 192
    activation: str = "silu"
    eps: float = 1e-5

    @classmethod
    def from_size(cls, name: str, **kw) -> MLPConfig:
        if name not in SIZES:
            raise ValueError(f"unknown model size {name!r}; valid sizes: {', '.join(SIZES)}")
        dim, hidden = SIZES[name]
        return cls(dim=dim, hidden=hidden, **kw)

    def to_dict(self) -> dict:
        return asdict(self)

    def forward_flops(self, tokens: int) -> int:
        """Matmul FLOPs of one forward pass (the norm and elementwise work are negligible)."""
        return 2 * tokens * self.dim * self.hidden * 3


def init_params(cfg: MLPConfig, dtype: torch.dtype, device, seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights in torch.nn.Linear layout (out_features, in_features), scaled 1/sqrt(fan_in) so
    activations keep unit scale; the norm weight near 1."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def w(out_f, in_f):
        return (torch.randn(out_f, in_f, generator=g) * in_f**-0.5).to(device=device, dtype=dtype)

    return {
        "norm_weight": (1.0 + 0.1 * torch.randn(cfg.dim, generator=g)).to(device=device, dtype=dtype),
        "w_gate": w(cfg.hidden, cfg.dim),
        "w_up": w(cfg.hidden, cfg.dim),
        "w_down": w(cfg.dim, cfg.hidden),
    }


def reference_forward(cfg: MLPConfig, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The block in plain torch, in x's dtype (call with float64 tensors for a reference)."""
    return ffn_block(x, params, cfg.activation, cfg.eps)
