"""Config choice per GPU class (tritonlab/kernels/tuning.py and the config lists): which
capabilities get the Hopper-class lists and the persistent GEMM, the shared-memory budget
of each, and the launch with autotuning off, which falls back to the next config of the
list when one does not fit the GPU."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from tritonlab.kernels import _persistent, _splitk
from tritonlab.kernels._gemm import gemm_configs
from tritonlab.kernels.gated_mlp import gated_configs
from tritonlab.kernels.tuning import TunedKernel, config_dict, hopper_class, smem_budget

KB = 1024
# (capability, Hopper class, shared memory per block the GPU has, in KB): H100/H200, B200,
# A100, A10, L4/L40S, RTX 50xx (CUDA C++ Programming Guide, per compute capability).
GPUS = [((9, 0), True, 227), ((10, 0), True, 227), ((8, 0), False, 163), ((8, 6), False, 99),
        ((8, 9), False, 99), ((12, 0), False, 99)]


@pytest.mark.parametrize("cap,hopper,smem_kb", GPUS)
def test_gpu_class_and_shared_memory_budget(cap, hopper, smem_kb, monkeypatch):
    assert hopper_class(cap) is hopper
    budget = smem_budget(cap)
    assert smem_kb * KB - 32 * KB <= budget < smem_kb * KB  # headroom for the compiler
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
    assert _persistent.tma_device(torch.device("cuda", 0)) is hopper
    assert not _persistent.tma_device(torch.device("cpu"))


def test_consumer_blackwell_gets_the_ampere_ada_lists():
    # Capability 12.x is newer than Hopper but has Ada's 99 KB: a list chosen by "major >= 9"
    # would give it tiles that need 129 KB (the persistent GEMM's default).
    def listed(configs, cap, dtype):
        return [config_dict(c) for c in configs(cap, dtype)]

    for configs in (gemm_configs, gated_configs, _persistent.persistent_configs):
        for dtype in (torch.float16, torch.float32):
            blackwell = listed(configs, (12, 0), dtype)
            assert blackwell == listed(configs, (8, 9), dtype), configs.__name__
            assert blackwell != listed(configs, (9, 0), dtype), configs.__name__


@pytest.mark.parametrize("cap", [g[0] for g in GPUS])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("n_weights", [1, 2])
def test_split_k_stages_fit_the_budget(cap, dtype, n_weights):
    """Every split-K candidate's pipelined buffers (num_stages - 1 stages of the x tile and
    n_weights weight tiles) fit the budget, and the list never runs dry (fp32 on a 99 KB SM
    had no fitting entry)."""
    size = torch.empty((), dtype=dtype).element_size()
    configs = _splitk.decode_configs(cap, dtype, n_weights)
    assert configs
    for c in configs:
        bm, bn, bk = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]
        assert c.num_stages >= 2
        assert (c.num_stages - 1) * size * bk * (bm + n_weights * bn) <= smem_budget(cap)


def _tiles(cap, dtype, n_weights):
    return [(c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_warps, c.num_stages)
            for c in _splitk.decode_configs(cap, dtype, n_weights)]


def test_split_k_tiles_keep_the_stages_that_fit():
    # Hopper in 16-bit: the lists as written (every tile fits 200 KB).
    assert _tiles((9, 0), torch.float16, 1) == list(_splitk._DECODE_TILES[1])
    assert _tiles((9, 0), torch.float16, 2) == [(32, 128, 4, 6), (64, 128, 4, 4)]
    # Ada, 96 KB: the gated default keeps 5 of its 6 stages (4 x 20 KB buffers); in fp32
    # every tile loses stages, down to 2 (one 80 KB buffer of a 64 x 256 fp32 tile).
    assert _tiles((8, 9), torch.float16, 2) == [(32, 128, 4, 5), (64, 128, 4, 3)]
    assert _tiles((8, 9), torch.float32, 1) == [
        (64, 256, 4, 2), (32, 256, 8, 3), (64, 128, 8, 3), (128, 128, 8, 2), (32, 128, 4, 5),
        (64, 256, 8, 2)]
    assert _tiles((8, 9), torch.float32, 2) == [(32, 128, 4, 3), (64, 128, 4, 2)]


@triton.jit
def _toy_kernel(x_ptr, n, BLOCK: tl.constexpr):
    """A kernel whose argument names the launch key is read from (never run here)."""
    tl.store(x_ptr + tl.arange(0, BLOCK), 0.0)


class _FakeTuner:
    """A one-config tuner whose launch raises OutOfResources when its config is too big."""

    def __init__(self, block: int, limit: int, calls: list):
        self.best_config = triton.Config({"BLOCK": block}, num_warps=4, num_stages=2)
        self.block, self.limit, self.calls = block, limit, calls

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.calls.append(self.block)
            if self.block > self.limit:
                raise OutOfResources(self.block * 1024, self.limit * 1024, "shared memory")
        return run


def test_autotune_off_launches_the_first_config_that_fits(monkeypatch):
    tk = TunedKernel(_toy_kernel, key=["n"], configs=lambda cap, dtype: [])
    calls: list[int] = []
    tuners = [_FakeTuner(b, 100, calls) for b in (256, 128, 64, 32)]
    monkeypatch.setattr(tk, "_runner", lambda dtype: (tuners, None))
    x = torch.empty(4)
    tk.launch(lambda meta: (1,), torch.float16, x, 10)
    assert calls == [256, 128, 64] and tk.last_config["BLOCK"] == 64
    # The fitting index is remembered for the key: the next launch goes straight to it.
    calls.clear()
    tk.launch(lambda meta: (1,), torch.float16, x, 10)
    assert calls == [64]
    # A new key tries from the top (another key may fit a larger config).
    calls.clear()
    tk.launch(lambda meta: (1,), torch.float16, x, n=11)
    assert calls == [256, 128, 64]


def test_autotune_off_with_no_config_that_fits_raises_the_last_error(monkeypatch):
    tk = TunedKernel(_toy_kernel, key=["n"], configs=lambda cap, dtype: [])
    calls: list[int] = []
    tuners = [_FakeTuner(b, 16, calls) for b in (256, 64)]
    monkeypatch.setattr(tk, "_runner", lambda dtype: (tuners, None))
    with pytest.raises(OutOfResources, match="65536"):
        tk.launch(lambda meta: (1,), torch.float16, torch.empty(4), 10)
    assert calls == [256, 64]


@triton.jit
def _block_matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """C = A @ B for row-major A (M, K), B (K, N) in fp16 and C (M, N) in fp32, fp32
    accumulation; every size a multiple of its block (no masks). A test kernel whose shared
    memory grows with num_stages: the K loop is pipelined."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * N + rn[None, :])
        acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * N + rn[None, :], acc)


@pytest.mark.gpu
@pytest.mark.parametrize("autotune", ["0", "1"])
def test_a_config_too_big_for_the_gpu_is_skipped_on_a_real_launch(autotune, gpu, monkeypatch):
    """On a GPU: a first config whose 7 pipelined buffers of 64 KB exceed any SM's shared
    memory raises OutOfResources; with autotuning off the launcher falls back to the next
    config, with it on Triton's autotuner skips it, and either way the product is right."""
    monkeypatch.setenv("TRITONLAB_AUTOTUNE", autotune)
    big = triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128}, num_warps=8,
                        num_stages=8)
    small = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4,
                          num_stages=2)
    tk = TunedKernel(_block_matmul_kernel, key=["M", "N", "K"],
                     configs=lambda cap, dtype: [big, small])
    g = torch.Generator().manual_seed(5)
    m, n, k = 256, 256, 512
    a = torch.randn(m, k, generator=g).half().to(gpu)
    b = torch.randn(k, n, generator=g).half().to(gpu)
    c = torch.full((m, n), float("nan"), device=gpu)
    tk.launch(lambda meta: (m // meta["BLOCK_M"], n // meta["BLOCK_N"]), torch.float16,
              a, b, c, m, n, k)
    assert tk.last_config["BLOCK_M"] == 64 and tk.last_config["num_stages"] == 2
    ref = a.double() @ b.double()
    assert torch.isfinite(c).all()
    assert ((c.double() - ref).abs().max() / ref.abs().max()).item() < 1e-3
