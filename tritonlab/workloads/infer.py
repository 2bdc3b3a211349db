"""The inference workload: the feed-forward block of :mod:`.model` served under
``torch.inference_mode``, with the lab's fused kernels (``impl="triton"``) or eager torch
(``impl="torch"``), on the same weights as the training workload.

The Triton block is two kernels:

1. ``gated_mlp(x, w_gate, w_up, norm_weight=...)``: RMSNorm, both up-projections, the
   activation and the product in one kernel. x is read once per column tile and neither the
   normalised x nor the gate/up tensors ever reach memory.
2. ``matmul(h, w_down^T)`` for the down projection, then the residual added in place.

Token counts of at most 16 (decode) take the split-K kernels of both ops automatically.

fp8 inference (``dtype="fp8"``, :mod:`.fp8`): the weights are quantised once to e4m3 with
one scale per output channel (W_gate and W_up stacked into one (2 hidden, dim) weight, so one
GEMM computes both), and every step quantises its activations per token. The triton impl
runs ``quantize_fp8`` + ``fp8_matmul`` (persistent TMA kernel, scales in its epilogue) for
both projections; the torch impl the same math with the torch quantiser and
``torch._scaled_mm``. RMSNorm, the gating and the residual stay in the compute dtype
(bfloat16 on a GPU, float16 under the interpreter), in torch. Training stays in 16 bits.

Why RMSNorm goes into the gated kernel rather than a separate ``rmsnorm_linear``: the gate and
up projections read the same normalised x, so folding the norm into the kernel that computes
both saves the normalised x entirely (written once and read twice by an rmsnorm_linear of the
concatenated weights followed by a gating pass, or by two rmsnorm_linear calls) and the
sum-of-squares work is shared by both accumulators.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonlab import backend
from tritonlab.kernels.gated_mlp import gated_mlp
from tritonlab.kernels.matmul import matmul
from tritonlab.workloads.fp8 import FP8, compute_dtype, fp8_linear, quantise_weight
from tritonlab.workloads.model import MLPConfig, init_params, reference_forward

IMPLS = ("triton", "torch")
PARAM_NAMES = ("norm_weight", "w_gate", "w_up", "w_down")
_GATING = {"silu": F.silu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh")}


class InferenceWorkload:
    """One inference step of the MLP block: ``y = x + W_down (act(W_gate h) * (W_up h))``
    with ``h = RMSNorm(x) * norm_weight``, on x of shape (tokens, dim).

    ``impl``: "triton" (the fused kernels) or "torch" (``model.reference_forward``, eager).
    ``dtype``: default bfloat16 on the cuda backend, float16 under the interpreter (whose
    bf16 dots are wrong); ``"fp8"`` runs the GEMMs in e4m3 (module docstring) with that
    default as the compute dtype (``self.dtype``) and ``self.fp8`` set. ``device``:
    default the backend's. ``params``: a dict as
    ``model.init_params`` returns (shared with a training workload, say); tensors already of
    this dtype and device are used as they are, others are converted once; default: drawn
    with ``seed``.
    """

    def __init__(self, cfg: MLPConfig, *, impl: str = "triton",
                 dtype: torch.dtype | str | None = None,
                 device: str | torch.device | None = None, seed: int = 0,
                 params: dict[str, torch.Tensor] | None = None):
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r} for the inference workload; expected one "
                             f"of: {', '.join(IMPLS)}")
        if cfg.activation not in ("silu", "gelu_tanh"):
            raise ValueError(f"the fused gated MLP supports activation 'silu' or 'gelu_tanh', "
                             f"got {cfg.activation!r}")
        be = backend.current()
        self.cfg = cfg
        self.impl = impl
        self.fp8 = dtype == FP8
        if isinstance(dtype, str) and not self.fp8:
            raise ValueError(f"unknown dtype {dtype!r} for the inference workload; a "
                             f"torch.dtype or {FP8!r}")
        default = compute_dtype()
        self.dtype = default if self.fp8 or dtype is None else dtype
        self.device = torch.device(device if device is not None else be.device)
        if params is None:
            params = init_params(cfg, self.dtype, self.device, seed)
        self.params = self._adopt(params)
        if self.fp8:
            self.fp8_weights = self._quantise_weights()

    def _adopt(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        missing = [n for n in PARAM_NAMES if n not in params]
        if missing:
            raise ValueError(f"params lacks {', '.join(missing)}; expected the dict of "
                             f"model.init_params with keys {', '.join(PARAM_NAMES)}")
        d, h = self.cfg.dim, self.cfg.hidden
        shapes = {"norm_weight": (d,), "w_gate": (h, d), "w_up": (h, d), "w_down": (d, h)}
        adopted = {}
        for name, shape in shapes.items():
            t = params[name]
            if tuple(t.shape) != shape:
                raise ValueError(f"params[{name!r}] has shape {tuple(t.shape)}; the config "
                                 f"(dim {d}, hidden {h}) needs {shape}")
            adopted[name] = t.detach().to(device=self.device, dtype=self.dtype)
        return adopted

    def _quantise_weights(self) -> dict:
        """Once, at load: W_gate and W_up stacked (one GEMM computes both) and W_down as
        per-output-channel e4m3 weights (:func:`.fp8.quantise_weight`)."""
        p = self.params
        return {"gate_up": quantise_weight(torch.cat([p["w_gate"], p["w_up"]])),
                "down": quantise_weight(p["w_down"])}

    def make_batch(self, tokens: int, seed: int = 0) -> torch.Tensor:
        """x (tokens, dim) ~ N(0, 1) in the workload's dtype and device."""
        if tokens < 1:
            raise ValueError(f"tokens must be >= 1, got {tokens}")
        g = torch.Generator(device="cpu").manual_seed(seed)
        return torch.randn(tokens, self.cfg.dim, generator=g).to(device=self.device,
                                                                   dtype=self.dtype)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output for x (tokens, dim), under torch.inference_mode."""
        if x.dim() != 2 or x.shape[1] != self.cfg.dim:
            raise ValueError(f"x must be (tokens, {self.cfg.dim}), got {tuple(x.shape)}")
        with torch.inference_mode():
            if self.fp8:
                return self._fp8(x)
            if self.impl == "torch":
                return reference_forward(self.cfg, self.params, x)
            return self._fused(x)

    def _fp8(self, x: torch.Tensor) -> torch.Tensor:
        """The block with both projections in fp8 (:func:`.fp8.fp8_linear`); RMSNorm, the
        gating and the residual in the compute dtype."""
        p, w = self.params, self.fp8_weights
        h = F.rms_norm(x, (self.cfg.dim,), p["norm_weight"], self.cfg.eps)
        gate, up = fp8_linear(h, w["gate_up"], self.impl).split(self.cfg.hidden, dim=1)
        return fp8_linear(_GATING[self.cfg.activation](gate) * up, w["down"],
                          self.impl).add_(x)

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        h = gated_mlp(x, p["w_gate"], p["w_up"], self.cfg.activation,
                      norm_weight=p["norm_weight"], eps=self.cfg.eps)
        return matmul(h, p["w_down"].t()).add_(x)

    def flops(self, tokens: int) -> int:
        """Matmul FLOPs of one step: 2 * tokens * dim * hidden * 3."""
        return self.cfg.forward_flops(tokens)
