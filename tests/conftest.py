"""Shared test fixtures. The backend is selected automatically: the interpreter here (no GPU),
cuda on a GPU machine (where `pytest -m gpu` runs the GPU lane)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tritonlab import backend

ROOT = Path(__file__).resolve().parent.parent

# A suite started in the background (`cmd &` in a script, nohup) inherits SIGINT ignored, and
# so would every CLI a test starts and then stops with Ctrl-C; a Python handler here is reset
# to the default in those children when they exec, so they see Ctrl-C as a user's would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu skip with a reason on a machine without CUDA (instead of erroring)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (GPU lane: pytest -m gpu / make gpu-check)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
