"""The decoder layer's dimensions: its named sizes and :class:`LayerConfig`, with the weight
shapes and counts that follow from them.

Plain Python (no torch, no kernels), so that what only needs the sizes, such as the analytic
model of :mod:`tritonlab.predict`, reads the same definition as the workloads of
:mod:`tritonlab.workloads.layer` without their start-up.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["SIZES", "PARAM_NAMES", "REGIMES", "LayerConfig", "check_count"]

# The regimes a layer runs in, in the order the contrast and the prediction report them.
REGIMES = ("train", "prefill", "decode")

SIZES = {
    # head_dim 32 for the interpreter-sized configs: the smallest head dim the attention
    # kernels take (32, 64, 128, 256). tiny/small run under the interpreter; llama3-8b
    # needs a GPU.
    "tiny": dict(dim=64, n_heads=2, n_kv_heads=1, head_dim=32, hidden=128),
    "small": dict(dim=128, n_heads=4, n_kv_heads=2, head_dim=32, hidden=256),
    "llama3-8b": dict(dim=4096, n_heads=32, n_kv_heads=8, head_dim=128, hidden=14336),
}

# The weights of one layer, in init_params' order, and the shape of each.
PARAM_NAMES = ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w_gate", "w_up", "w_down")


@dataclass(frozen=True)
class LayerConfig:
    """One decoder layer's dimensions: model width ``dim``, ``n_heads`` query heads and
    ``n_kv_heads`` key/value heads of ``head_dim`` each (n_heads a multiple of n_kv_heads),
    MLP width ``hidden``, RMSNorm ``eps``, RoPE base ``rope_theta`` (Llama 3's 500000)."""

    dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    eps: float = 1e-5
    rope_theta: float = 500000.0

    def __post_init__(self):
        for name in ("dim", "n_heads", "n_kv_heads", "head_dim", "hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads "
                             f"({self.n_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (the rotary embedding rotates pairs), "
                             f"got {self.head_dim}")

    @classmethod
    def from_size(cls, name: str, **kw) -> LayerConfig:
        """The config of a named size (:data:`SIZES`); ``kw`` overrides eps or rope_theta."""
        if name not in SIZES:
            raise ValueError(f"unknown layer size {name!r}; valid sizes: {', '.join(SIZES)}")
        return cls(**SIZES[name], **kw)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Each weight's shape, in torch.nn.Linear layout (out_features, in_features)."""
        d, h = self.dim, self.hidden
        return {"attn_norm": (d,), "wq": (self.q_dim, d), "wk": (self.kv_dim, d),
                "wv": (self.kv_dim, d), "wo": (d, self.q_dim), "mlp_norm": (d,),
                "w_gate": (h, d), "w_up": (h, d), "w_down": (d, h)}

    def param_count(self) -> int:
        """Elements of one layer's weights."""
        return sum(math.prod(s) for s in self.param_shapes().values())

    def projection_flops(self, tokens: int) -> int:
        """Forward FLOPs of the layer's projections for ``tokens`` tokens: QKV and O
        (2 * dim * (2 q_dim + 2 kv_dim) per token) and gate, up and down
        (3 * 2 * dim * hidden per token). Norms, RoPE and elementwise work are left out."""
        per_token = 2 * self.dim * (2 * self.q_dim + 2 * self.kv_dim) + 6 * self.dim * self.hidden
        return tokens * per_token

    def attention_flops(self, pairs: int) -> int:
        """Forward FLOPs of attention over ``pairs`` (query, key) pairs summed over the
        batch: S = Q K^T and O = P V, 2 * head_dim each per pair and query head. Softmax
        arithmetic is not counted (the convention of docs/attention.md)."""
        return 4 * self.n_heads * self.head_dim * pairs


def check_count(value: object, name: str) -> int:
    """``value`` (a layer count, batch size, length...) as an int >= 1, or a ValueError
    naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value
