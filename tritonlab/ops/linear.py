"""linear: y = act(x W^T + b), the trainable layer of :mod:`tritonlab.kernels.linear`, in all
four modes, against eager F.linear + activation, its torch.compile, and cuBLASLt's fused
epilogue where one exists.

One op per (activation, bias) variant, so that a sweep names exactly what it measures:

  linear            gelu (erf) + bias   the Linear+GELU training target
  linear_gelu_tanh  gelu_tanh + bias    the GELU cuBLASLt fuses (torch._addmm_activation)
  linear_relu       relu + bias         also fused by cuBLASLt
  linear_silu       silu + bias         the Llama MLP gate's activation
  linear_plain      no bias, no act.    the bare GEMMs of a linear layer's fwd and bwd
"""

from __future__ import annotations

import torch

from tritonlab.kernels._gemm import precision_for
from tritonlab.kernels._splitk import DECODE_MAX_M, splitk_targets
from tritonlab.kernels.linear import FWD_LAST, KERNELS, SAVES_DACT, acc_dtype, dact_mode, linear
from tritonlab.ops.contract import (
    Impl,
    OpSpec,
    autograd_builder,
    compile_baseline,
    reduction_tolerance,
    term_rss,
)
from tritonlab.ops.shapes import mnk
from tritonlab.reference import eager_linear, torch_activation

__all__ = ["LinearOp", "SPECS"]

_LLAMA3_8B_MLP_KN = [(4096, 14336), (14336, 4096)]  # (K, N): up/gate, down projections

# The kernels each mode runs, by the names of their compile targets and Impl.config() keys.
_MODE_KERNELS = {"fwd": ("fwd",), "infer": ("fwd",), "bwd": ("bwd_dx", "bwd_dw"),
                 "fwd_bwd": ("fwd", "bwd_dx", "bwd_dw")}


class LinearOp(OpSpec):
    """One (activation, bias) variant of the trainable linear layer."""

    dims = ("M", "N", "K")
    modes = ("fwd", "bwd", "fwd_bwd", "infer")
    presets = {
        # tiny: interpreter-sized and odd, so every edge mask of the three kernels is exercised.
        "tiny": [mnk(64, 64, 64), mnk(97, 83, 131), mnk(1, 130, 75), mnk(150, 96, 40)],
        # quick: one training-sized Llama-3-8B up-projection and one decode-sized shape.
        "quick": [mnk(4096, 14336, 4096), mnk(16, 4096, 4096)],
        "square": [mnk(s, s, s) for s in (512, 1024, 2048, 4096, 8192)],
        # llm: Llama-3-8B MLP projections; M = 2048..16384 tokens for training, 1..16 for decode.
        "llm": [mnk(m, n, k) for m in (1, 8, 16, 2048, 4096, 8192, 16384)
                for (k, n) in _LLAMA3_8B_MLP_KN],
    }

    def __init__(self, name: str, *, activation: str, bias: bool, description: str):
        self.activation = activation
        self.has_bias = bias
        # GELU/SiLU save act'(Z) for backward; ReLU reads its derivative off y.
        self.saves_dact = activation in SAVES_DACT
        self.tags = {"activation": activation, "bias": "yes" if bias else "no"}
        super().__init__(name, description=description)

    # ------------------------------------------------------------------------- impls

    def implementations(self):
        act = self.activation
        impls = [
            Impl("triton", "triton", _builder(lambda x, w, b: linear(x, w, b, act)),
                 "fused Triton kernels: GEMM+bias+act forward; act' fused into the dX and dW "
                 "GEMMs, db from the dW pass", config=self.launch_config),
            Impl("torch", "baseline", _builder(lambda x, w, b: eager_linear(x, w, b, act)),
                 "eager F.linear + activation, torch autograd"),
            Impl("torch_compile", "baseline", self._build_compiled,
                 "torch.compile of the eager chain (dynamic=False)", backends=("cuda",)),
        ]
        if self.has_bias and act in ("relu", "gelu_tanh"):
            impls.append(Impl(
                "addmm_act", "baseline", self._build_addmm,
                "torch._addmm_activation: cuBLASLt GEMM with the bias and activation epilogue "
                "(its GELU is the tanh approximation)", modes=("infer",), backends=("cuda",)))
        return impls

    def _build_compiled(self, inputs, mode):
        fn = compile_baseline(eager_linear)
        act = self.activation
        return _builder(lambda x, w, b: fn(x, w, b, act))(inputs, mode)

    def _build_addmm(self, inputs, mode):
        x, w, b = inputs["x"], inputs["weight"], inputs["bias"]
        use_gelu = self.activation == "gelu_tanh"

        def run():
            with torch.inference_mode():
                return (torch._addmm_activation(b, x, w.t(), use_gelu=use_gelu),)
        return run

    def launch_config(self, mode):
        """The last launch config of each kernel ``mode`` runs, keyed by its compile target's
        name (the infer forward has its own target where it stores no D); None before any
        launch."""
        cfgs = {}
        for kernel in _MODE_KERNELS[mode]:
            target = "infer" if (mode == "infer" and self.saves_dact) else kernel
            cfgs[target] = FWD_LAST() if kernel == "fwd" else KERNELS[kernel].last_config
        return cfgs if any(v is not None for v in cfgs.values()) else None

    # ---------------------------------------------------------------------- formulas

    def make_inputs(self, shape, dtype, device, seed):
        """x ~ N(0, 1) (unit-scale activations), W ~ N(0, 1/K) (so x W^T has unit scale, as
        with torch.nn.Linear's initialisation), b ~ N(0, 0.25), and the output gradient
        ``grad`` ~ N(0, 1) used by bwd and fwd_bwd."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        m, n, k = shape["M"], shape["N"], shape["K"]
        inputs = {"x": torch.randn(m, k, generator=g),
                  "weight": torch.randn(n, k, generator=g) * k ** -0.5}
        if self.has_bias:
            inputs["bias"] = 0.5 * torch.randn(n, generator=g)
        inputs["grad"] = torch.randn(m, n, generator=g)
        return {name: t.to(device=device, dtype=dtype) for name, t in inputs.items()}

    def reference(self, inputs, mode):
        x, w, b = (inputs[k].double() if inputs.get(k) is not None else None
                   for k in ("x", "weight", "bias"))
        leaves = tuple(t.requires_grad_() for t in (x, w, b) if t is not None)
        with torch.enable_grad():
            y = eager_linear(x, w, b, self.activation)
        if mode in ("fwd", "infer"):
            return (y.detach(),)
        grads = torch.autograd.grad(y, leaves, inputs["grad"].double())
        return grads if mode == "bwd" else (y.detach(), *grads)

    def flops(self, shape, mode):
        """2MNK per GEMM (one forward, two backward) plus one FLOP per element for each
        elementwise product or sum in the math: the bias add (fwd), G * act'(Z) and the db
        column sums (bwd). Evaluating act and act' is not counted (its instruction count
        depends on the implementation; torch.utils.flop_counter counts no elementwise work)."""
        m, n, k = shape["M"], shape["N"], shape["K"]
        fwd = 2 * m * n * k + (m * n if self.has_bias else 0)
        bwd = (4 * m * n * k + (m * n if self.activation != "none" else 0)
               + (m * n if self.has_bias else 0))
        return {"fwd": fwd, "infer": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[mode]

    def bytes(self, shape, dtype, mode):
        """Compulsory traffic, each tensor once. infer: read x, W, b, write y. fwd: also write
        the saved D = act'(Z) (GELU/SiLU; ReLU reuses y). bwd: read G, D or y (when there is
        an activation), W and x; write dx, dW, db. fwd_bwd: fwd + bwd (x and W are read in
        both phases, as in training)."""
        s = dtype.itemsize
        m, n, k = shape["M"], shape["N"], shape["K"]
        nb = n if self.has_bias else 0
        infer = m * k + n * k + nb + m * n
        fwd = infer + (m * n if self.saves_dact else 0)
        bwd = (m * n + (m * n if self.activation != "none" else 0) + 2 * (n * k + m * k)
               + nb)
        return s * {"fwd": fwd, "infer": infer, "bwd": bwd, "fwd_bwd": fwd + bwd}[mode]

    def unfused_bytes(self, shape, dtype, mode):
        """The eager chain's traffic, each kernel's own compulsory bytes summed: F.linear
        (x, W, b -> Z), the activation (Z -> y); backward: the activation's backward
        (G, Z -> G'), two GEMMs each reading G', and a column sum of G' for db."""
        s = dtype.itemsize
        m, n, k = shape["M"], shape["N"], shape["K"]
        nb = n if self.has_bias else 0
        act = self.activation != "none"
        fwd = m * k + n * k + nb + m * n + (2 * m * n if act else 0)
        bwd = ((3 * m * n if act else 0) + (m * n + n * k + m * k) + (m * n + m * k + n * k)
               + (m * n + nb if self.has_bias else 0))
        return s * {"fwd": fwd, "infer": fwd, "bwd": bwd, "fwd_bwd": fwd + bwd}[mode]

    def tolerance(self, dtype, shape, mode):
        """Each output from its own reduction: y over K, dx over N, dW and db over M."""
        m, n, k = shape["M"], shape["N"], shape["K"]
        tf32 = precision_for(dtype, None) == "tf32"
        y = reduction_tolerance(dtype, k, tf32=tf32)
        grads = tuple(reduction_tolerance(dtype, length, tf32=tf32)
                      for length in (n, m, m)[:3 if self.has_bias else 2])
        return {"fwd": (y,), "infer": (y,), "bwd": grads, "fwd_bwd": (y, *grads)}[mode]

    def error_scale(self, inputs, mode):
        """With Z = x W^T + b, r(Z) the root-sum-square of the K products and the bias each
        element of Z sums, and G' = G act'(Z):

        * y = act(Z): max(|act'(Z)| r(Z), |Z|). The error of Z carried through act, and the
          error of act itself, which GELU and SiLU evaluate as Z times a gate known to
          absolute, not relative, precision (GELU's 1 + erf(Z / sqrt 2) cancels for negative
          Z), so y is no more accurate than Z's own scale.
        * dx, dW, db: the root-sum-square of the terms of G' W, G'^T x and the column sums of
          G', where G' is taken at the scale |G| (|act'(Z)| + |act''(Z)| r(Z)): the error of
          Z moves act'(Z) by act''(Z) times it. GELU's and SiLU's act' is evaluated to
          absolute precision (about 1), not relative to its value, so for them G' is no more
          accurate than |G|; ReLU's and the identity's act' is exact.
        """
        x, w = inputs["x"].double(), inputs["weight"].double()
        b = inputs["bias"].double() if self.has_bias else None
        z_rss = ((x * x) @ (w * w).t() + (b * b if b is not None else 0.0)).sqrt()
        z = (x @ w.t() + (b if b is not None else 0.0)).requires_grad_()
        with torch.enable_grad():
            (dact,) = torch.autograd.grad(torch_activation(z, self.activation).sum(), z,
                                          create_graph=True)
            # act'' is zero (no graph) for the identity and ReLU.
            ddact = (torch.autograd.grad(dact.sum(), z)[0] if dact.requires_grad
                     else torch.zeros_like(z))
        dact, z = dact.detach(), z.detach()
        y = torch.maximum(dact.abs() * z_rss, z.abs())
        if mode in ("fwd", "infer"):
            return (y,)
        gate = dact.abs() + ddact.abs() * z_rss
        if self.saves_dact:
            gate = gate.clamp(min=1.0)
        g = inputs["grad"].double().abs() * gate
        grads = (term_rss(g, w), term_rss(g.t(), x), (g * g).sum(0).sqrt())
        grads = grads[:3 if self.has_bias else 2]
        return grads if mode == "bwd" else (y, *grads)

    def compile_targets(self, dtype):
        """The three kernels as launched on a row-major Llama-3-8B up-projection (M=8192
        tokens, N=14336, K=4096); unit strides become constants, as Triton's JIT specialises
        them. The infer forward (no D store) is listed apart where it differs from the
        training forward; the split-K decode kernel that decode-sized inference takes
        (M <= 16) is listed as ``decode``."""
        m, n, k = 8192, 14336, 4096
        common = dict(M=m, N=n, K=k, INPUT_PRECISION=precision_for(dtype, None),
                      USE_INT64=False, ACC_DTYPE=acc_dtype(dtype))
        rows = dict(M_INNER=m, stride_xo=0, stride_xm=k, stride_xk=1, SPLIT_ROWS=False)
        bwd = dict(common, stride_gm=n, stride_gn=1, stride_sm=n, stride_sn=1,
                   DACT=dact_mode(self.activation))
        fwd = dict(common, **rows, stride_wn=k, stride_wk=1, stride_b=1, stride_ym=n,
                   stride_yn=1, HAS_BIAS=self.has_bias, ACTIVATION=self.activation)
        fwd_kernel = KERNELS["fwd"]
        targets = [fwd_kernel.compile_target("fwd", dtype, dict(fwd, SAVE_DACT=self.saves_dact))]
        if self.saves_dact:
            targets.append(fwd_kernel.compile_target("infer", dtype, dict(fwd, SAVE_DACT=False)))
        targets += [
            KERNELS["bwd_dx"].compile_target("bwd_dx", dtype, dict(
                bwd, stride_wn=k, stride_wk=1, stride_dxm=k, stride_dxk=1)),
            KERNELS["bwd_dw"].compile_target("bwd_dw", dtype, dict(
                bwd, **rows, stride_dwn=k, stride_dwk=1, stride_db=1, COMPUTE_DW=True,
                COMPUTE_DB=self.has_bias)),
        ]
        # Decode-sized inference (M <= 16) runs the split-K kernel with this epilogue.
        targets += splitk_targets("decode", dtype, DECODE_MAX_M, n, k, has_bias=self.has_bias,
                                  activation=self.activation)
        return targets


def _builder(forward):
    """An Impl.build from ``forward(x, weight, bias) -> y`` (see ``autograd_builder``)."""
    return autograd_builder(forward, ("x", "weight", "bias"))


SPECS = [
    LinearOp("linear", activation="gelu", bias=True,
             description="y = gelu(x W^T + b), erf GELU: trainable Linear+GELU"),
    LinearOp("linear_gelu_tanh", activation="gelu_tanh", bias=True,
             description="y = gelu_tanh(x W^T + b): trainable Linear+GELU, cuBLASLt's tanh form"),
    LinearOp("linear_relu", activation="relu", bias=True,
             description="y = relu(x W^T + b): trainable Linear+ReLU"),
    LinearOp("linear_silu", activation="silu", bias=True,
             description="y = silu(x W^T + b): trainable Linear+SiLU"),
    LinearOp("linear_plain", activation="none", bias=False,
             description="y = x W^T: trainable Linear, no bias, no activation"),
]
