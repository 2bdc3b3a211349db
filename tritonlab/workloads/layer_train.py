"""The training workload of the decoder layer (:mod:`.layer`): forward and backward of
``n_layers`` layers over (batch, seq) tokens, an MSE loss and a mixed-precision AdamW step.

What runs where, per layer (impl "triton" | impl "torch"):

======================  ==================================  ================================
part                    triton                              torch
======================  ==================================  ================================
QKV projection          ``linear`` (one GEMM, fused QKV)    ``F.linear``
RoPE on Q and K         torch (a Function, see below)       torch (autograd through it)
causal GQA attention    ``attention`` (flash fwd + bwd)     ``F.scaled_dot_product_attention``
O projection            ``linear``                          ``F.linear``
gate projection + silu  ``linear(activation="silu")``       ``F.linear`` then ``F.silu``
up, down projections    ``linear``                          ``F.linear``
RMSNorm (both)          torch (a Function, see below)       torch (autograd through it)
residuals, gating, loss torch                               torch
======================  ==================================  ================================

so the triton impl runs every GEMM and attention, forward and backward, as the lab's
kernels, and is torch where the row says so. Its RMSNorm and RoPE are
``torch.autograd.Function`` s written in torch that save what a fused kernel would save (the
norm's input and fp32 1/rms; for RoPE only the shared cos/sin tables), rather than the
half-dozen intermediates autograd would keep through the eager chain: that is what makes the
saved-activation formula (:func:`.layer.train_activation_bytes`) short, and it is the memory
a real training stack has. The torch impl is what eager PyTorch code writes.

Mixed precision, as training runs: the optimizer's parameters are fp32 master weights
(``params``); each step casts them to working copies in ``dtype`` (bf16 on a GPU; float16 or
float32 under the interpreter, whose bf16 is wrong) through autograd, so the backward's
working-precision weight gradients arrive on the masters in fp32; AdamW keeps its moments in
fp32 and is ``fused=True`` where torch has the fused kernel for the device (else
``foreach``; ``optimizer_impl`` says which). There is no loss scaling: bf16 has fp32's
exponent range (fp16 here exists only to test the interpreter path at unit scale).

The problem is learnable and fixed, as in :mod:`.train`: the target of a batch is what a
teacher (the same layers, weights from ``seed + 1``) outputs for it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonlab import backend
from tritonlab.kernels import attention, linear
from tritonlab.reference import apply_rope, eager_linear, rms_norm
from tritonlab.workloads.layer import (
    LayerConfig,
    check_count,
    init_params,
    optimizer_bytes,
    reference_forward,
    rope_tables,
    saved_tensor_bytes,
    train_activation_bytes,
    train_flops,
    weight_bytes,
    with_total,
)

IMPLS = ("triton", "torch")


class _RMSNorm(torch.autograd.Function):
    """:func:`tritonlab.reference.rms_norm` with a hand-written backward that saves only x
    and the fp32 1/rms per row (what a fused RMSNorm kernel keeps)."""

    @staticmethod
    def forward(ctx, x, weight, eps):
        xf = x.float() if x.dtype != torch.float64 else x
        rstd = torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd).to(x.dtype) * weight

    @staticmethod
    def backward(ctx, dy):
        x, weight, rstd = ctx.saved_tensors
        work = rstd.dtype
        n = x.to(work) * rstd  # the normalised x, recomputed
        dx = dw = None
        if ctx.needs_input_grad[1]:
            # The forward multiplies the weight by n rounded to x's dtype.
            dw = (dy.to(work) * n.to(x.dtype).to(work)).reshape(-1, x.shape[-1]).sum(0)
            dw = dw.to(weight.dtype)
        if ctx.needs_input_grad[0]:
            # d/dx of x * rstd(x): rstd (dn - n mean(dn n)), dn the gradient w.r.t. n.
            dn = dy.to(work) * weight.to(work)
            dx = (rstd * (dn - n * (dn * n).mean(-1, keepdim=True))).to(x.dtype)
        return dx, dw, None


class _Rope(torch.autograd.Function):
    """:func:`tritonlab.reference.apply_rope` saving only cos and sin: the rotation is
    linear and orthogonal, so its backward is the rotation by the opposite angle,
    apply_rope(dy, cos, -sin) (the sin table repeats over the two halves, so the diagonal
    sin commutes with rotate_half)."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return apply_rope(x, cos, sin)

    @staticmethod
    def backward(ctx, dy):
        cos, sin = ctx.saved_tensors
        return apply_rope(dy, cos, -sin), None, None


def _sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


class LayerTrainStep:
    """One training step of ``n_layers`` decoder layers: working copies of the weights,
    forward, MSE loss against the teacher, backward, AdamW step.

    ``cfg``: the layer config; ``impl``: "triton" or "torch" (see the module docstring);
    ``dtype``: the working precision of weights, activations and their gradients (default
    bfloat16 on the cuda backend, float32 under the interpreter); ``device``: default the
    backend's; ``seed``: of the weights (the teacher's is seed + 1); ``lr``,
    ``weight_decay``: AdamW's.

    Attributes: ``params`` (per layer, a dict of fp32 ``torch.nn.Parameter`` master weights
    with the names of :func:`.layer.init_params`), ``optimizer``, ``optimizer_impl``
    ("fused" or "foreach").
    """

    def __init__(self, cfg: LayerConfig, n_layers: int = 1, *, impl: str = "triton",
                 dtype: torch.dtype | None = None, device: str | torch.device | None = None,
                 seed: int = 0, lr: float = 1e-3, weight_decay: float = 0.01):
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; expected one of: {', '.join(IMPLS)}")
        check_count(n_layers, "n_layers")
        be = backend.current()
        self.cfg = cfg
        self.n_layers = n_layers
        self.impl = impl
        self.dtype = dtype or (torch.bfloat16 if be.is_gpu else torch.float32)
        self.device = torch.device(device if device is not None else be.device)
        self.seed = seed
        self.params = [{name: torch.nn.Parameter(t) for name, t in layer.items()}
                       for layer in init_params(cfg, n_layers, torch.float32, self.device, seed)]
        self._teacher = init_params(cfg, n_layers, self.dtype, self.device, seed + 1)
        flat = [p for layer in self.params for p in layer.values()]
        try:
            self.optimizer = torch.optim.AdamW(flat, lr=lr, weight_decay=weight_decay,
                                               fused=True)
            self.optimizer_impl = "fused"
        except RuntimeError:  # no fused AdamW for this device and dtype in this torch
            self.optimizer = torch.optim.AdamW(flat, lr=lr, weight_decay=weight_decay,
                                               foreach=True)
            self.optimizer_impl = "foreach"
        if impl == "triton":
            self._norm, self._rope = _RMSNorm.apply, _Rope.apply
            self._linear = linear
            self._attention = lambda q, k, v: attention(q, k, v, causal=True)
        else:
            self._norm, self._rope = rms_norm, apply_rope
            self._linear = lambda x, w, activation=None: eager_linear(x, w, None, activation)
            self._attention = _sdpa_causal

    def working_weights(self) -> list[dict[str, torch.Tensor]]:
        """The masters cast to ``dtype`` through autograd, one dict per layer: attn_norm,
        wqkv (wq, wk and wv stacked, one GEMM for the three projections), wo, mlp_norm,
        w_gate, w_up, w_down. Always copies (float32 too), so the memory is a working
        copy's whatever the dtype."""
        dt = self.dtype
        return [{"attn_norm": p["attn_norm"].to(dt, copy=True),
                 "wqkv": torch.cat([p["wq"].to(dt), p["wk"].to(dt), p["wv"].to(dt)]),
                 **{n: p[n].to(dt, copy=True)
                    for n in ("wo", "mlp_norm", "w_gate", "w_up", "w_down")}}
                for p in self.params]

    def forward(self, x: torch.Tensor,
                weights: list[dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
        """The layers' output (batch, seq, dim) for x (batch, seq, dim) in ``dtype``, on
        ``weights`` (default: fresh :meth:`working_weights`), recording autograd state."""
        if weights is None:
            weights = self.working_weights()
        positions = torch.arange(x.shape[1], device=x.device)
        cos, sin = rope_tables(self.cfg, positions, torch.float32)
        for w in weights:
            x = self._layer(x, w, cos, sin)
        return x

    def _layer(self, x, w, cos, sin):
        batch, seq, _ = x.shape
        H, Hkv, D = self.cfg.n_heads, self.cfg.n_kv_heads, self.cfg.head_dim
        n = self._norm(x, w["attn_norm"], self.cfg.eps)
        q, k, v = self._linear(n, w["wqkv"]).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = self._rope(q.view(batch, seq, H, D), cos, sin).transpose(1, 2)
        k = self._rope(k.view(batch, seq, Hkv, D), cos, sin).transpose(1, 2)
        # A copy: saved as a view, V would keep the whole fused QKV output alive.
        v = v.reshape(batch, seq, Hkv, D).transpose(1, 2).contiguous()
        o = self._attention(q, k, v).transpose(1, 2).reshape(batch, seq, H * D)
        x = x + self._linear(o, w["wo"])
        m = self._norm(x, w["mlp_norm"], self.cfg.eps)
        gated = self._linear(m, w["w_gate"], activation="silu") * self._linear(m, w["w_up"])
        return x + self._linear(gated, w["w_down"])

    def make_batch(self, batch: int, seq: int, seed: int = 0
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, target), both (batch, seq, dim) in ``dtype``: unit-scale inputs drawn from
        ``seed`` and the teacher's output for them (the same for both impls)."""
        check_count(batch, "batch")
        check_count(seq, "seq")
        g = torch.Generator(device="cpu").manual_seed(seed)
        x = torch.randn(batch, seq, self.cfg.dim, generator=g).to(device=self.device,
                                                                     dtype=self.dtype)
        with torch.no_grad():
            target = reference_forward(self.cfg, self._teacher, x)
        return x, target

    def loss(self, x: torch.Tensor, target: torch.Tensor,
             weights: list[dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
        """Mean squared error of the layers' output against ``target``, in fp32."""
        return F.mse_loss(self.forward(x, weights).float(), target.float())

    def backward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Forward and backward without the update: leaves the fp32 gradients in each
        master's ``.grad`` (replacing earlier ones); returns the loss (detached)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x, target)
        loss.backward()
        return loss.detach()

    def step(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One training step on (x, target); returns the loss before the update."""
        loss = self.backward(x, target)
        self.optimizer.step()
        return loss

    def saved_activation_bytes(self, x: torch.Tensor, target: torch.Tensor) -> int:
        """Bytes the forward and loss on (x, target) save for backward, counted by
        :func:`.layer.saved_tensor_bytes` (distinct storages; the working weights, which
        the GEMMs and norms also save, excluded: they are the weights)."""
        weights = self.working_weights()
        exclude = [t for w in weights for t in w.values()]
        _, nbytes = saved_tensor_bytes(lambda: self.loss(x, target, weights), exclude)
        return nbytes

    def flops(self, batch: int, seq: int) -> int:
        """FLOPs of a step (:func:`.layer.train_flops`)."""
        return train_flops(self.cfg, self.n_layers, batch, seq)

    def footprint(self, batch: int, seq: int) -> dict[str, int]:
        """Bytes by part for a step on (batch, seq): ``weights`` (the working copies),
        ``gradients`` (fp32, on the masters), ``optimizer`` (fp32 masters, exp_avg,
        exp_avg_sq, step counts), ``activations`` (saved for backward), and ``total``.

        The triton impl's activations are :func:`.layer.train_activation_bytes` (a formula,
        no run). The torch impl's depend on the SDPA backend torch picks (the math backend
        saves the attention matrix, flash only its log-sum-exp), so they are measured: a
        forward on a batch of that shape under :meth:`saved_activation_bytes`."""
        cfg, L = self.cfg, self.n_layers
        if self.impl == "triton":
            activations = train_activation_bytes(cfg, L, batch, seq, self.dtype)
        else:
            activations = self.saved_activation_bytes(*self.make_batch(batch, seq))
        return with_total({
            "weights": weight_bytes(cfg, L, self.dtype),
            "gradients": weight_bytes(cfg, L, torch.float32),
            "optimizer": optimizer_bytes(cfg, L),
            "activations": activations,
        })
