"""Shared test fixtures. The backend is selected automatically: the interpreter here (no GPU),
cuda on a GPU machine (where `pytest -m gpu` runs the GPU lane)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tritonlab import backend

ROOT = Path(__file__).resolve().parent.parent

# Select the backend before any test module imports something that imports triton (e.g.
# torch.utils.flop_counter): Triton's helpers must be set up for the interpreter from the start.
backend.current()


@pytest.fixture(scope="session")
def be():
    return backend.current()


@pytest.fixture(scope="session")
def device(be):
    return be.device


@pytest.fixture
def gpu(be):
    if not be.is_gpu:
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda")


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `tritonlab` entry point in a subprocess (what a user types)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "tritonlab.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=full_env)


def aten_traffic(fn, *args, **kwargs) -> tuple[int, list[tuple[str, int]]]:
    """Run ``fn`` and count the bytes each aten op it dispatches reads and writes: the nbytes
    of every tensor argument plus every tensor it returns. An op whose outputs all share
    storage with its inputs without writing them (a view, or a ``.to()`` that returned its
    input) moves nothing and is skipped. An independent count of an eager chain's DRAM
    traffic, to check the ``bytes`` / ``unfused_bytes`` formulas of the SPECs.
    Returns (total, [(op, bytes)])."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    ops: list[tuple[str, int]] = []

    def tensors(tree):
        return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            inputs = tensors((args, kwargs))
            storages = {t.untyped_storage().data_ptr() for t in inputs}
            writes = any(a.alias_info is not None and a.alias_info.is_write
                         for a in func._schema.arguments)
            outputs = tensors(out)
            if writes or any(t.untyped_storage().data_ptr() not in storages for t in outputs):
                ops.append((str(func), sum(t.numel() * t.element_size()
                                           for t in inputs + outputs)))
            return out

    with Count():
        fn(*args, **kwargs)
    return sum(n for _, n in ops), ops


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu skip with a reason on a machine without CUDA (instead of erroring)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (GPU lane: pytest -m gpu / make gpu-check)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
