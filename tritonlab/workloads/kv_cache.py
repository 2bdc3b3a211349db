"""The KV cache of the serving workloads (:mod:`.layer_serve`): the keys (after RoPE) and
values of every cached token of every sequence, for each layer, in the layouts
:func:`tritonlab.kernels.decode_attention.decode_attention` reads.

* paged (vLLM's layout): per layer a pool (num_blocks, block_size, n_kv_heads, head_dim) for
  K and one for V, shared by all sequences, and a ``block_table`` (batch,
  max_blocks_per_seq) int32 whose entry [b, i] is the pool block holding positions
  [i * block_size, (i + 1) * block_size) of sequence b. Blocks are handed out when a
  sequence first needs them, from a free list in shuffled order, so a sequence's blocks are
  scattered over the pool as they are in a server that has been running for a while (a
  kernel that assumed neighbouring blocks would fail the tests).
* contiguous (flash-attn's ``flash_attn_with_kvcache`` layout): per layer K and V of shape
  (batch, max_seq, n_kv_heads, head_dim).

A step writes in two phases, because every layer writes the same positions: each layer
calls :meth:`KVCache.append` with its new K and V, which land at each sequence's current
length, and after the last layer :meth:`KVCache.advance` moves the lengths on.
"""

from __future__ import annotations

import torch

from tritonlab.workloads.layer import LayerConfig, check_count, kv_cache_bytes


class KVCache:
    """K and V of ``n_layers`` layers for ``batch`` sequences of up to ``max_seq`` tokens.

    ``dtype``/``device``: of the K and V tensors. ``paged``: the pool layout (default) or the
    contiguous one. ``block_size``: tokens per block (paged). ``num_blocks``: the pool's
    size, default enough for every sequence at ``max_seq``; a smaller pool is shared as
    long as it lasts (a sequence that needs a block when none is free raises ValueError).
    ``seed`` shuffles the free list.

    Attributes: ``k[layer]``, ``v[layer]`` (the pools or contiguous tensors), ``block_table``
    (paged; None otherwise; entries of blocks not handed out yet are 0, never read because
    they lie past their sequence's length), ``seqlens`` (batch,) int32 on ``device``,
    ``lengths`` (the same as a list of ints on the host, so no step has to read the device).
    """

    def __init__(self, cfg: LayerConfig, n_layers: int, batch: int, max_seq: int, *,
                 dtype: torch.dtype, device: str | torch.device, paged: bool = True,
                 block_size: int = 16, num_blocks: int | None = None, seed: int = 0):
        check_count(n_layers, "n_layers")
        check_count(batch, "batch")
        check_count(max_seq, "max_seq")
        self.cfg = cfg
        self.n_layers = n_layers
        self.batch = batch
        self.max_seq = max_seq
        self.dtype = dtype
        self.device = torch.device(device)
        self.paged = paged
        shape_tail = (cfg.n_kv_heads, cfg.head_dim)
        if paged:
            check_count(block_size, "block_size")
            self.block_size = block_size
            self.blocks_per_seq = -(-max_seq // block_size)
            self.num_blocks = batch * self.blocks_per_seq if num_blocks is None else num_blocks
            check_count(self.num_blocks, "num_blocks")
            shape = (self.num_blocks, block_size, *shape_tail)
            g = torch.Generator(device="cpu").manual_seed(seed)
            self._free = torch.randperm(self.num_blocks, generator=g).tolist()
            self.block_table = torch.zeros((batch, self.blocks_per_seq), dtype=torch.int32,
                                           device=self.device)
        else:
            shape = (batch, max_seq, *shape_tail)
            self.block_table = None
        # Zero-filled, not empty: the eager impls attend over padded slots with a mask, and a
        # masked score's zero probability times a NaN left in memory would still be NaN.
        self.k = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=self.device) for _ in range(n_layers)]
        self.seqlens = torch.zeros(batch, dtype=torch.int32, device=self.device)
        self.lengths = [0] * batch
        self._allocated = [0] * batch  # blocks handed to each sequence so far
        self._rows = torch.arange(batch, device=self.device)

    @staticmethod
    def bytes_for(cfg: LayerConfig, n_layers: int, batch: int, max_seq: int,
                  dtype: torch.dtype, *, paged: bool = True, block_size: int = 16,
                  num_blocks: int | None = None) -> int:
        """What :attr:`nbytes` of a cache built with these arguments is: the K and V
        tensors (:func:`layer.kv_cache_bytes` over their slots), the block table (paged)
        and the int32 lengths."""
        if not paged:
            return kv_cache_bytes(cfg, n_layers, batch * max_seq, dtype) + 4 * batch
        per_seq = -(-max_seq // block_size)
        blocks = batch * per_seq if num_blocks is None else num_blocks
        return (kv_cache_bytes(cfg, n_layers, blocks * block_size, dtype)
                + 4 * batch * per_seq + 4 * batch)

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor the cache holds on its device (K, V, block table, lengths)."""
        tensors = [*self.k, *self.v, self.seqlens]
        if self.block_table is not None:
            tensors.append(self.block_table)
        return sum(t.nbytes for t in tensors)

    def rewind(self, lengths: list[int]) -> None:
        """Set every sequence's cached length back to ``lengths`` (each at most its current
        length), in place on the host list and the device tensor, keeping the block table,
        so the same positions map to the same blocks and a captured CUDA graph that reads
        ``seqlens`` stays valid. A benchmark uses it to decode at one context repeatedly."""
        lengths = [int(n) for n in lengths]
        if len(lengths) != self.batch or any(not 0 <= n <= c
                                             for n, c in zip(lengths, self.lengths)):
            raise ValueError(f"rewind needs {self.batch} lengths, each between 0 and the "
                             f"sequence's current length {self.lengths}, got {lengths}")
        self.lengths = lengths
        self.seqlens.copy_(torch.tensor(lengths, dtype=torch.int32))

    def _counts(self, counts: list[int] | None) -> list[int]:
        if counts is None:
            return [1] * self.batch
        counts = [int(c) for c in counts]
        if len(counts) != self.batch or any(c < 0 for c in counts):
            raise ValueError(f"counts must be {self.batch} ints >= 0 (one per sequence), "
                             f"got {counts}")
        return counts

    def reserve(self, counts: list[int] | None = None) -> None:
        """Make room for ``counts[b]`` more tokens of each sequence b (default 1 each):
        ValueError if a sequence would exceed ``max_seq`` or the pool has run out; paged,
        hands out the blocks the new positions fall in (updating ``block_table`` on the
        device only when a block is handed out). Idempotent until :meth:`advance`.
        A decode step calls it before a CUDA-graph replay, which cannot allocate."""
        counts = self._counts(counts)
        for b, (n, c) in enumerate(zip(self.lengths, counts)):
            if n + c > self.max_seq:
                raise ValueError(f"sequence {b} would hold {n + c} tokens, more than the "
                                 f"cache's capacity (max_seq {self.max_seq})")
        if not self.paged:
            return
        needed = [-(-(n + c) // self.block_size) for n, c in zip(self.lengths, counts)]
        missing = sum(max(0, n - a) for n, a in zip(needed, self._allocated))
        if missing > len(self._free):  # all or nothing: no half-updated table
            raise ValueError(f"the KV cache's pool of {self.num_blocks} blocks of "
                             f"{self.block_size} tokens is exhausted ({missing} more needed, "
                             f"{len(self._free)} free)")
        new = []
        for b, n in enumerate(needed):
            while self._allocated[b] < n:
                new.append((b, self._allocated[b], self._free.pop()))
                self._allocated[b] += 1
        if new:
            rows, cols, blocks = (torch.tensor(col, device=self.device) for col in zip(*new))
            self.block_table[rows, cols] = blocks.to(torch.int32)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor,
               counts: list[int] | None = None) -> None:
        """Write new K and V of ``layer`` at each sequence's current length.

        Decode: k, v (batch, n_kv_heads, head_dim), one token per sequence, written at
        position ``seqlens[b]`` read on the device (no host work, so a CUDA graph can
        capture it once :meth:`reserve` has run). Prefill: k, v (batch, seq, n_kv_heads,
        head_dim) with ``counts[b]`` <= seq valid tokens for sequence b (default all seq),
        written at positions lengths[b] .. lengths[b] + counts[b] - 1; rows past counts[b]
        (padding) are not written. Lengths do not move until :meth:`advance`."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be in [0, {self.n_layers}), got {layer}")
        tail = (self.cfg.n_kv_heads, self.cfg.head_dim)
        if k.shape != v.shape or k.dim() not in (3, 4) or k.shape[0] != self.batch \
                or tuple(k.shape[-2:]) != tail:
            raise ValueError(f"k and v must both be ({self.batch}, {tail[0]}, {tail[1]}) or "
                             f"({self.batch}, seq, {tail[0]}, {tail[1]}); got "
                             f"{tuple(k.shape)} and {tuple(v.shape)}")
        if k.dim() == 3:
            if counts is not None:
                raise ValueError("counts apply to a (batch, seq, ...) append only")
            self.reserve()
            index = self._slot_of(self._rows, self.seqlens.long())
        else:
            counts = self._counts(counts if counts is not None else [k.shape[1]] * self.batch)
            if max(counts) > k.shape[1]:
                raise ValueError(f"counts {counts} exceed the {k.shape[1]} tokens given")
            self.reserve(counts)
            rows = torch.cat([torch.full((c,), b) for b, c in enumerate(counts)])
            cols = torch.cat([torch.arange(c) for c in counts])
            positions = torch.tensor(self.lengths)[rows] + cols
            rows, cols = rows.to(self.device), cols.to(self.device)
            index = self._slot_of(rows, positions.to(self.device))
            k, v = k[rows, cols], v[rows, cols]
        self.k[layer][index] = k.to(self.dtype)
        self.v[layer][index] = v.to(self.dtype)

    def _slot_of(self, rows: torch.Tensor, positions: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (dim 0, dim 1) index of token ``positions`` of sequences ``rows``."""
        if not self.paged:
            return rows, positions
        blocks = self.block_table[rows, positions // self.block_size].long()
        return blocks, positions % self.block_size

    def advance(self, counts: list[int] | None = None) -> None:
        """Count the tokens every layer has appended: lengths += counts (default 1 each)."""
        step = self._counts(counts)
        self.reserve(step)
        self.lengths = [n + c for n, c in zip(self.lengths, step)]
        if counts is None:  # a decode step: no host-to-device copy
            self.seqlens.add_(1)
        else:
            self.seqlens.add_(torch.tensor(step, dtype=torch.int32).to(self.device))

    def gather(self, layer: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of positions [0, length) of every sequence as (batch, length,
        n_kv_heads, head_dim) tensors, padded past each sequence's own length with whatever
        the slots hold (zeros, stale entries, or, paged, another sequence's block where no
        block has been handed out yet): finite values that an eager implementation attends
        over with a mask."""
        if self.paged:
            nblocks = -(-length // self.block_size)
            table = self.block_table[:, :nblocks].long()
            flat = (self.batch, nblocks * self.block_size, *self.k[layer].shape[2:])
            return (self.k[layer][table].reshape(flat)[:, :length],
                    self.v[layer][table].reshape(flat)[:, :length])
        return self.k[layer][:, :length], self.v[layer][:, :length]
