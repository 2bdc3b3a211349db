"""attention: O = softmax(Q K^T / sqrt(D) + mask) V, the flash-attention kernels of
:mod:`tritonlab.kernels.attention` in all four modes (infer is the prefill forward), against
torch's scaled_dot_product_attention with each of its backends named, eager attention with
the S x S matrix materialised, and torch.compile of the eager code.

Two variants: ``attention`` (causal, as in a decoder's training and prefill) and
``attention_full`` (no mask, as in an encoder or the Triton tutorial's headline case).

Shape dims: B (batch), H (query heads), KVH (key/value heads; H / KVH query heads share one),
SQ (queries), SK (keys), D (head dim). With a causal mask the queries are aligned to the end
of the keys (SQ < SK is a prompt chunk attending to its cached prefix).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import causal_lower_right

from tritonlab.kernels.attention import HEAD_DIMS, KERNELS, LAST, attention
from tritonlab.ops.contract import (
    Impl,
    OpSpec,
    autograd_builder,
    compile_baseline,
    reduction_tolerance,
    scaled,
)
from tritonlab.reference import attention_probs, eager_attention

__all__ = ["AttentionOp", "SPECS", "causal_pairs"]

# Llama-3-8B's attention: 32 query heads, 8 KV heads, head_dim 128.
_LLAMA_H, _LLAMA_KVH, _LLAMA_D = 32, 8, 128


def _shape(b, h, kvh, sq, sk, d) -> dict[str, int]:
    return {"B": b, "H": h, "KVH": kvh, "SQ": sq, "SK": sk, "D": d}


def _llama(b: int, sq: int, sk: int | None = None) -> dict[str, int]:
    return _shape(b, _LLAMA_H, _LLAMA_KVH, sq, sq if sk is None else sk, _LLAMA_D)


def causal_pairs(sq: int, sk: int) -> int:
    """The (query, key) pairs a causal mask leaves, queries aligned to the end of the keys
    (SQ <= SK): query i sees i + SK - SQ + 1 keys. Exact, not SQ * SK / 2."""
    if sq > sk:
        raise ValueError(f"a causal mask needs SQ <= SK, got SQ={sq}, SK={sk}")
    return sq * (sk - sq + 1) + sq * (sq - 1) // 2


# What torch calls its SDPA backends; each baseline forces one, so a row names what ran.
_SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
                  "cudnn": "CUDNN_ATTENTION", "math": "MATH"}


class AttentionOp(OpSpec):
    """Multi-head attention with grouped-query heads, causal or not."""

    dims = ("B", "H", "KVH", "SQ", "SK", "D")
    modes = ("fwd", "bwd", "fwd_bwd", "infer")
    dtypes = (torch.float16, torch.bfloat16, torch.float32)

    def __init__(self, name: str, *, causal: bool, description: str):
        self.causal = causal
        self.tags = {"mask": "causal" if causal else "none"}
        tiny = [_shape(1, 2, 2, 32, 32, 32), _shape(1, 4, 1, 17, 17, 32),
                _shape(1, 4, 2, 33, 33, 64), _shape(1, 2, 1, 24, 40, 32)]
        if not causal:
            tiny.append(_shape(1, 2, 1, 40, 25, 32))
        self.presets = {
            # tiny: interpreter-sized; odd lengths, GQA 1, 2 and multi-query, SQ != SK.
            "tiny": tiny,
            # edge: the degenerate problems the checker's tests run (lengths 1, 2, 3, 13).
            "edge": [_shape(1, 1, 1, 1, 1, 32), _shape(1, 2, 1, 1, 7, 32),
                     _shape(1, 1, 1, 13, 13, 64), _shape(2, 4, 2, 3, 5, 32)],
            # quick: Llama-3-8B heads at training lengths, and a prompt chunk on its prefix.
            "quick": [_llama(1, 4096), _llama(2, 8192), _llama(8, 1024), _llama(1, 512, 4096)],
            # llm: 16k tokens per batch from sequence 512 to 16384, and chunked prefill.
            "llm": ([_llama(16384 // s, s) for s in (512, 1024, 2048, 4096, 8192, 16384)]
                    + [_llama(1, 2048, s) for s in (4096, 8192, 16384)]),
        }
        super().__init__(name, description=description)

    # ------------------------------------------------------------------------- impls

    def implementations(self):
        causal = self.causal
        impls = [
            Impl("triton", "triton",
                 autograd_builder(lambda q, k, v: attention(q, k, v, causal=causal),
                                  ("q", "k", "v")),
                 "flash attention: online-softmax forward, delta + dK/dV + dQ backward",
                 config=lambda mode: LAST() or None),
        ]
        for short, member in _SDPA_BACKENDS.items():
            impls.append(Impl(
                f"sdpa_{short}", "baseline", autograd_builder(self._sdpa(member), ("q", "k", "v")),
                f"F.scaled_dot_product_attention forced to its {member} backend",
                dtypes=None if short in ("efficient", "math") else (torch.float16, torch.bfloat16),
                backends=("cuda", "interpreter") if short == "math" else ("cuda",)))
        impls += [
            Impl("torch", "baseline",
                 autograd_builder(lambda q, k, v: eager_attention(q, k, v, causal),
                                  ("q", "k", "v")),
                 "eager attention: S = Q K^T and P = softmax(S) materialised, fp32 softmax"),
            Impl("torch_compile", "baseline", self._build_compiled,
                 "torch.compile of the eager attention (dynamic=False)", backends=("cuda",)),
        ]
        return impls

    def _sdpa(self, member: str):
        backend = getattr(SDPBackend, member)
        causal = self.causal

        def forward(q, k, v):
            sq, sk = q.shape[2], k.shape[2]
            mask, is_causal = None, False
            if causal and sq == sk:
                is_causal = True
            elif causal:
                mask = causal_lower_right(sq, sk)
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                      is_causal=is_causal,
                                                      enable_gqa=q.shape[1] != k.shape[1])
        return forward

    def _build_compiled(self, inputs, mode):
        fn = compile_baseline(eager_attention)
        causal = self.causal
        return autograd_builder(lambda q, k, v: fn(q, k, v, causal), ("q", "k", "v"))(
            inputs, mode)

    # ---------------------------------------------------------------------- formulas

    def shape_error(self, shape):
        if shape["H"] % shape["KVH"]:
            return f"H ({shape['H']}) must be a multiple of KVH ({shape['KVH']})"
        if shape["D"] not in HEAD_DIMS:
            return f"head dim D={shape['D']} is not supported; supported: " \
                   f"{', '.join(map(str, HEAD_DIMS))}"
        if self.causal and shape["SQ"] > shape["SK"]:
            return (f"a causal mask aligns the queries to the end of the keys, so SQ "
                    f"({shape['SQ']}) must not exceed SK ({shape['SK']})")
        return None

    def make_inputs(self, shape, dtype, device, seed):
        """Q, K, V ~ N(0, 1) as a model's projections produce them: (B, S, heads, D) tensors
        viewed as (B, heads, S, D), so the kernels read strided inputs; the output gradient
        ``grad`` ~ N(0, 1), contiguous."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        b, h, kvh, sq, sk, d = (shape[k] for k in self.dims)

        def heads(s, n):
            return torch.randn(b, s, n, d, generator=g).to(device=device, dtype=dtype) \
                .transpose(1, 2)
        return {"q": heads(sq, h), "k": heads(sk, kvh), "v": heads(sk, kvh),
                "grad": torch.randn(b, h, sq, d, generator=g).to(device=device, dtype=dtype)}

    def reference(self, inputs, mode):
        q, k, v = (inputs[n].double().requires_grad_() for n in ("q", "k", "v"))
        with torch.enable_grad():
            o = eager_attention(q, k, v, self.causal)
        if mode in ("fwd", "infer"):
            return (o.detach(),)
        grads = torch.autograd.grad(o, (q, k, v), inputs["grad"].double())
        return grads if mode == "bwd" else (o.detach(), *grads)

    def pairs(self, shape) -> int:
        """Unmasked (query, key) pairs per (batch, head)."""
        return causal_pairs(shape["SQ"], shape["SK"]) if self.causal \
            else shape["SQ"] * shape["SK"]

    def flops(self, shape, mode):
        """2 FLOPs per multiply-add of the GEMMs over the unmasked (query, key) pairs only
        (exactly counted, not halved): the forward's two (S = Q K^T, O = P V) give
        4 * B * H * pairs * D; the backward's five (S recomputed, dP = dO V^T, dV = P^T dO,
        dK = dS^T Q, dQ = dS K) give 10 * B * H * pairs * D. The softmax and its Jacobian
        are not counted. The lab's backward executes seven block GEMMs (S and dP once more
        for dQ, so that no gradient needs atomics); the count is the five the algorithm
        needs, as FlashAttention's benchmarks count, so every impl is rated on the same
        work."""
        work = shape["B"] * shape["H"] * self.pairs(shape) * shape["D"]
        return {"fwd": 4 * work, "infer": 4 * work, "bwd": 10 * work, "fwd_bwd": 14 * work}[mode]

    def bytes(self, shape, dtype, mode):
        """Compulsory traffic, each tensor once. infer: read Q, K, V, write O. fwd: also write
        the fp32 row log-sum-exp (B * H * SQ). bwd: read Q, K, V, O, dO and the log-sum-exp,
        write dQ, dK, dV (delta = rowsum(dO * O) is an intermediate and not counted).
        fwd_bwd: fwd + bwd."""
        s = dtype.itemsize
        b, h, kvh, sq, sk, d = (shape[k] for k in self.dims)
        q_like, kv = b * h * sq * d, b * kvh * sk * d
        lse = 4 * b * h * sq
        infer = s * (2 * q_like + 2 * kv)
        fwd = infer + lse
        bwd = s * (4 * q_like + 4 * kv) + lse
        return {"fwd": fwd, "infer": infer, "bwd": bwd, "fwd_bwd": fwd + bwd}[mode]

    def tolerance(self, dtype, shape, mode):
        """O and dQ reduce over the keys (SK); dK and dV over the queries of every head of
        their group (SQ * H / KVH). Each bound is doubled: P is rounded to the input dtype
        before its GEMM, and the backward's dS = P (dP - delta) carries the rounding of O
        through delta."""
        group = shape["H"] // shape["KVH"]
        o = scaled(reduction_tolerance(dtype, shape["SK"]), 2.0)
        dkv = scaled(reduction_tolerance(dtype, shape["SQ"] * group), 2.0)
        grads = (o, dkv, dkv)
        return {"fwd": (o,), "infer": (o,), "bwd": grads, "fwd_bwd": (o, *grads)}[mode]

    def error_scale(self, inputs, mode):
        """Per output, the root-sum-square of the products it sums, per (batch, head):
        O: P V. dV: P^T dO over the group's heads. dQ and dK: dS K and dS^T Q, with dS taken
        at the magnitude P (|dP| + |delta|): delta is a sum over the row whose rounding
        (and that of the stored O it reads) does not cancel where dP - delta does."""
        q, k, v = (inputs[n].double() for n in ("q", "k", "v"))
        group = q.shape[1] // k.shape[1]
        p = attention_probs(q, k, self.causal)
        v_rep = v.repeat_interleave(group, dim=1)
        o_scale = ((p * p) @ (v_rep * v_rep)).sqrt()
        if mode in ("fwd", "infer"):
            return (o_scale,)
        do = inputs["grad"].double()
        dp = do @ v_rep.transpose(-1, -2)
        delta = (do * (p @ v_rep)).sum(-1, keepdim=True)
        ds = p * (dp.abs() + delta.abs())
        scale = q.shape[-1] ** -0.5
        k_rep = k.repeat_interleave(group, dim=1)

        def per_kv_head(t):
            return t.unflatten(1, (k.shape[1], group)).sum(2)
        dq = scale * ((ds * ds) @ (k_rep * k_rep)).sqrt()
        dk = scale * per_kv_head((ds * ds).transpose(-1, -2) @ (q * q)).sqrt()
        dv = per_kv_head((p * p).transpose(-1, -2) @ (do * do)).sqrt()
        grads = (dq, dk, dv)
        return grads if mode == "bwd" else (o_scale, *grads)

    def compile_targets(self, dtype):
        """The four kernels as a Llama-3-8B training step launches them (batch 1, 32 query
        and 8 KV heads, sequence 4096, head dim 128): Q, K and V strided views of
        (B, S, heads, D) projections, O, dO and the gradients contiguous. Inference runs the
        same forward kernel without its log-sum-exp store (one masked store less: its
        registers and spills are the training forward's, seen with ``tritonlab inspect``)."""
        return self.targets_for(dtype, _LLAMA_D)

    def targets_for(self, dtype: torch.dtype, d: int) -> list:
        """``compile_targets`` at head dim ``d`` (for inspecting the other head dims)."""
        h, kvh, s = _LLAMA_H, _LLAMA_KVH, 4096
        kernels = KERNELS[d]

        def proj(name, n):   # (B, S, n, D) viewed as (B, n, S, D)
            return {f"stride_{name}b": s * n * d, f"stride_{name}h": d,
                    f"stride_{name}{'m' if name in ('q', 'o', 'do', 'dq') else 'n'}": n * d,
                    f"stride_{name}d": 1}

        def dense(name, n, row):
            return {f"stride_{name}b": n * s * d, f"stride_{name}h": s * d,
                    f"stride_{name}{row}": d, f"stride_{name}d": 1}

        scalars = dict(H=h, GROUP=h // kvh, SEQ_Q=s, SEQ_K=s, qk_scale=1.4427 * d ** -0.5, HEAD_DIM=d,
                       CAUSAL=self.causal, INPUT_PRECISION="ieee")
        qkv = {**proj("q", h), **proj("k", kvh), **proj("v", kvh)}
        fwd = dict(scalars, **qkv, **dense("o", h, "m"), lse_ptr=torch.float32)
        bwd = dict(scalars, **qkv, **dense("do", h, "m"), lse_ptr=torch.float32,
                   delta_ptr=torch.float32, sm_scale=d ** -0.5)
        return [
            kernels["fwd"].compile_target("fwd", dtype, dict(fwd, STORE_LSE=True)),
            kernels["bwd_delta"].compile_target("bwd_delta", dtype, dict(
                **dense("o", h, "m"), **dense("do", h, "m"), H=h, SEQ_Q=s, HEAD_DIM=d,
                delta_ptr=torch.float32)),
            kernels["bwd_dkdv"].compile_target("bwd_dkdv", dtype, dict(
                bwd, **dense("dk", kvh, "n"), **dense("dv", kvh, "n"))),
            kernels["bwd_dq"].compile_target("bwd_dq", dtype, dict(bwd, **dense("dq", h, "m"))),
        ]


SPECS = [
    AttentionOp("attention", causal=True,
                description="causal flash attention, GQA, fp32 softmax state (decoder "
                            "training and prefill)"),
    AttentionOp("attention_full", causal=False,
                description="flash attention without a mask, GQA (encoder)"),
]
