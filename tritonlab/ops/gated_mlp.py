"""gated_mlp and rmsnorm_gated_mlp: the fused gated up-projection of a Llama-style MLP,
y = silu(x W_gate^T) * (x W_up^T), and the same on RMSNorm(x) (kernel:
:mod:`tritonlab.kernels.gated_mlp`), against the eager chains it replaces
(:func:`tritonlab.reference.eager_gated`, :func:`~tritonlab.reference.eager_rmsnorm_gated`)
and their torch.compile. Inference only."""

from __future__ import annotations

import torch

from tritonlab.kernels._gemm import precision_for
from tritonlab.kernels._splitk import splitk_targets
from tritonlab.kernels.gated_mlp import (
    GATED_KERNEL,
    GATED_LAST,
    GATED_PERSISTENT,
    gated_mlp,
    persistent_gated_configs,
)
from tritonlab.kernels.tuning import CompileTarget, hopper_class
from tritonlab.ops.contract import (
    Impl,
    OpSpec,
    compile_baseline,
    reduction_tolerance,
    term_rss,
)
from tritonlab.ops.rmsnorm_linear import rms_norm_chain_bytes
from tritonlab.ops.shapes import LLAMA3_8B_DIM, LLAMA3_8B_HIDDEN, mnk
from tritonlab.reference import EPS, eager_gated, eager_rmsnorm_gated, rms_norm

__all__ = ["GatedMLPOp", "SPECS"]

# Llama-3-8B feed-forward: dim 4096 -> hidden 14336. N is the hidden size, K the model dim.
DECODE_TOKENS = (1, 2, 4, 8, 16)
PREFILL_TOKENS = (128, 512, 2048, 8192)


class GatedMLPOp(OpSpec):
    """The gated up-projection; ``rms=True`` folds the RMSNorm in front of it."""

    dims = ("M", "N", "K")
    modes = ("infer",)
    presets = {
        # tiny: interpreter-sized and odd; M = 1 and 13 take the decode path, 37 and 70 the
        # tiled.
        "tiny": [mnk(1, 96, 80), mnk(13, 130, 72), mnk(37, 83, 131), mnk(70, 64, 64)],
        "quick": [mnk(1, 14336, 4096), mnk(16, 14336, 4096), mnk(2048, 14336, 4096)],
        "llm": [mnk(m, LLAMA3_8B_HIDDEN, LLAMA3_8B_DIM) for m in DECODE_TOKENS + PREFILL_TOKENS],
    }

    def __init__(self, *, rms: bool):
        self.rms = rms
        self._eager = eager_rmsnorm_gated if rms else eager_gated
        self._compiled = None
        what = "RMSNorm + gated up-projection" if rms else "gated up-projection"
        super().__init__(
            "rmsnorm_gated_mlp" if rms else "gated_mlp",
            description=(f"{what}: silu(x Wg^T) * (x Wu^T)" + (" on RMSNorm(x)" if rms else "")
                         + ", one kernel (inference)"))

    # ------------------------------------------------------------------------- impls

    def implementations(self):
        norm_note = " (model.rms_norm first)" if self.rms else ""
        return (
            Impl("triton", "triton", self._build_triton,
                 f"one Triton kernel, two accumulators{', norm folded in' if self.rms else ''}; "
                 "split-K for M <= 16",
                 config=lambda mode: GATED_LAST()),
            Impl("torch", "baseline", self._chain_builder(self._eager),
                 f"eager chain{norm_note}: F.linear x2, F.silu, mul"),
            Impl("torch_compile", "baseline", self._build_compiled,
                 "torch.compile of the eager chain (dynamic=False)", backends=("cuda",)),
        )

    def _build_triton(self, inputs, mode):
        x, wg, wu = _args(inputs)
        out = torch.empty((x.shape[0], wg.shape[0]), dtype=x.dtype, device=x.device)
        nw = inputs["norm_weight"] if self.rms else None

        def run():
            with torch.inference_mode():
                return (gated_mlp(x, wg, wu, "silu", norm_weight=nw, eps=EPS, out=out),)
        return run

    def _chain_builder(self, chain):
        rms = self.rms

        def build(inputs, mode):
            x, wg, wu = _args(inputs)
            nw = inputs["norm_weight"]

            def run():
                with torch.inference_mode():
                    if rms:
                        return (chain(x, nw, wg, wu),)
                    return (chain(x, wg, wu),)
            return run
        return build

    def _build_compiled(self, inputs, mode):
        if self._compiled is None:
            self._compiled = compile_baseline(self._eager)
        return self._chain_builder(self._compiled)(inputs, mode)

    # ---------------------------------------------------------------------- formulas

    def make_inputs(self, shape, dtype, device, seed):
        """x (M, K) ~ N(0, 1) like a normalised residual stream; weights (N, K) ~ N(0, 1/K) as
        model.init_params draws them; the norm weight near 1."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        m, n, k = shape["M"], shape["N"], shape["K"]

        def t(*size, scale=1.0, shift=0.0):
            return (shift + torch.randn(*size, generator=g) * scale).to(device=device,
                                                                          dtype=dtype)

        return {"x": t(m, k), "w_gate": t(n, k, scale=k**-0.5), "w_up": t(n, k, scale=k**-0.5),
                "norm_weight": t(k, scale=0.1, shift=1.0)}

    def reference(self, inputs, mode):
        d = {k: v.double() for k, v in inputs.items()}
        if self.rms:
            return (eager_rmsnorm_gated(d["x"], d["norm_weight"], d["w_gate"], d["w_up"], EPS),)
        return (eager_gated(d["x"], d["w_gate"], d["w_up"]),)

    def flops(self, shape, mode):
        """The two GEMMs (the norm and elementwise work are under 0.1% at model sizes)."""
        return 2 * 2 * shape["M"] * shape["N"] * shape["K"]

    def bytes(self, shape, dtype, mode):
        """Fused: x, both weights (and the norm weight) read once, y written once."""
        m, n, k = shape["M"], shape["N"], shape["K"]
        return _size(dtype) * (m * k + 2 * n * k + m * n + (k if self.rms else 0))

    def unfused_bytes(self, shape, dtype, mode):
        """Eager chain: gate and up GEMMs each read x and a weight and write M x N; the
        activation reads gate and writes act(gate); the product reads both and writes y
        (7 M N); with the norm, its own chain runs first and both GEMMs read normalised x."""
        m, n, k = shape["M"], shape["N"], shape["K"]
        gated = _size(dtype) * (2 * m * k + 2 * n * k + 7 * m * n)
        return gated + (rms_norm_chain_bytes(m, k, dtype) if self.rms else 0)

    def tolerance(self, dtype, shape, mode):
        """A K-long dot's bound: ``error_scale`` carries the errors of both products into y
        (which also covers the rounding of x * norm_weight to the operand dtype, an error of
        each term of the sums)."""
        return (reduction_tolerance(dtype, shape["K"], tf32=precision_for(dtype, None) == "tf32"),)

    def error_scale(self, inputs, mode):
        """y = silu(g) u: the root-sum-square of the K products each of g and u sums, carried
        through the product; the two errors are independent, so they add in quadrature:
        sqrt((silu'(g) u rss(g))^2 + (silu(g) rss(u))^2)."""
        d = {k: v.double() for k, v in inputs.items()}
        x = rms_norm(d["x"], d["norm_weight"], EPS) if self.rms else d["x"]
        g, u = x @ d["w_gate"].t(), x @ d["w_up"].t()
        sig = torch.sigmoid(g)
        dsilu = sig * (1 + g * (1 - sig))
        return (torch.hypot(dsilu * u * term_rss(x, d["w_gate"].t()),
                            g * sig * term_rss(x, d["w_up"].t())),)

    def compile_targets(self, dtype):
        """The tiled kernel on a Llama-3-8B prefill (8192 tokens, 4096 -> 14336), the
        persistent TMA kernel that the Hopper class (sm_90, sm_100) runs there instead, and
        the split-K kernel on its batch-1 decode."""
        m, n, k = 8192, LLAMA3_8B_HIDDEN, LLAMA3_8B_DIM
        tiled = GATED_KERNEL.compile_target("tiled", dtype, dict(
            M=m, N=n, K=k, eps=EPS, stride_xm=k, stride_xk=1, stride_gn=k, stride_gk=1,
            stride_un=k, stride_uk=1, stride_nw=1, stride_om=n, stride_on=1,
            nw_ptr=dtype if self.rms else None, ACTIVATION="silu", RMS=self.rms,
            INPUT_PRECISION=precision_for(dtype, None), USE_INT64=False))
        persistent = CompileTarget(
            "persistent", GATED_PERSISTENT.kernel, dtype, dict(
                M=m, N=n, K=k, eps=EPS, stride_xm=k, stride_xk=1, stride_gn=k, stride_gk=1,
                stride_un=k, stride_uk=1, stride_nw=1, stride_om=n,
                nw_ptr=dtype if self.rms else None, X_T=False, G_T=True, U_T=True,
                ACTIVATION="silu", RMS=self.rms,
                # Exact fp32 takes the tiled kernel (kernels.gated_mlp); fp32 runs it as TF32.
                INPUT_PRECISION="tf32" if dtype == torch.float32 else "ieee",
                NUM_SMS=132),
            # The dispatch runs it on the Hopper class only.
            configs=lambda cap: (persistent_gated_configs(cap, dtype) if hopper_class(cap)
                                 else []))
        return [tiled, persistent] + splitk_targets("decode", dtype, 1, n, k, gated=True,
                                                    rms=self.rms, activation="silu")


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _args(inputs):
    return (inputs["x"], inputs["w_gate"], inputs["w_up"])


SPECS = [GatedMLPOp(rms=False), GatedMLPOp(rms=True)]
