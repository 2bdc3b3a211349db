"""The training workload: the feed-forward block of :mod:`.model` trained with a loss and an
optimizer step, its three projections run either by the lab's :func:`tritonlab.kernels.linear`
(``impl="triton"``: forward and backward are Triton kernels, the gate's activation fused into
its projection) or by ``torch.nn.functional.linear`` (``impl="torch"``, the reference). The
RMSNorm, the gating product, the residual, the loss and the optimizer are torch in both.

The problem is fixed and learnable: the target of a batch is what a *teacher* block (the same
architecture, weights drawn with another seed) outputs for it, so the loss of the student
goes down step by step, and two workloads with the same seed see the same batches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonlab import backend
from tritonlab.kernels import linear
from tritonlab.reference import eager_linear, rms_norm
from tritonlab.workloads.model import MLPConfig, init_params, reference_forward

IMPLS = ("triton", "torch")


class TrainingWorkload:
    """One training step of the feed-forward block: forward, MSE loss, backward, SGD step.

    ``params``: the block's weights as ``torch.nn.Parameter`` (names of
    :func:`tritonlab.workloads.model.init_params`), updated in place by :meth:`step`.
    ``dtype`` is the dtype of the weights, activations and gradients; ``device`` defaults to
    the backend's (``cuda`` or ``cpu`` under the interpreter). The optimizer is SGD with
    momentum ``momentum`` and learning rate ``lr``.
    """

    def __init__(self, cfg: MLPConfig, *, impl: str = "triton",
                 dtype: torch.dtype = torch.float32, device: str | torch.device | None = None,
                 seed: int = 0, lr: float = 0.1, momentum: float = 0.9):
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; expected one of: {', '.join(IMPLS)}")
        if device is None:
            device = backend.current().device
        self.cfg = cfg
        self.impl = impl
        self.dtype = dtype
        self.device = torch.device(device)
        self.seed = seed
        self.params = {name: torch.nn.Parameter(t)
                       for name, t in init_params(cfg, dtype, self.device, seed).items()}
        self._teacher = init_params(cfg, dtype, self.device, seed + 1)
        self.optimizer = torch.optim.SGD(self.params.values(), lr=lr, momentum=momentum)
        if impl == "triton":
            self._linear = linear
        else:
            self._linear = lambda x, w, activation=None: eager_linear(x, w, None, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """y = x + W_down (act(W_gate h) * (W_up h)), h = RMSNorm(x) * norm_weight."""
        p = self.params
        h = rms_norm(x, p["norm_weight"], self.cfg.eps)
        gate = self._linear(h, p["w_gate"], activation=self.cfg.activation)
        up = self._linear(h, p["w_up"])
        return x + self._linear(gate * up, p["w_down"])

    def make_batch(self, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, target): ``tokens`` rows of unit-scale inputs drawn from ``seed``, and the
        teacher block's output for them. The same (workload seed, tokens, seed) always gives
        the same batch, whatever the impl."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        x = torch.randn(tokens, self.cfg.dim, generator=g).to(device=self.device,
                                                               dtype=self.dtype)
        with torch.no_grad():
            target = reference_forward(self.cfg, self._teacher, x)
        return x, target

    def loss(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the block's output, computed in fp32."""
        return F.mse_loss(self.forward(x).float(), target.float())

    def step(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One optimizer step on (x, target); returns the loss before the update (detached)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, target)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def flops(self, tokens: int) -> int:
        """Matmul FLOPs of one step: the forward's three projections (2 * tokens * dim *
        hidden each) and, in backward, the input and weight gradient of each (twice the
        forward), so 3x the forward. Norm, elementwise, loss and optimizer work is left out."""
        return 3 * self.cfg.forward_flops(tokens)
