"""The persistent TMA GEMM (kernels/_persistent.py) under the interpreter: correctness at odd
sizes, tile counts that are no multiple of the program count, every operand layout a
descriptor takes, the 16-byte rule and the tiled fallback, the path recorded for the sweep,
linear's fused epilogue and the gated MLP on the same schedule, and (compiled for sm_90a without a GPU) TMA
loads, wgmma and no spills. A GPU-lane test compares the persistent and tiled paths."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
from helpers import assert_close_to_reference

from tritonlab.errors import UsageError
from tritonlab.kernels import linear, matmul
from tritonlab.kernels._persistent import (
    INTERPRETER_PROGRAMS,
    PERSISTENT_KERNEL,
    descriptor_problem,
    num_programs,
)
from tritonlab.kernels.tuning import hopper_class
from tritonlab.ops.matmul import PATHS_SPEC, SPEC, descriptor_ready

mm = importlib.import_module("tritonlab.kernels.matmul")
lin = importlib.import_module("tritonlab.kernels.linear")
gm = importlib.import_module("tritonlab.kernels.gated_mlp")
persistent = importlib.import_module("tritonlab.kernels._persistent")

DTYPES = [torch.float16, torch.float32]


def _operand(rows, cols, dtype, transposed, gen, pad=None):
    """A (rows, cols) operand with N(0, 1) values; ``transposed`` stores it column-major;
    ``pad`` widens the contiguous dimension of the underlying buffer (a strided view; by
    default to the next multiple of 8 elements, 16 bytes in fp16)."""
    if pad is None:
        pad = -(rows if transposed else cols) % 8
    if transposed:
        buf = torch.randn(cols, rows + pad, generator=gen).to(dtype)
        return buf[:, :rows].t()
    buf = torch.randn(rows, cols + pad, generator=gen).to(dtype)
    return buf[:, :cols]


def _tiles(m, n):
    cfg = PERSISTENT_KERNEL.interpreter_config.kwargs
    return math.ceil(m / cfg["BLOCK_M"]) * math.ceil(n / cfg["BLOCK_N"])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nn", "nt", "tn", "tt"])
@pytest.mark.parametrize("mnk", [(97, 136, 72), (200, 72, 136), (24, 8, 8)])
def test_persistent_layouts_and_odd_sizes(dtype, layout, mnk, device):
    """M, N, K no multiple of the 64 x 64 x 64 tile; 8, 6 and 1 tiles on 3 programs, so
    programs own 3, 2 or no tiles; operands row- or column-major (read in place)."""
    m, n, k = mnk
    g = torch.Generator().manual_seed(m + 7 * n + 31 * k)
    a = _operand(m, k, dtype, layout[0] == "t", g).to(device)
    b = _operand(k, n, dtype, layout[1] == "t", g).to(device)
    out = torch.full((m, n), math.nan, dtype=dtype, device=device)
    c = matmul(a, b, out=out, path="persistent")
    assert c.data_ptr() == out.data_ptr()
    assert_close_to_f64(c, a, b)
    cfg = mm.MATMUL_LAST()
    assert cfg["path"] == "persistent" and cfg["programs"] == min(INTERPRETER_PROGRAMS,
                                                                   _tiles(m, n))


def assert_close_to_f64(c, a, b):
    assert_close_to_reference(c, a.double() @ b.double(), a.shape[1], dtype=a.dtype)


def test_odd_k_through_padded_rows_and_a_strided_out_window(device):
    """K = 131 (262-byte rows) read from buffers whose rows are padded to 16-byte multiples,
    C written into a window of a guard buffer: nothing outside C changes."""
    m, n, k = 70, 45, 131
    g = torch.Generator().manual_seed(3)
    a = _operand(m, k, torch.float16, False, g, pad=5).to(device)
    b = _operand(k, n, torch.float16, True, g, pad=5).to(device)
    assert descriptor_problem("a", a) is None and descriptor_problem("b", b) is None
    guard = torch.full((m + 9, 64), 1234.0, dtype=torch.float16, device=device)
    window = guard[4:4 + m, 8:8 + n]  # rows of 128 bytes, base 16 bytes into a row
    window.fill_(math.nan)
    matmul(a, b, out=window, path="persistent")
    assert_close_to_f64(window, a, b)
    outside = torch.ones_like(guard, dtype=torch.bool)
    outside[4:4 + m, 8:8 + n] = False
    assert (guard[outside] == 1234.0).all(), "the persistent kernel wrote outside C"


@pytest.mark.parametrize("make, match", [
    (lambda: torch.empty(8, 13, dtype=torch.float16), "26 bytes"),
    (lambda: torch.empty(20, 30)[::2, ::3], "strides"),
    (lambda: torch.empty(1, 8 * 16 + 1, dtype=torch.float16)[:, 1:].view(8, 16), "aligned"),
    (lambda: torch.empty(1, 16).expand(4, 16), "broadcast"),
    (lambda: torch.empty(16, 9, dtype=torch.float16).t(), "18 bytes"),
])
def test_descriptor_rules(make, match):
    assert match in descriptor_problem("t", make())


def test_row_major_is_required_for_outputs():
    t = torch.empty(16, 8).t()
    assert descriptor_problem("out", t) is None
    assert "unit column stride" in descriptor_problem("out", t, row_major=True)


def test_forced_persistent_refuses_what_a_descriptor_cannot_read(device):
    a = torch.randn(40, 13, device=device).half()
    b = torch.randn(13, 24, device=device).half()
    with pytest.raises(UsageError, match="16 bytes.*path='tiled'"):
        matmul(a, b, path="persistent")
    with pytest.raises(UsageError, match="valid: None"):
        matmul(a, b, path="fast")


def test_default_path_under_the_interpreter_is_tiled(device):
    a = torch.randn(40, 32, device=device).half()
    b = torch.randn(32, 24, device=device).half()
    matmul(a, b)
    assert mm.MATMUL_LAST()["path"] == "tiled" and "fallback" not in mm.MATMUL_LAST()
    assert num_programs(a.device) == INTERPRETER_PROGRAMS


def test_hopper_dispatch_and_recorded_fallback(device, monkeypatch):
    """With the device taken for sm_90 (tma_device): descriptor-friendly operands run the
    persistent kernel, others the tiled one with the reason recorded; M <= 16 stays on
    split-K; ``path="tiled"`` forces the tiled kernel."""
    monkeypatch.setattr(mm, "tma_device", lambda dev: True)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, 32, generator=g).half().to(device)
    b = torch.randn(32, 24, generator=g).half().to(device)
    assert_close_to_f64(matmul(a, b), a, b)
    assert mm.MATMUL_LAST()["path"] == "persistent"
    a_odd = torch.randn(40, 13, generator=g).half().to(device)
    b_odd = torch.randn(13, 24, generator=g).half().to(device)
    assert_close_to_f64(matmul(a_odd, b_odd), a_odd, b_odd)
    cfg = mm.MATMUL_LAST()
    assert cfg["path"] == "tiled" and "26 bytes" in cfg["fallback"]
    matmul(a[:8], b)
    assert mm.MATMUL_LAST()["path"] == "splitk"
    matmul(a, b, path="tiled")
    assert mm.MATMUL_LAST()["path"] == "tiled" and "fallback" not in mm.MATMUL_LAST()


def test_backward_runs_on_the_persistent_path(device, monkeypatch):
    monkeypatch.setattr(mm, "tma_device", lambda dev: True)
    g = torch.Generator().manual_seed(2)
    a = torch.randn(48, 32, generator=g).to(device).requires_grad_()
    b = torch.randn(32, 40, generator=g).to(device).requires_grad_()
    gc = torch.randn(48, 40, generator=g).to(device)
    matmul(a, b).backward(gc)
    assert mm.MATMUL_LAST()["path"] == "persistent"
    assert_close_to_reference(a.grad, gc.double() @ b.detach().double().t(), 40)
    assert_close_to_reference(b.grad, a.detach().double().t() @ gc.double(), 48)


def test_spec_paths_and_descriptor_ready(device):
    """The Triton impls of matmul and matmul_paths run the path they name,
    ``triton_persistent`` also on operands whose rows it pads; the row layout padding copies
    the values exactly."""
    inputs = SPEC.make_inputs({"M": 97, "N": 83, "K": 131}, torch.float16, device, 0)
    ref = SPEC.reference(inputs, "fwd")[0]
    for spec, impl, path in ((PATHS_SPEC, "triton_persistent", "persistent"),
                             (PATHS_SPEC, "triton_tiled", "tiled"), (SPEC, "triton", "tiled")):
        (c,) = spec.impl(impl).build(inputs, "fwd")()
        assert_close_to_reference(c, ref, 131)
        assert spec.impl(impl).config("fwd")["path"] == path
    padded = descriptor_ready(inputs["a"])
    assert torch.equal(padded, inputs["a"]) and padded.stride(0) == 136


@pytest.mark.parametrize("act, bias", [("gelu", True), ("relu", False), (None, True)])
def test_linear_forward_on_the_persistent_main_loop(act, bias, device, monkeypatch):
    """linear's fused epilogue (bias, activation, saved act'(Z)) on the persistent kernel,
    forward and backward against float64 autograd of the eager chain."""
    monkeypatch.setattr(lin, "tma_device", lambda dev: True)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 33, 48, generator=g).to(device).requires_grad_()
    w = (torch.randn(72, 48, generator=g) * 48**-0.5).to(device).requires_grad_()
    bvec = torch.randn(72, generator=g).to(device).requires_grad_() if bias else None
    y = linear(x, w, bvec, act)
    assert lin.FWD_LAST()["path"] == "persistent"
    gy = torch.randn(y.shape, generator=g).to(device)
    y.backward(gy)
    leaves = [t for t in (x, w, bvec) if t is not None]
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    z = torch.nn.functional.linear(ref_leaves[0], ref_leaves[1],
                                   ref_leaves[2] if bias else None)
    fn = {"gelu": torch.nn.functional.gelu, "relu": torch.relu, None: lambda t: t}[act]
    ref = fn(z)
    ref.backward(gy.double())
    assert_close_to_reference(y, ref, 48, scale=2, what="y")
    for t, r, name in zip(leaves, ref_leaves, ("dx", "dW", "db")):
        assert_close_to_reference(t.grad, r.grad, 72 * 99, scale=2, what=name)


def test_linear_falls_back_for_rows_a_descriptor_cannot_read(device, monkeypatch):
    monkeypatch.setattr(lin, "tma_device", lambda dev: True)
    x = torch.randn(40, 13, device=device)  # 52-byte rows
    w = torch.randn(24, 13, device=device)
    with torch.no_grad():
        y = linear(x, w)
    assert lin.FWD_LAST()["path"] == "tiled" and "52 bytes" in lin.FWD_LAST()["fallback"]
    assert_close_to_reference(y, x.double() @ w.double().t(), 13)


def test_linear_falls_back_for_an_output_a_descriptor_cannot_write(device, monkeypatch):
    """Readable operands but 13 output columns (52-byte rows of y and of the saved
    derivative): the tiled kernel, never an invalid output descriptor."""
    monkeypatch.setattr(lin, "tma_device", lambda dev: True)
    x, w = torch.randn(40, 48, device=device), torch.randn(13, 48, device=device)
    with torch.no_grad():
        y = linear(x, w)
    assert lin.FWD_LAST()["path"] == "tiled" and "52 bytes" in lin.FWD_LAST()["fallback"]
    assert_close_to_reference(y, x.double() @ w.double().t(), 48)


@pytest.mark.parametrize("norm", [False, True])
def test_gated_mlp_on_the_persistent_main_loop(norm, device, monkeypatch):
    """gated_mlp (and with the RMSNorm folded in) on the persistent kernel: 97 x 136 output,
    4 tiles on 3 programs, K = 72 no multiple of the K tile; x transposed; a layout a
    descriptor cannot read falls back to the tiled kernel and says why."""
    monkeypatch.setattr(gm, "tma_device", lambda dev: True)
    g = torch.Generator().manual_seed(11)
    m, n, k = 97, 136, 72
    x = _operand(m, k, torch.float16, True, g).to(device)
    wg = (torch.randn(n, k, generator=g) * k**-0.5).half().to(device)
    wu = (torch.randn(n, k, generator=g) * k**-0.5).half().to(device)
    nw = (1 + 0.1 * torch.randn(k, generator=g)).half().to(device) if norm else None
    out = torch.full((m, n), math.nan, dtype=torch.float16, device=device)
    gm.gated_mlp(x, wg, wu, "silu", norm_weight=nw, out=out)
    assert gm.GATED_LAST()["path"] == "persistent"
    xd = x.double()
    if norm:
        xd = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + 1e-5) * nw.double()
    ref = torch.nn.functional.silu(xd @ wg.double().t()) * (xd @ wu.double().t())
    assert_close_to_reference(out, ref, k, scale=2)
    x13, wg13, wu13 = (t[:, :13].contiguous() for t in (x, wg, wu))  # 26-byte rows
    y13 = gm.gated_mlp(x13, wg13, wu13, "silu")
    assert gm.GATED_LAST()["path"] == "tiled" and "26 bytes" in gm.GATED_LAST()["fallback"]
    ref13 = (torch.nn.functional.silu(x13.double() @ wg13.double().t())
             * (x13.double() @ wu13.double().t()))
    assert_close_to_reference(y13, ref13, 13, scale=2)


def test_gated_mlp_in_exact_fp32_takes_the_tiled_kernel(device, monkeypatch):
    """Exact fp32 (ieee) dots: the persistent gated kernel would spill on sm_90a, so the
    Hopper dispatch runs the tiled one and records why; TF32 keeps the persistent loop."""
    monkeypatch.setattr(gm, "tma_device", lambda dev: True)
    g = torch.Generator().manual_seed(12)
    m, n, k = 67, 72, 40
    x = torch.randn(m, k, generator=g).to(device)
    wg = (torch.randn(n, k, generator=g) * k**-0.5).to(device)
    wu = (torch.randn(n, k, generator=g) * k**-0.5).to(device)
    out = torch.full((m, n), math.nan, device=device)
    gm.gated_mlp(x, wg, wu, "silu", out=out, input_precision="ieee")
    last = gm.GATED_LAST()
    assert last["path"] == "tiled" and last["fallback"].startswith("exact fp32")
    ref = (torch.nn.functional.silu(x.double() @ wg.double().t())
           * (x.double() @ wu.double().t()))
    assert_close_to_reference(out, ref, k, scale=2)
    gm.gated_mlp(x, wg, wu, "silu", input_precision="tf32")
    assert gm.GATED_LAST()["path"] == "persistent"


# ------------------------------------------------------------ compiled for sm_90a (no GPU)

@pytest.fixture(scope="module")
def sm90_rows(tmp_path_factory):
    """The persistent targets of matmul, fp8_matmul and gated_mlp (and their other kernels)
    in their first config, compiled for sm_90a in one batch into a fresh cache."""
    from tritonlab.ops import registry
    from tritonlab.static import api as insp

    mp = pytest.MonkeyPatch()
    mp.setenv("TRITONLAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    ops = [registry.discover()[n] for n in ("matmul", "fp8_matmul", "gated_mlp")]
    report = insp.run(ops, [insp.parse_arch("sm_90a")], [torch.bfloat16], first=1)
    mp.undo()
    return {(r["op"], r["target"]): r for r in report.rows}


@pytest.mark.parametrize("op, target, mma", [("matmul", "persistent", "HGMMA"),
                                             ("fp8_matmul", "fwd", "QGMMA"),
                                             ("gated_mlp", "persistent", "HGMMA")])
def test_sm90_persistent_kernels_use_tma_and_wgmma_without_spills(sm90_rows, op, target, mma):
    r = sm90_rows[(op, target)]
    assert r["status"] == "ok", r["error"]
    assert r["spill_stores"] == 0 and r["spill_loads"] == 0
    mix = r["instructions"]
    assert mix["async_copy"].get("UTMALDG", 0) > 0 and "LDGSTS" not in mix["async_copy"]
    assert mix["async_copy"].get("UTMASTG", 0) > 0
    assert any(k.startswith(mma) for k in mix["tensor_core"]), mix["tensor_core"]


def test_sm90_tiled_kernel_still_loads_through_cp_async(sm90_rows):
    mix = sm90_rows[("matmul", "fwd")]["instructions"]
    assert mix["async_copy"].get("LDGSTS", 0) > 0 and "UTMALDG" not in mix["async_copy"]


# --------------------------------------------------------------------------- GPU lane

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mnk", [(512, 1024, 768), (1000, 2056, 1032), (4096, 4096, 4096)])
def test_persistent_matches_tiled_gpu(dtype, mnk, gpu):
    """Both paths against float64, and against each other, on a GPU (the persistent path
    only where the GPU has TMA)."""
    if not hopper_class(torch.cuda.get_device_capability()):
        pytest.skip("the persistent path is the default on Hopper-class GPUs only")
    m, n, k = mnk
    g = torch.Generator().manual_seed(m + n + k)
    a = torch.randn(m, k, generator=g).to(gpu, dtype)
    b = torch.randn(k, n, generator=g).to(gpu, dtype)
    out_p = torch.full((m, n), math.nan, dtype=dtype, device=gpu)
    out_t = torch.full((m, n), math.nan, dtype=dtype, device=gpu)
    matmul(a, b, out=out_p)
    assert mm.MATMUL_LAST()["path"] == "persistent"
    matmul(a, b, out=out_t, path="tiled")
    assert_close_to_f64(out_p, a, b)
    assert_close_to_f64(out_t, a, b)
    assert_close_to_reference(out_p, out_t.double(), k, scale=2)
