"""The decoder-layer workloads (workloads/layer*.py, kv_cache.py): the training step's forward
and gradients against float64 autograd of layer.reference_forward, AdamW steps of both impls,
prefill + decode over paged and contiguous KV caches against the reference on whole
sequences, the footprint parts against the tensors really allocated, FLOPs, and bad input.

Tolerances. Every output is checked with tests/helpers.assert_close_to_reference at the
length of the layer's longest reduction (the down projection, ``hidden``), scaled by the
number of layers for the forward (each layer adds its own rounding to the residual stream)
and by twice that for gradients (the backward runs two GEMMs per forward GEMM, each rounded
to the working dtype). Shapes are tiny: the interpreter costs about 1 ms per program.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close_to_reference

from tritonlab.ops.contract import UNIT_ROUNDOFF
from tritonlab.reference import causal_mask
from tritonlab.workloads.kv_cache import KVCache
from tritonlab.workloads.layer import (
    LayerConfig,
    causal_pairs,
    init_params,
    reference_forward,
    saved_tensor_bytes,
    train_activation_bytes,
)
from tritonlab.workloads.layer_serve import Decode, Prefill, ServingWeights
from tritonlab.workloads.layer_train import LayerTrainStep

sk = importlib.import_module("tritonlab.kernels._splitk")
dattn = importlib.import_module("tritonlab.kernels.decode_attention")

TINY = LayerConfig.from_size("tiny")
LAYERS = 2
DTYPES = [torch.float32, torch.float16]


def working64(step: LayerTrainStep, requires_grad: bool = False) -> list[dict]:
    """The training step's weights as its forward sees them (rounded to the working dtype),
    in float64, with wq/wk/wv separate as reference_forward takes them."""
    return [{n: p.detach().to(step.dtype).double().requires_grad_(requires_grad)
             for n, p in layer.items()} for layer in step.params]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_training_forward_and_gradients_match_float64_autograd(dtype):
    step = LayerTrainStep(TINY, LAYERS, impl="triton", dtype=dtype, seed=0)
    x, target = step.make_batch(2, 8, seed=1)
    with torch.no_grad():
        y = step.forward(x)
    ref64 = working64(step, requires_grad=True)
    want = reference_forward(TINY, ref64, x.double())
    assert_close_to_reference(y, want, TINY.hidden, scale=LAYERS, dtype=dtype, what="forward")

    loss = step.backward(x, target)
    loss64 = F.mse_loss(want, target.double())
    loss64.backward()
    assert abs(loss.item() - loss64.item()) <= 4 * LAYERS * UNIT_ROUNDOFF[dtype] * loss64.item()
    for i, (layer, layer64) in enumerate(zip(step.params, ref64)):
        for name, p in layer.items():
            # fp32 gradients on the fp32 masters; the working-precision gradient they were
            # cast from is exact in dtype, which sets their accuracy.
            assert p.grad is not None and p.grad.dtype == torch.float32
            assert_close_to_reference(p.grad.to(dtype), layer64[name].grad, TINY.hidden,
                                      scale=2 * LAYERS, what=f"layer {i} d{name}")


def test_adamw_steps_learn_and_both_impls_take_the_same_steps():
    runs = {impl: LayerTrainStep(TINY, LAYERS, impl=impl, dtype=torch.float32, seed=5, lr=1e-2)
            for impl in ("triton", "torch")}
    start = [{n: p.detach().clone() for n, p in layer.items()} for layer in runs["torch"].params]
    x, target = runs["torch"].make_batch(2, 8, seed=2)
    losses = {impl: [w.step(x, target).item() for _ in range(3)] for impl, w in runs.items()}
    ref = losses["torch"]
    assert ref[2] < 0.5 * ref[0], f"no learning: {ref}"
    for got, want in zip(losses["triton"], ref):
        assert abs(got - want) <= 1e-5 * want, losses
    assert runs["triton"].optimizer_impl in ("fused", "foreach")
    for i, (a, b, s) in enumerate(zip(runs["triton"].params, runs["torch"].params, start)):
        for name in a:
            # Adam divides by the gradient's running rms, so a gradient element near zero
            # moves by about lr whatever its rounding: compare with the update's size.
            moved = float((b[name].detach() - s[name]).norm())
            assert float((a[name] - b[name]).detach().norm()) <= 1e-4 * moved, \
                f"layer {i} {name}"


def run_prefill_and_decode(weights, impl, paged, lens, steps, seed=0):
    """Prompts of ``lens`` (padded to the longest) through Prefill, then ``steps`` Decode
    steps fed back; returns (x, x0, prefill output, decode outputs, cache)."""
    cfg, dtype = weights.cfg, weights.dtype
    batch, seq = len(lens), max(lens)
    cache = KVCache(cfg, weights.n_layers, batch, seq + steps, dtype=dtype,
                    device=weights.device, paged=paged, block_size=4, seed=seed + 1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, cfg.dim, generator=g).to(device=weights.device, dtype=dtype)
    x0 = torch.randn(batch, cfg.dim, generator=g).to(device=weights.device, dtype=dtype)
    h = Prefill(weights, impl=impl).step(x, lens, cache)
    ys = Decode(weights, cache, impl=impl).generate(x0, steps)
    return x, x0, h, ys, cache


def assert_matches_whole_sequences(weights, lens, x, x0, h, ys):
    """Prefill and decode outputs of each sequence against reference_forward over that
    sequence alone: its prompt, then the decode inputs (x0, then each step's output)."""
    cfg = weights.cfg
    params64 = [{n: t.double() for n, t in w.items()} for w in weights.layers]
    for p in params64:  # back to init_params' names
        p["wq"], p["wk"], p["wv"] = p.pop("wqkv").split([cfg.q_dim, cfg.kv_dim, cfg.kv_dim])
    for b, n in enumerate(lens):
        inputs = torch.cat([x[b, :n], x0[b:b + 1], ys[:-1, b]]).double()
        want = reference_forward(cfg, params64, inputs[None])[0]
        got = torch.cat([h[b, :n], ys[:, b]])
        assert_close_to_reference(got, want, cfg.hidden, scale=weights.n_layers,
                                  dtype=weights.dtype, what=f"sequence {b}")
        assert not h[b, n:].any(), "padding rows of the prefill output must be zero"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("paged", [True, False], ids=["paged", "contiguous"])
def test_prefill_then_decode_matches_the_reference_on_whole_sequences(paged, dtype):
    params = init_params(TINY, LAYERS, torch.float32, "cpu", seed=3)
    weights = ServingWeights(TINY, params, dtype=dtype)
    lens, steps = [5, 9], 3
    before = sk.LAUNCHES["partial"]
    x, x0, h, ys, cache = run_prefill_and_decode(weights, "triton", paged, lens, steps)
    assert ys.shape == (steps, 2, TINY.dim) and ys.dtype == dtype
    assert cache.lengths == [n + steps for n in lens]
    assert cache.seqlens.tolist() == cache.lengths
    # Decode at batch 2: QKV, O, gate/up and down take the split-K kernels, every layer
    # and step; attention ran on the paged pool when there is one.
    assert sk.LAUNCHES["partial"] - before == 4 * LAYERS * steps
    assert dattn.LAST.value["paged"] is paged
    if paged:  # a real block table: blocks scattered over the pool, not in order
        used = [int(cache.block_table[b, i]) for b, n in enumerate(cache.lengths)
                for i in range(-(-n // cache.block_size))]
        assert used != sorted(used) and len(set(used)) == len(used)
    assert_matches_whole_sequences(weights, lens, x, x0, h, ys)


@pytest.mark.parametrize("paged", [True, False], ids=["paged", "contiguous"])
def test_torch_serving_impl_matches_the_reference(paged):
    params = init_params(TINY, LAYERS, torch.float32, "cpu", seed=4)
    weights = ServingWeights(TINY, params, dtype=torch.float32)
    lens = [7, 2, 4]
    x, x0, h, ys, _ = run_prefill_and_decode(weights, "torch", paged, lens, 3, seed=2)
    assert_matches_whole_sequences(weights, lens, x, x0, h, ys)


def test_kv_cache_append_writes_each_sequence_at_its_own_length():
    cfg = TINY
    cache = KVCache(cfg, 1, 2, 10, dtype=torch.float32, device="cpu", block_size=3, seed=7)
    k = torch.randn(2, 4, cfg.n_kv_heads, cfg.head_dim)
    cache.append(0, k, -k, [4, 1])
    cache.advance([4, 1])
    one = torch.randn(2, cfg.n_kv_heads, cfg.head_dim)
    cache.append(0, one, -one)
    cache.advance()
    keys, values = cache.gather(0, 5)
    torch.testing.assert_close(keys[0, :5], torch.cat([k[0], one[:1]]), rtol=0, atol=0)
    torch.testing.assert_close(keys[1, :2], torch.cat([k[1, :1], one[1:]]), rtol=0, atol=0)
    torch.testing.assert_close(values[0, :5], -keys[0, :5], rtol=0, atol=0)
    assert cache.lengths == [5, 2] and cache.seqlens.tolist() == [5, 2]
    # Nothing written past sequence 1's length in its block (later positions map to blocks
    # not handed out yet, whose table entries point anywhere).
    assert not keys[1, 2].any()


def test_training_footprint_parts_are_the_allocated_tensors():
    dtype = torch.float16  # working copies a different size from the fp32 state
    step = LayerTrainStep(TINY, LAYERS, impl="triton", dtype=dtype, seed=0)
    batch, seq = 2, 8
    fp = step.footprint(batch, seq)
    assert fp["total"] == sum(v for k, v in fp.items() if k != "total")
    assert fp["weights"] == sum(t.nbytes for w in step.working_weights() for t in w.values())
    x, target = step.make_batch(batch, seq, seed=1)
    assert fp["activations"] == step.saved_activation_bytes(x, target)
    step.step(x, target)
    masters = [p for layer in step.params for p in layer.values()]
    grads = {p.grad.untyped_storage().data_ptr(): p.grad.untyped_storage().nbytes()
             for p in masters}
    assert fp["gradients"] == sum(grads.values())
    state = [t for p in masters for t in step.optimizer.state[p].values()]
    assert fp["optimizer"] == sum(p.nbytes for p in masters) + sum(t.nbytes for t in state)
    assert all(t.dtype == torch.float32 for t in state)


def test_activation_formula_counts_what_the_forward_saves():
    # Another shape and config than the footprint test: the formula, not one coincidence.
    cfg = LayerConfig.from_size("small")
    step = LayerTrainStep(cfg, 1, impl="triton", dtype=torch.float32, seed=0)
    x, target = step.make_batch(1, 5, seed=0)
    assert step.saved_activation_bytes(x, target) == train_activation_bytes(
        cfg, 1, 1, 5, torch.float32)


def test_saved_tensor_bytes_counts_storages_once_and_skips_excluded():
    w = torch.randn(4, 4, requires_grad=True)
    x = torch.randn(3, 4)

    def fn():
        h = x @ w  # saves x (w needs grad) and w (x does not: not saved)
        return (h * h).sum()  # saves h once, though used twice

    _, counted = saved_tensor_bytes(fn)
    assert counted == x.nbytes + 3 * 4 * 4
    _, without_x = saved_tensor_bytes(fn, exclude=[x])
    assert without_x == 3 * 4 * 4


@pytest.mark.parametrize("paged", [True, False], ids=["paged", "contiguous"])
def test_serving_footprint_parts_are_the_allocated_tensors(paged):
    params = init_params(TINY, LAYERS, torch.float32, "cpu", seed=0)
    weights = ServingWeights(TINY, params, dtype=torch.float16)
    cache = KVCache(TINY, LAYERS, 3, 10, dtype=torch.float16, device="cpu", paged=paged,
                    block_size=4)
    fp = Prefill(weights).footprint(3, 10, paged=paged, block_size=4)
    assert fp == Decode(weights, cache).footprint()
    assert fp["weights"] == weights.nbytes == sum(t.nbytes for w in weights.layers
                                                  for t in w.values())
    pools = sum(t.nbytes for t in cache.k + cache.v)
    assert pools == 2 * LAYERS * 3 * (12 if paged else 10) * TINY.kv_dim * 2
    index = cache.seqlens.nbytes + (cache.block_table.nbytes if paged else 0)
    assert fp["kv_cache"] == cache.nbytes == pools + index
    assert fp["total"] == fp["weights"] + fp["kv_cache"]


def test_flops_formulas():
    # Imported here: torch.utils.flop_counter imports triton, which must not happen before
    # the backend is selected (the test modules are imported after conftest selects it).
    from torch.utils.flop_counter import FlopCounterMode

    step = LayerTrainStep(TINY, LAYERS, impl="torch", seed=0)
    x, target = step.make_batch(2, 8, seed=1)
    with FlopCounterMode(display=False) as counter:
        step.step(x, target)
    # torch's counter sees the GEMMs (not the CPU SDPA): projections, 3x the forward.
    assert counter.get_total_flops() == 3 * LAYERS * TINY.projection_flops(16)
    attention = step.flops(2, 8) - counter.get_total_flops()
    pairs = int(causal_mask(8, 8).sum())
    assert attention == LAYERS * 2 * 14 * TINY.n_heads * TINY.head_dim * pairs
    for sq, skv in ((8, 8), (3, 11), (1, 6)):
        assert causal_pairs(sq, skv) == int(causal_mask(sq, skv).sum())

    weights = ServingWeights(TINY, init_params(TINY, LAYERS, torch.float32, "cpu"))
    assert Prefill(weights).flops([5, 9]) == LAYERS * (
        TINY.projection_flops(14) + TINY.attention_flops(15 + 45))
    cache = KVCache(TINY, LAYERS, 2, 16, dtype=weights.dtype, device="cpu")
    cache.advance([5, 9])
    # Two steps: keys 6 + 10, then 7 + 11.
    assert Decode(weights, cache).flops(steps=2) == LAYERS * (
        2 * TINY.projection_flops(2) + TINY.attention_flops(16 + 18))


def test_bad_input():
    with pytest.raises(ValueError, match="unknown layer size 'huge'; valid sizes: tiny, small, "
                                         "llama3-8b"):
        LayerConfig.from_size("huge")
    with pytest.raises(ValueError, match="n_heads .3. must be a multiple of n_kv_heads .2."):
        LayerConfig(dim=64, n_heads=3, n_kv_heads=2, head_dim=32, hidden=64)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="n_layers must be an int >= 1"):
            LayerTrainStep(TINY, bad)
        with pytest.raises(ValueError, match="n_layers must be an int >= 1"):
            init_params(TINY, bad, torch.float32, "cpu")
    with pytest.raises(ValueError, match="n_layers must be an int >= 1"):
        ServingWeights(TINY, [])
    for make in (LayerTrainStep, lambda cfg, impl: Prefill(
            ServingWeights(cfg, init_params(cfg, 1, torch.float32, "cpu")), impl=impl)):
        with pytest.raises(ValueError, match="unknown impl 'cuda'; expected one of: triton, "
                                             "torch"):
            make(TINY, impl="cuda")
    step = LayerTrainStep(TINY, 1, impl="torch")
    with pytest.raises(ValueError, match="batch must be an int >= 1, got 0"):
        step.make_batch(0, 8)
    with pytest.raises(ValueError, match="batch must be an int >= 1, got 0"):
        KVCache(TINY, 1, 0, 8, dtype=torch.float32, device="cpu")

    weights = ServingWeights(TINY, init_params(TINY, 1, torch.float32, "cpu"),
                             dtype=torch.float32)
    cache = KVCache(TINY, 1, 2, 8, dtype=torch.float32, device="cpu", block_size=4)
    x = torch.randn(2, 9, TINY.dim)
    with pytest.raises(ValueError, match=r"sequence 1 would hold 9 tokens, more than the "
                                         r"cache's capacity \(max_seq 8\)"):
        Prefill(weights, impl="torch").step(x, [5, 9], cache)
    assert cache.lengths == [0, 0]  # refused before anything was written
    Prefill(weights, impl="torch").step(x[:, :8], [5, 8], cache)
    with pytest.raises(ValueError, match="Prefill needs empty sequences"):
        Prefill(weights, impl="torch").step(x[:, :8], [5, 8], cache)
    decode = Decode(weights, cache, impl="torch")
    with pytest.raises(ValueError, match=r"sequence 1 would hold 9 tokens.*max_seq 8"):
        decode.step(torch.randn(2, TINY.dim))
    with pytest.raises(ValueError, match=r"x must be \(2, 64\)"):
        decode.step(torch.randn(3, TINY.dim))

    small_pool = KVCache(TINY, 1, 2, 8, dtype=torch.float32, device="cpu", block_size=4,
                         num_blocks=2)
    with pytest.raises(ValueError, match="pool of 2 blocks of 4 tokens is exhausted"):
        small_pool.reserve([5, 1])
    with pytest.raises(ValueError, match="does not match the weights"):
        Decode(weights, KVCache(TINY, 2, 2, 8, dtype=torch.float32, device="cpu"))


def test_capture_graph_needs_cuda(be):
    if be.is_gpu:
        pytest.skip("the interpreter's refusal")
    weights = ServingWeights(TINY, init_params(TINY, 1, torch.float32, "cpu"))
    cache = KVCache(TINY, 1, 1, 8, dtype=weights.dtype, device="cpu")
    with pytest.raises(ValueError, match="capture_graph needs CUDA graphs.*interpreter"):
        Decode(weights, cache, capture_graph=True)


# ------------------------------------------------------------------------------ GPU lane

@pytest.mark.gpu
def test_training_footprint_against_cuda_memory(gpu):
    cfg = LayerConfig.from_size("small")
    batch, seq = 4, 512
    # cuBLAS keeps a workspace from its first GEMM on (the teacher's, in make_batch), taken
    # from the caching allocator: create it before the baseline.
    torch.ones(64, 64, device=gpu, dtype=torch.bfloat16).matmul(
        torch.ones(64, 64, device=gpu, dtype=torch.bfloat16))
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    step = LayerTrainStep(cfg, LAYERS, impl="triton", dtype=torch.bfloat16, device=gpu, seed=0)
    x, target = step.make_batch(batch, seq, seed=1)
    step.step(x, target)  # tunes the kernels and creates the optimizer state
    torch.cuda.synchronize()
    fp = step.footprint(batch, seq)
    teacher = sum(t.nbytes for w in step._teacher for t in w.values())
    held = torch.cuda.memory_allocated() - base
    expected = fp["optimizer"] + fp["gradients"] + teacher + x.nbytes + target.nbytes
    # The caching allocator rounds every block up to 512 bytes (the 4-byte step counts).
    assert expected <= held <= 1.02 * expected + 2**20, (held, expected, fp)

    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    step.step(x, target)
    peak = torch.cuda.max_memory_allocated() - start
    # At the end of the forward the working weights and every saved activation are alive
    # (the input x and the previous gradients, freed by zero_grad, were already counted in
    # start); backward temporaries and the gradients come on top, bounded loosely.
    lower = fp["weights"] + fp["activations"] - x.nbytes - fp["gradients"]
    upper = 1.5 * (fp["weights"] + fp["activations"] + fp["gradients"]) + 16 * 2**20
    assert lower <= peak <= upper, (peak, lower, upper, fp)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_decode_graph_replays_match_eager_steps(gpu, impl):
    cfg = LayerConfig.from_size("small")
    params = init_params(cfg, LAYERS, torch.float32, gpu, seed=1)
    weights = ServingWeights(cfg, params, dtype=torch.bfloat16, device=gpu)
    lens, steps = [5, 17, 30, 1], 20  # block_size 16: sequences cross blocks mid-run
    outs = {}
    for graph in (False, True):
        cache = KVCache(cfg, LAYERS, len(lens), 64, dtype=torch.bfloat16, device=gpu, seed=2)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(len(lens), max(lens), cfg.dim, generator=g).to(gpu, torch.bfloat16)
        x0 = torch.randn(len(lens), cfg.dim, generator=g).to(gpu, torch.bfloat16)
        h = Prefill(weights, impl=impl).step(x, lens, cache)
        outs[graph] = Decode(weights, cache, impl=impl, capture_graph=graph).generate(x0, steps)
    torch.testing.assert_close(outs[True], outs[False], rtol=1e-2, atol=1e-2)
    assert_matches_whole_sequences(weights, lens, x, x0, h, outs[True])
