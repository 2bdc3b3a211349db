"""decode_attention: one new query token per sequence against its cached keys and values
(flash-decoding), for a ragged batch with a contiguous or a paged KV cache and grouped-query
attention (kernel: :mod:`tritonlab.kernels.decode_attention`). Inference only.

Dimensions: B sequences, H query heads, KVH kv heads, head dim D, CTX the longest context,
PAGE the block size of a paged pool, except that PAGE = CTX is the contiguous
(B, CTX, KVH, D) cache, passed without a block table (it is the pool whose one block per
sequence holds the whole context; shapes are positive integers, so 0 cannot mark it). The
lengths are a function of the shape alone (:func:`seq_lengths`), so ``bytes`` and ``flops``
can sum them: sequence 0 holds CTX tokens, the others spread down to about CTX / 2, and from
three sequences up the last is a fresh request of one token.

K and V are nearly all the traffic (H / KVH FLOP per cached byte in 16-bit: 4 for
Llama-3-8B), so the number to read is GB/s against the memory bandwidth.
The baselines run torch on the *padded* batch: the cache gathered into a dense
(B, KVH, CTX, D) tensor with zeros past each length (outside the timed run), a boolean mask
of each length, and the GQA group folded into the query length (q viewed as
(B, KVH, H / KVH, D)) so that no K or V is copied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from tritonlab.kernels._gemm import precision_for
from tritonlab.kernels.decode_attention import (
    LAST,
    SUPPORTED_HEAD_DIMS,
    decode_attention,
    decode_attention_targets,
)
from tritonlab.ops.contract import Impl, OpSpec, compile_baseline, reduction_tolerance
from tritonlab.reference import eager_decode_attention

__all__ = ["DecodeAttentionOp", "SPEC", "block_size", "seq_lengths"]

# Llama-3-8B attention: 32 query heads, 8 kv heads, head dim 128.
LLAMA3_8B_HEADS, LLAMA3_8B_KV_HEADS, LLAMA3_8B_HEAD_DIM = 32, 8, 128
# The llm preset keeps B * CTX within this many tokens: the inputs (made twice by a check),
# the baselines' dense copy and a float64 reference must fit one GPU.
_LLM_MAX_TOKENS = 2**21


def _shape(b, h, kvh, d, ctx, page):
    return {"B": b, "H": h, "KVH": kvh, "D": d, "CTX": ctx, "PAGE": page}


def _llama(b, ctx, page=16):
    return _shape(b, LLAMA3_8B_HEADS, LLAMA3_8B_KV_HEADS, LLAMA3_8B_HEAD_DIM, ctx, page)


def block_size(shape) -> int:
    """The pool's block size of ``shape``, 0 for the contiguous cache (PAGE = CTX)."""
    return 0 if shape["PAGE"] == shape["CTX"] else shape["PAGE"]


def seq_lengths(shape) -> list[int]:
    """The B sequence lengths of ``shape``: CTX for sequence 0, CTX - i CTX / (2 B) for the
    others (down to about CTX / 2), and 1 for the last of three or more."""
    b, ctx = shape["B"], shape["CTX"]
    lengths = [max(1, ctx - (i * ctx) // (2 * b)) for i in range(b)]
    if b >= 3:
        lengths[-1] = 1
    return lengths


class DecodeAttentionOp(OpSpec):
    name = "decode_attention"
    description = ("flash-decoding: one query token per sequence over a ragged, paged or "
                   "contiguous KV cache, GQA; split-KV then a log-sum-exp merge")
    dims = ("B", "H", "KVH", "D", "CTX", "PAGE")
    modes = ("infer",)
    tags = {"mask": "sequence lengths"}
    presets = {
        # Interpreter-sized: odd lengths (1 included), GQA ratios 1 and 4 and MQA, both cache
        # layouts, pages smaller and larger than the interpreter's 32-position tile.
        "tiny": [_shape(3, 4, 4, 64, 37, 37), _shape(2, 8, 2, 64, 100, 16),
                 _shape(3, 8, 1, 128, 70, 64), _shape(3, 8, 2, 128, 45, 45)],
        # Degenerate shapes for the generic checker tests: one sequence of one token, MQA,
        # a one-token context in a 16-slot block, blocks of one slot, head dim 32.
        "edge": [_shape(1, 1, 1, 64, 1, 1), _shape(1, 1, 1, 32, 1, 16),
                 _shape(1, 8, 1, 64, 1, 16), _shape(2, 4, 2, 64, 2, 1),
                 _shape(3, 2, 1, 128, 17, 17), _shape(1, 32, 1, 64, 33, 16)],
        "quick": [_llama(1, 8192), _llama(64, 8192), _llama(64, 8192, page=8192)],
        "llm": [_llama(b, ctx) for b in (1, 4, 16, 64, 256) for ctx in (512, 2048, 8192, 32768)
                if b * ctx <= _LLM_MAX_TOKENS],
    }

    def __init__(self) -> None:
        self._compiled = None
        super().__init__()

    # ------------------------------------------------------------------------- impls

    def implementations(self):
        return (
            Impl("triton", "triton", _build_triton,
                 "split-KV Triton kernel (GQA group per program, paged gather) + LSE merge",
                 config=lambda mode: LAST()),
            Impl("sdpa_efficient", "baseline", _sdpa_builder(SDPBackend.EFFICIENT_ATTENTION),
                 "F.scaled_dot_product_attention forced to the memory-efficient backend, "
                 "padded batch + boolean mask", backends=("cuda",)),
            Impl("sdpa_math", "baseline", _sdpa_builder(SDPBackend.MATH),
                 "F.scaled_dot_product_attention forced to the math backend, padded batch + "
                 "boolean mask"),
            Impl("torch", "baseline", _padded_builder(eager_decode_attention),
                 "eager: scores, masked softmax and P V materialised in the input dtype, "
                 "padded batch"),
            Impl("torch_compile", "baseline", self._build_compiled,
                 "torch.compile of the eager one (dynamic=False)", backends=("cuda",)),
        )

    def _build_compiled(self, inputs, mode):
        if self._compiled is None:
            self._compiled = compile_baseline(eager_decode_attention)
        return _padded_builder(self._compiled)(inputs, mode)

    # ---------------------------------------------------------------------- formulas

    def shape_error(self, shape):
        d, h, kvh = shape["D"], shape["H"], shape["KVH"]
        if d not in SUPPORTED_HEAD_DIMS:
            return (f"head dim D={d} is not supported; valid: "
                    f"{', '.join(map(str, SUPPORTED_HEAD_DIMS))}")
        if h % kvh:
            return f"H={h} query heads must be a multiple of KVH={kvh} kv heads"
        return None

    def make_inputs(self, shape, dtype, device, seed):
        """q and the cache ~ N(0, 1) (unit-variance scores after the 1/sqrt(D) scale), drawn
        on ``device`` by a generator seeded with ``seed`` (the llm preset's caches are
        gigabytes). Contiguous: NaN in every slot past a sequence's length. Paged: the
        sequences' blocks are a random permutation of the pool, which has B spare blocks
        holding NaN; so do the slots past each length in a sequence's last block, and the
        table entries past the blocks a sequence needs point at a spare. Reading past a
        length therefore shows in the output."""
        lengths = seq_lengths(shape)
        b, h, kvh, d, ctx = (shape[k] for k in ("B", "H", "KVH", "D", "CTX"))
        page = block_size(shape)
        g = torch.Generator(device=device).manual_seed(seed)

        def randn(*size):
            return torch.randn(*size, generator=g, device=device, dtype=dtype)

        inputs = {"q": randn(b, h, d),
                  "cache_seqlens": torch.tensor(lengths, dtype=torch.int32, device=device)}
        if page == 0:
            k, v = randn(b, ctx, kvh, d), randn(b, ctx, kvh, d)
            for i, n in enumerate(lengths):
                k[i, n:] = math.nan
                v[i, n:] = math.nan
            return {**inputs, "k_cache": k, "v_cache": v}
        needed = [-(-n // page) for n in lengths]
        num_blocks = sum(needed) + b
        perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(seed))
        spare = perm[sum(needed):]
        table = torch.empty(b, -(-ctx // page), dtype=torch.int32)
        table[:] = spare[0]
        start = 0
        for i, n in enumerate(needed):
            table[i, :n] = perm[start:start + n]
            start += n
        k, v = randn(num_blocks, page, kvh, d), randn(num_blocks, page, kvh, d)
        for pool in (k, v):
            pool[spare.to(device)] = math.nan
            for i, n in enumerate(lengths):
                pool[int(table[i, needed[i] - 1]), n - (needed[i] - 1) * page:] = math.nan
        return {**inputs, "k_cache": k, "v_cache": v, "block_table": table.to(device)}

    def reference(self, inputs, mode):
        """Float64 attention of each sequence over its own length."""
        out = torch.empty(inputs["q"].shape, dtype=torch.float64, device=inputs["q"].device)
        for i, (w, v) in enumerate(_weights(inputs)):
            out[i] = torch.einsum("hl,lhd->hd", w, v)
        return (out,)

    def flops(self, shape, mode):
        """q K^T and P V: 2 D multiply-adds per query head and cached position."""
        return 4 * shape["H"] * shape["D"] * sum(seq_lengths(shape))

    def bytes(self, shape, dtype, mode):
        """q read and out written once, the K and V rows of each sequence's own length read
        once, the lengths and the used block-table entries (int32). The split-KV workspace
        (at most 1/8 of the K/V bytes, see choose_splits) is not compulsory and not counted."""
        lengths = seq_lengths(shape)
        b, h, kvh, d = (shape[k] for k in ("B", "H", "KVH", "D"))
        page = block_size(shape)
        size = dtype.itemsize
        table = sum(-(-n // page) for n in lengths) if page else 0
        return size * (2 * b * h * d + 2 * kvh * d * sum(lengths)) + 4 * (b + table)

    def tolerance(self, dtype, shape, mode):
        """A dot of CTX + D terms: the D-long score and the CTX-long weighted sum of V, both
        accumulated in fp32, measured against the root-sum-square of the P V terms
        (``error_scale``), which also bounds rounding the probabilities to the input dtype
        for the second dot."""
        seq_lengths(shape)
        return (reduction_tolerance(dtype, shape["CTX"] + shape["D"],
                                    tf32=precision_for(dtype, None) == "tf32"),)

    def error_scale(self, inputs, mode):
        """sqrt(sum_j w_j^2 v_j^2) per output element, w the softmax weights: the scale of the
        weighted sum's terms (``term_rss`` of the weights and V)."""
        scale = torch.empty(inputs["q"].shape, dtype=torch.float64, device=inputs["q"].device)
        for i, (w, v) in enumerate(_weights(inputs)):
            scale[i] = torch.einsum("hl,lhd->hd", w * w, v * v).sqrt()
        return (scale,)

    def compile_targets(self, dtype):
        """Stage one and the merge on a Llama-3-8B decode step: batch 64 at 8192 tokens, paged
        in blocks of 16 (2 splits on an H100)."""
        return decode_attention_targets(dtype, batch=64, n_heads=LLAMA3_8B_HEADS,
                                        n_kv_heads=LLAMA3_8B_KV_HEADS,
                                        head_dim=LLAMA3_8B_HEAD_DIM, context=8192, block_size=16)


def _weights(inputs):
    """Per sequence, in float64 over its own length L (read through the block table when
    paged): the softmax weights (H, L) and V as each query head reads it, (L, H, D), kv head
    h // (H / KVH) for query head h."""
    q = inputs["q"].double()
    k_cache, v_cache = inputs["k_cache"], inputs["v_cache"]
    table = inputs.get("block_table")
    group = q.shape[1] // k_cache.shape[2]
    for i, n in enumerate(inputs["cache_seqlens"].tolist()):
        if table is None:
            k, v = k_cache[i, :n], v_cache[i, :n]
        else:
            blocks = table[i, :-(-n // k_cache.shape[1])].long()
            k, v = k_cache[blocks].flatten(0, 1)[:n], v_cache[blocks].flatten(0, 1)[:n]
        k, v = (t.double().repeat_interleave(group, dim=1) for t in (k, v))
        yield torch.softmax(torch.einsum("hd,lhd->hl", q[i], k) * q.shape[2]**-0.5, dim=-1), v


def _padded(inputs):
    """The padded batch of the baselines: q (B, KVH, G, D), K and V (B, KVH, CTX, D) dense
    with zeros past each length, and the (B, 1, 1, CTX) mask of the valid positions."""
    q, k, v = inputs["q"], inputs["k_cache"], inputs["v_cache"]
    lengths = inputs["cache_seqlens"]
    table = inputs.get("block_table")
    b, h, d = q.shape
    kvh = k.shape[2]
    if table is not None:
        k = k[table.long()].flatten(1, 2)
        v = v[table.long()].flatten(1, 2)
    ctx = int(lengths.max())
    valid = torch.arange(ctx, device=q.device)[None, :] < lengths[:, None]
    dense = [torch.where(valid[:, :, None, None], t[:, :ctx], 0).transpose(1, 2).contiguous()
             for t in (k, v)]
    return q.reshape(b, kvh, h // kvh, d), *dense, valid[:, None, None, :], d**-0.5


def _padded_builder(fn):
    """An Impl.build running ``fn(q, k, v, mask, scale)`` on the padded batch."""
    def build(inputs, mode):
        q, k, v, mask, scale = _padded(inputs)
        shape = inputs["q"].shape

        def run():
            with torch.inference_mode():
                return (fn(q, k, v, mask, scale).reshape(shape),)
        return run
    return build


def _sdpa_builder(sdpa_backend):
    def sdpa(q, k, v, mask, scale):
        with sdpa_kernel(sdpa_backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return _padded_builder(sdpa)


def _build_triton(inputs, mode):
    q = inputs["q"]
    out = torch.empty_like(q)
    args = (q, inputs["k_cache"], inputs["v_cache"], inputs["cache_seqlens"])
    table = inputs.get("block_table")

    def run():
        with torch.inference_mode():
            return (decode_attention(*args, block_table=table, out=out),)
    return run


SPEC = DecodeAttentionOp()
