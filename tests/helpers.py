"""What the test modules share: a check of an output against its float64 reference, an
independent count of the DRAM bytes an eager chain moves, and a toy op for harness tests."""

from __future__ import annotations

import subprocess
import time

import pytest
import torch

from tritonlab import backend
from tritonlab.ops.contract import Impl, OpSpec, Tolerance, reduction_tolerance

# The torch device of the selected backend (cuda, or cpu under the interpreter): the default
# of the input builders in the test modules (the `device` fixture gives the same in tests).
DEVICE = backend.current().device


def assert_close_to_reference(out, ref, k, *, scale=1.0, dtype=None, what=""):
    """``out`` against its float64 reference ``ref``, with the tolerance of a ``k``-long dot
    product accumulated in fp32 and stored in ``out``'s dtype (``reduction_tolerance``), both
    bounds multiplied by ``scale`` for results that combine several dots.

    Checks, in order: the shape, the dtype (when ``dtype`` is given), that every element was
    written and is finite (outputs are NaN-poisoned before a kernel runs), the relative
    Frobenius error ||out - ref||_F / ||ref||_F and the max error max|out - ref| / max|ref|.
    Computed here, independently of ``tritonlab.measure.check``, and on the CPU, so ``out``
    and ``ref`` may live on different devices.
    """
    where = f"{what}: " if what else ""
    assert tuple(out.shape) == tuple(ref.shape), \
        f"{where}shape {tuple(out.shape)} != {tuple(ref.shape)}"
    if dtype is not None:
        assert out.dtype == dtype, f"{where}dtype {out.dtype} != {dtype}"
    tol = reduction_tolerance(out.dtype, k)
    o64 = out.detach().to(device="cpu", dtype=torch.float64)
    r64 = ref.detach().to(device="cpu", dtype=torch.float64)
    assert torch.isfinite(o64).all(), f"{where}unwritten (NaN) or overflowed elements"
    diff = o64 - r64
    ref_norm, ref_max = float(r64.norm()), float(r64.abs().max()) if r64.numel() else 0.0
    fro = float(diff.norm()) / (ref_norm if ref_norm > 0 else 1.0)
    mrel = (float(diff.abs().max()) if diff.numel() else 0.0) / (ref_max if ref_max > 0 else 1.0)
    assert fro <= scale * tol.rel_fro, \
        f"{where}rel Frobenius error {fro:.2e} > {scale * tol.rel_fro:.2e}"
    assert mrel <= scale * tol.max_rel, f"{where}max rel error {mrel:.2e} > {scale * tol.max_rel:.2e}"


def aten_traffic(fn, *args, **kwargs) -> tuple[int, list[tuple[str, int]]]:
    """Run ``fn`` and count the bytes each aten op it dispatches reads and writes: the nbytes
    of every tensor argument plus every tensor it returns. An op whose outputs all share
    storage with its inputs without writing them (a view, or a ``.to()`` that returned its
    input) moves nothing and is skipped. An independent count of an eager chain's DRAM
    traffic, to check the ops' ``bytes`` / ``unfused_bytes`` formulas.
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


class DoubleOp(OpSpec):
    """y = 2 x over one dimension N, with the impls a test supplies: a toy op whose plain torch
    impls cost milliseconds, for testing the checker and the sweep rather than a kernel.
    ``output_dtype`` declares an output dtype other than the input's; ``tolerance`` replaces
    the length-1 reduction bound."""

    name, description, dims = "toy", "y = 2 x", ("N",)

    def __init__(self, impls: tuple[Impl, ...], *, modes: tuple[str, ...] = ("infer",),
                 presets: dict | None = None, dtypes: tuple[torch.dtype, ...] | None = None,
                 output_dtype: torch.dtype | None = None, tolerance: Tolerance | None = None):
        self.modes = modes
        self.presets = presets or {"tiny": [{"N": 8}]}
        if dtypes is not None:
            self.dtypes = self.dtypes_interpreter = dtypes
        self._impls = impls
        self.output_dtype = output_dtype
        self._tolerance = tolerance
        super().__init__()

    def implementations(self):
        return self._impls

    def make_inputs(self, shape, dtype, device, seed):
        g = torch.Generator().manual_seed(seed)
        return {"x": torch.randn(shape["N"], generator=g).to(device=device, dtype=dtype)}

    def reference(self, inputs, mode):
        return (inputs["x"].double() * 2,)

    def flops(self, shape, mode):
        return shape["N"]

    def bytes(self, shape, dtype, mode):
        return 2 * dtype.itemsize * shape["N"]

    def tolerance(self, dtype, shape, mode):
        return self._tolerance or reduction_tolerance(dtype, 1)

    def output_dtypes(self, dtype, mode):
        return self.output_dtype or dtype


def wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    """Poll ``cond`` until it holds; fail with ``proc``'s stderr if the process ends first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before {what}: "
                        f"{proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    pytest.fail(f"not {what} after {timeout} s")
