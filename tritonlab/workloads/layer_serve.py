"""The serving workloads of the decoder layer (:mod:`.layer`): :class:`Prefill` runs prompts
through the layers and fills a :class:`.kv_cache.KVCache`; :class:`Decode` then generates one
token per sequence per step against it. Both run under ``torch.inference_mode`` on
:class:`ServingWeights`, the training workload's weights in the inference kernels' layout.

What runs where, per layer (impl "triton" | impl "torch"):

=========================  =====================================  ===========================
part                       triton                                 torch
=========================  =====================================  ===========================
RMSNorm + QKV projection   ``rmsnorm_linear`` (norm folded in)    ``rms_norm``, ``F.linear``
RoPE, cache write          torch                                  torch
prefill attention          ``attention`` (causal, padded batch)   SDPA (causal, padded batch)
decode attention           ``decode_attention`` (paged, ragged)   SDPA over the gathered,
                                                                  padded cache with a mask
O projection + residual    ``matmul``                             ``F.linear``
RMSNorm + gate/up + silu   ``gated_mlp`` (norm folded in)         ``rms_norm``, ``F.linear``
down projection + residual ``matmul``                             ``F.linear``
=========================  =====================================  ===========================

At decode sizes (at most 16 sequences) ``rmsnorm_linear``, ``gated_mlp`` and ``matmul``
take their split-K kernels automatically.

fp8 (``ServingWeights(..., dtype="fp8")``, :mod:`.fp8`): the four projections (QKV, O,
gate/up stacked, down) hold e4m3 weights with per-output-channel scales, quantised once at
load, and quantise their inputs per token on every call (impl triton: ``quantize_fp8`` +
``fp8_matmul``; torch: the torch quantiser + ``torch._scaled_mm``); the RMSNorms (torch),
RoPE, attention, the KV cache, the gating and the residuals stay in the compute dtype.

Ragged prompts. :class:`Prefill` takes the prompts right-padded to the longest, (batch,
seq, dim), with each prompt's length. Causal attention on the padded batch is exact for
every real token: query i of a prompt of length L < seq sees keys j <= i < L, never a
padding key. Padding rows are zeroed on the way in (so they stay finite: a flash kernel's
masked probability is 0, and 0 times a NaN in V would still be NaN), go through the
projections (wasted work, counted by no FLOP formula), are not written to the cache and
come back as zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tritonlab import backend
from tritonlab.kernels.attention import attention
from tritonlab.kernels.decode_attention import decode_attention
from tritonlab.kernels.gated_mlp import gated_mlp
from tritonlab.kernels.matmul import matmul
from tritonlab.kernels.rmsnorm_linear import rmsnorm_linear
from tritonlab.reference import apply_rope, eager_rmsnorm_gated, eager_rmsnorm_linear
from tritonlab.workloads.fp8 import FP8, compute_dtype, fp8_linear, quantise_weight
from tritonlab.workloads.kv_cache import KVCache
from tritonlab.workloads.layer import (
    PARAM_NAMES,
    LayerConfig,
    check_count,
    decode_flops,
    prefill_flops,
    rope_tables,
    weight_bytes,
    with_total,
)

IMPLS = ("triton", "torch")


def _projection_widths(cfg: LayerConfig) -> tuple[tuple[int, int], ...]:
    """(in, out) features of the four projections as fp8 serving holds them: QKV stacked,
    O, gate/up stacked, down."""
    return ((cfg.dim, cfg.q_dim + 2 * cfg.kv_dim), (cfg.q_dim, cfg.dim),
            (cfg.dim, 2 * cfg.hidden), (cfg.hidden, cfg.dim))


def fp8_weight_bytes(cfg: LayerConfig, n_layers: int, dtype: torch.dtype) -> int:
    """Bytes of fp8 :class:`ServingWeights` (what :attr:`ServingWeights.nbytes` holds,
    computed before they are built): per layer one byte per projection weight, a float32
    scale per output channel of each of the four projections, and the two RMSNorm weights
    in the compute ``dtype``."""
    per_layer = sum(k * n + 4 * n for k, n in _projection_widths(cfg)) + 2 * cfg.dim * dtype.itemsize
    return n_layers * per_layer


def fp8_activation_bytes(cfg: LayerConfig, n_layers: int, tokens: int) -> int:
    """Bytes the per-call activation quantisation of fp8 serving adds for ``tokens``
    tokens: before each of the four projections of every layer the quantiser writes one
    e4m3 code per input feature and a float32 scale per token, which the fp8 GEMM then reads
    back (2 (in + 4) bytes per token and projection). Its reading of the compute-dtype input
    is the read the 16-bit GEMM makes, so it is not counted again."""
    return n_layers * tokens * sum(2 * (k + 4) for k, _ in _projection_widths(cfg))


class ServingWeights:
    """The weights of the layers as the inference kernels read them, one dict per layer in
    ``layers``: attn_norm, wqkv (wq, wk, wv stacked into one (q_dim + 2 kv_dim, dim)
    matrix, built once here, as serving engines do at load, so one GEMM computes Q, K and V),
    wo, mlp_norm, w_gate, w_up, w_down, all in ``dtype`` on ``device``.

    ``params``: a list of per-layer dicts as :func:`.layer.init_params` returns (a training
    workload's ``params`` work too). ``dtype``: default bfloat16 on the cuda backend, float16
    under the interpreter; ``"fp8"``: that default as the compute dtype (``self.dtype``) and
    the four projections in e4m3 (module docstring): wqkv, wo, w_down and gate_up (w_gate
    and w_up stacked) are then :data:`.fp8.Fp8Weight` pairs. ``device``: default the
    backend's.
    """

    def __init__(self, cfg: LayerConfig, params: list[dict[str, torch.Tensor]], *,
                 dtype: torch.dtype | str | None = None,
                 device: str | torch.device | None = None):
        be = backend.current()
        self.cfg = cfg
        self.n_layers = check_count(len(params), "n_layers")
        self.fp8 = dtype == FP8
        if isinstance(dtype, str) and not self.fp8:
            raise ValueError(f"unknown dtype {dtype!r} for the serving weights; a torch.dtype "
                             f"or {FP8!r}")
        default = compute_dtype()
        self.dtype = default if self.fp8 or dtype is None else dtype
        self.device = torch.device(device if device is not None else be.device)
        shapes = cfg.param_shapes()
        self.layers = []
        for i, p in enumerate(params):
            missing = [n for n in PARAM_NAMES if n not in p]
            if missing:
                raise ValueError(f"params[{i}] lacks {', '.join(missing)}; expected the keys "
                                 f"of layer.init_params: {', '.join(PARAM_NAMES)}")
            for name, shape in shapes.items():
                if tuple(p[name].shape) != shape:
                    raise ValueError(f"params[{i}][{name!r}] has shape {tuple(p[name].shape)}; "
                                     f"the config needs {shape}")
            w = {n: p[n].detach().to(device=self.device, dtype=self.dtype) for n in PARAM_NAMES}
            w["wqkv"] = torch.cat([w.pop("wq"), w.pop("wk"), w.pop("wv")])
            if self.fp8:
                w["gate_up"] = torch.cat([w.pop("w_gate"), w.pop("w_up")])
                for name in ("wqkv", "wo", "gate_up", "w_down"):
                    w[name] = quantise_weight(w[name])
            self.layers.append(w)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors held (equal to :func:`.layer.weight_bytes` in 16 or 32 bits;
        in fp8, one byte per projection weight plus its scales and the 16-bit norms)."""
        return sum(t.nbytes for w in self.layers for v in w.values()
                   for t in (v if isinstance(v, tuple) else (v,)))


class _Serving:
    """What Prefill and Decode share: the weights, the impl and the footprint."""

    def __init__(self, weights: ServingWeights, *, impl: str = "triton"):
        if impl not in IMPLS:
            raise ValueError(f"unknown impl {impl!r}; expected one of: {', '.join(IMPLS)}")
        self.weights = weights
        self.cfg = weights.cfg
        self.n_layers = weights.n_layers
        self.impl = impl
        self.dtype = weights.dtype
        self.device = weights.device

    def _check_cache(self, cache: KVCache) -> None:
        # The tensors' devices, which carry an index even when a constructor got "cuda".
        ours = (self.n_layers, self.dtype, self.weights.layers[0]["attn_norm"].device,
                self.cfg)
        theirs = (cache.n_layers, cache.dtype, cache.seqlens.device, cache.cfg)
        if theirs != ours:
            raise ValueError(f"the cache ({theirs[0]} layers, {theirs[1]}, {theirs[2]}) does "
                             f"not match the weights ({ours[0]} layers, {ours[1]}, {ours[2]}) "
                             f"or their config")

    def _qkv(self, w: dict, x: torch.Tensor) -> torch.Tensor:
        if self.weights.fp8:
            h = F.rms_norm(x, (self.cfg.dim,), w["attn_norm"], self.cfg.eps)
            qkv = fp8_linear(h.reshape(-1, self.cfg.dim), w["wqkv"], self.impl)
            return qkv.view(*x.shape[:-1], qkv.shape[-1])
        if self.impl == "triton":
            return rmsnorm_linear(x, w["attn_norm"], w["wqkv"], self.cfg.eps)
        return eager_rmsnorm_linear(x, w["attn_norm"], w["wqkv"], self.cfg.eps)

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V of a (..., q_dim + 2 kv_dim) projection as (..., heads, head_dim) views."""
        cfg = self.cfg
        q, k, v = qkv.split([cfg.q_dim, cfg.kv_dim, cfg.kv_dim], dim=-1)
        return (q.unflatten(-1, (cfg.n_heads, cfg.head_dim)),
                k.unflatten(-1, (cfg.n_kv_heads, cfg.head_dim)),
                v.unflatten(-1, (cfg.n_kv_heads, cfg.head_dim)))

    def _out_and_mlp(self, w: dict, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """x + O projection of o (tokens, q_dim), then the MLP block with its residual."""
        cfg = self.cfg
        if self.weights.fp8:
            h = fp8_linear(o, w["wo"], self.impl).add_(x)
            m = F.rms_norm(h, (cfg.dim,), w["mlp_norm"], cfg.eps)
            gate, up = fp8_linear(m, w["gate_up"], self.impl).split(cfg.hidden, dim=1)
            return fp8_linear(F.silu(gate) * up, w["w_down"], self.impl).add_(h)
        if self.impl == "triton":
            h = matmul(o, w["wo"].t()).add_(x)
            m = gated_mlp(h, w["w_gate"], w["w_up"], "silu", norm_weight=w["mlp_norm"],
                          eps=cfg.eps)
            return matmul(m, w["w_down"].t()).add_(h)
        h = x + F.linear(o, w["wo"])
        m = eager_rmsnorm_gated(h, w["mlp_norm"], w["w_gate"], w["w_up"], cfg.eps)
        return h + F.linear(m, w["w_down"])

    def _footprint(self, cache_bytes: int) -> dict[str, int]:
        weights = (self.weights.nbytes if self.weights.fp8
                   else weight_bytes(self.cfg, self.n_layers, self.dtype))
        return with_total({"weights": weights, "kv_cache": cache_bytes})


class Prefill(_Serving):
    """The layers over a batch of prompts, filling a KV cache: ``step(x, prompt_lens,
    cache)``. ``weights``: :class:`ServingWeights`; ``impl``: "triton" or "torch" (see the
    module docstring)."""

    def step(self, x: torch.Tensor, prompt_lens: list[int], cache: KVCache) -> torch.Tensor:
        """Hidden states (batch, seq, dim) of prompts x (batch, seq, dim), right-padded,
        prompt b being x[b, :prompt_lens[b]] (1 <= length <= seq); padding rows of the
        result are zero. Each layer's K (after RoPE) and V of the real tokens are appended to
        ``cache``, whose sequences must be empty; their lengths become ``prompt_lens``."""
        cfg = self.cfg
        self._check_cache(cache)
        if x.dim() != 3 or x.shape[0] != cache.batch or x.shape[2] != cfg.dim:
            raise ValueError(f"x must be ({cache.batch}, seq, {cfg.dim}) for this cache, "
                             f"got {tuple(x.shape)}")
        batch, seq = x.shape[:2]
        lens = [int(n) for n in prompt_lens]
        if len(lens) != batch or not all(1 <= n <= seq for n in lens):
            raise ValueError(f"prompt_lens must be {batch} lengths in [1, {seq}], got {lens}")
        if any(cache.lengths):
            raise ValueError(f"Prefill needs empty sequences; the cache holds {cache.lengths} "
                             f"tokens")
        cache.reserve(lens)
        with torch.inference_mode():
            real = torch.arange(seq, device=self.device)[None, :] < torch.tensor(
                lens, device=self.device)[:, None]
            h = x.to(self.dtype).masked_fill(~real[..., None], 0)
            cos, sin = rope_tables(cfg, torch.arange(seq, device=self.device), torch.float32)
            for i, w in enumerate(self.weights.layers):
                q, k, v = self._split(self._qkv(w, h))
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
                cache.append(i, k, v, lens)
                o = self._attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
                o = o.transpose(1, 2).reshape(batch * seq, cfg.q_dim)
                h = self._out_and_mlp(w, h.view(batch * seq, cfg.dim), o).view(batch, seq,
                                                                                  cfg.dim)
            cache.advance(lens)
            return h.masked_fill_(~real[..., None], 0)

    def _attend(self, q, k, v):
        if self.impl == "triton":
            return attention(q, k, v, causal=True)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    def flops(self, prompt_lens: list[int]) -> int:
        """FLOPs of the prompts' real tokens (:func:`.layer.prefill_flops`)."""
        return prefill_flops(self.cfg, self.n_layers, list(prompt_lens))

    def footprint(self, batch: int, max_seq: int, *, paged: bool = True, block_size: int = 16,
                  num_blocks: int | None = None) -> dict[str, int]:
        """Bytes of the weights and of a cache built with these arguments
        (:meth:`KVCache.bytes_for`), and their total. Activations are transient in
        inference (nothing is saved), so they are not a part."""
        return self._footprint(KVCache.bytes_for(
            self.cfg, self.n_layers, batch, max_seq, self.dtype, paged=paged,
            block_size=block_size, num_blocks=num_blocks))


class Decode(_Serving):
    """Generation against ``cache``: each :meth:`step` takes one token per sequence, x
    (batch, dim), and returns the layers' output for it, attending to the sequence's cached
    tokens and itself, and appends its K and V. Each sequence's token sits at its own
    position (its cache length), so the batch is ragged. :meth:`generate` feeds each step's
    output back as the next step's input.

    ``weights``: :class:`ServingWeights`; ``cache``: a :class:`KVCache` on the weights'
    dtype and device, usually filled by :class:`Prefill`; ``impl``: "triton" or "torch".
    ``capture_graph``: CUDA graphs (cuda backend only; ValueError otherwise). The first step
    runs eagerly (which also tunes the kernels for these shapes); then the step is captured
    piecewise, as vLLM does: everything but attention is recorded in ``n_layers + 1``
    graphs, and each layer's decode attention runs eagerly between them, because
    ``decode_attention`` reads the lengths on the host (to validate them and to choose its
    split of the context), which a graph can neither capture nor replay with new lengths.
    Later steps replay the graphs.
    """

    def __init__(self, weights: ServingWeights, cache: KVCache, *, impl: str = "triton",
                 capture_graph: bool = False):
        super().__init__(weights, impl=impl)
        self._check_cache(cache)
        if capture_graph and (not backend.current().is_gpu or self.device.type != "cuda"):
            raise ValueError(f"capture_graph needs CUDA graphs: the cuda backend and a cuda "
                             f"device (backend {backend.current().name}, device "
                             f"{self.device}); run without capture_graph under the "
                             f"interpreter")
        self.cache = cache
        self.capture_graph = capture_graph
        positions = torch.arange(cache.max_seq, device=self.device)
        # RoPE tables for every position the cache can hold, gathered per step on the device.
        self._cos, self._sin = rope_tables(self.cfg, positions, torch.float32)
        self._graphs: list[torch.cuda.CUDAGraph] = []

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """The output (batch, dim) for one token per sequence x (batch, dim); appends each
        layer's K and V to the cache and advances its lengths by one. ValueError when a
        sequence is already at the cache's capacity."""
        cfg, cache = self.cfg, self.cache
        if x.dim() != 2 or tuple(x.shape) != (cache.batch, cfg.dim):
            raise ValueError(f"x must be ({cache.batch}, {cfg.dim}), one token per sequence, "
                             f"got {tuple(x.shape)}")
        cache.reserve()  # before any graph replay: the block table must be final
        with torch.inference_mode():
            if self._graphs:
                out = self._replay(x)
            else:
                out = self._eager(x)
                if self.capture_graph:
                    self._capture(x)
        cache.advance()
        return out

    def generate(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """``steps`` decode steps from x (batch, dim), each step's output the next step's
        input; returns the outputs (steps, batch, dim)."""
        outs = []
        for _ in range(steps):
            x = self.step(x)
            outs.append(x)
        return torch.stack(outs)

    # The step in pieces, shared by the eager path and the graph capture.

    def _lengths_after(self) -> torch.Tensor:
        """Each sequence's length including the new token, the keys its query attends to."""
        return self.cache.seqlens + 1

    def _pre(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """RMSNorm + QKV, RoPE at each sequence's own position, K and V into the cache;
        returns Q (batch, n_heads, head_dim)."""
        q, k, v = self._split(self._qkv(self.weights.layers[layer], h))
        pos = self.cache.seqlens.long()
        cos, sin = self._cos[pos], self._sin[pos]  # (batch, 1, head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        self.cache.append(layer, k, v)
        return q

    def _attend(self, layer: int, q: torch.Tensor, lengths: torch.Tensor,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """Attention of q (batch, n_heads, head_dim) over each sequence's first
        ``lengths[b]`` cached tokens, into ``out`` when given."""
        cache = self.cache
        if self.impl == "triton":
            return decode_attention(q, cache.k[layer], cache.v[layer], lengths,
                                    block_table=cache.block_table, out=out)
        longest = max(cache.lengths) + 1
        k, v = cache.gather(layer, longest)
        mask = torch.arange(longest, device=self.device)[None, :] < lengths[:, None].long()
        o = F.scaled_dot_product_attention(q[:, :, None], k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask[:, None, None], enable_gqa=True)
        o = o[:, :, 0]
        return o if out is None else out.copy_(o)

    def _post(self, layer: int, h: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        return self._out_and_mlp(self.weights.layers[layer], h, o.reshape(o.shape[0], -1))

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(self.dtype)
        lengths = self._lengths_after()
        for layer in range(self.n_layers):
            q = self._pre(layer, h)
            h = self._post(layer, h, self._attend(layer, q, lengths))
        return h

    def _capture(self, x: torch.Tensor) -> None:
        """Record piece i (the tail of layer i - 1 and the head of layer i) in graph i, all
        in one memory pool; the tensors they read and write stay allocated here, at the
        addresses the graphs use."""
        cfg = self.cfg
        self._x = x.to(self.dtype).clone()
        self._o = [torch.empty((x.shape[0], cfg.n_heads, cfg.head_dim), dtype=self.dtype,
                               device=self.device) for _ in range(self.n_layers)]
        self._q = []
        pool = torch.cuda.graph_pool_handle()
        h = self._x
        for piece in range(self.n_layers + 1):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                if piece == 0:
                    self._lengths = self._lengths_after()
                else:
                    h = self._post(piece - 1, h, self._o[piece - 1])
                if piece < self.n_layers:
                    self._q.append(self._pre(piece, h))
            self._graphs.append(graph)
        self._out = h

    def _replay(self, x: torch.Tensor) -> torch.Tensor:
        self._x.copy_(x)
        self._graphs[0].replay()
        for layer in range(self.n_layers):
            self._attend(layer, self._q[layer], self._lengths, out=self._o[layer])
            self._graphs[layer + 1].replay()
        return self._out.clone()  # the graph overwrites its output on the next replay

    def flops(self, steps: int = 1) -> int:
        """FLOPs of the next ``steps`` steps from the cache's current lengths
        (:func:`.layer.decode_flops`)."""
        return decode_flops(self.cfg, self.n_layers, self.cache.lengths, steps)

    def footprint(self) -> dict[str, int]:
        """Bytes of the weights and of the cache (its :attr:`KVCache.nbytes`), and their
        total. Not counted: the RoPE tables (8 max_seq head_dim bytes) and, in graph mode,
        the graphs' static buffers (a few (batch, hidden) activations)."""
        return self._footprint(self.cache.nbytes)
