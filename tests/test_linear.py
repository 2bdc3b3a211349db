"""linear (y = act(x W^T + b)) and its backward against float64 torch autograd: every
activation, with and without bias, leading batch dims, strided x, each subset of
requires_grad, gradcheck, the nn.Module, the op's SPECs, and bad input."""

from __future__ import annotations

import importlib
import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from helpers import DEVICE, assert_close_to_reference, aten_traffic
from torch.utils._python_dispatch import TorchDispatchMode

from tritonlab.kernels import Linear, linear
from tritonlab.kernels._activations import ACTIVATIONS
from tritonlab.measure import check
from tritonlab.ops import registry
from tritonlab.ops.contract import reduction_tolerance
from tritonlab.ops.linear import SPECS
from tritonlab.reference import torch_activation
from tritonlab.static import api as insp

# The package re-exports the function `linear`, which shadows the submodule attribute.
lin = importlib.import_module("tritonlab.kernels.linear")

ACTS = [None, *ACTIVATIONS[1:]]
# The op variants: name -> (activation, bias).
VARIANTS = {op.name: (op.activation, op.has_bias) for op in SPECS}
CPU_DTYPES = [torch.float16, torch.float32]
SENTINEL = 1234.0
PAD = 16384  # elements of guard around each allocation: more than 64 stray rows of any N here


# ------------------------------------------------------------------------------- helpers

def reference(x, w, b, act, grad):
    """(y, dx, dw, db) in float64 by torch autograd; None for a missing bias."""
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if b is not None else None
    y = torch_activation(F.linear(x64, w64, b64), act)
    leaves = [t for t in (x64, w64, b64) if t is not None]
    grads = list(torch.autograd.grad(y, leaves, grad.double()))
    if b is None:
        grads.append(None)
    return (y.detach(), *grads)


def assert_close(out, ref, dtype, length, what=""):
    assert_close_to_reference(out, ref, length, dtype=dtype, what=what)


def check_all(x, w, b, act, dtype, needs=(True, True, True), seed=0):
    """Run linear forward + backward with the given requires_grad flags and compare y and
    every requested gradient with float64 autograd. Returns (y, grads)."""
    # detach() keeps x's storage and strides: the kernels see the caller's layout.
    xs = x.detach().requires_grad_(needs[0])
    ws = w.detach().requires_grad_(needs[1])
    bs = b.detach().requires_grad_(needs[2]) if b is not None else None
    y = linear(xs, ws, bs, act)
    g = torch.Generator().manual_seed(seed + 99)
    grad = torch.randn(y.shape, generator=g).to(device=y.device, dtype=dtype)
    ref = reference(x, w, b, act, grad)
    m = y.numel() // y.shape[-1]
    n, k = w.shape
    assert_close(y, ref[0], dtype, k, "y")
    leaves = [(t, r, name, length) for t, r, name, length in
              ((xs, ref[1], "dx", n), (ws, ref[2], "dw", m), (bs, ref[3], "db", m))
              if t is not None and t.requires_grad]
    if leaves:
        grads = torch.autograd.grad(y, [t for t, *_ in leaves], grad, retain_graph=True)
        for got, (_, r, name, length) in zip(grads, leaves):
            assert_close(got, r, dtype, length, name)
        return y, grads
    return y, ()


def rand(*shape, dtype=torch.float32, seed=0, scale=1.0, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)


def make_problem(lead, n, k, dtype, seed=0, bias=True):
    x = rand(*lead, k, dtype=dtype, seed=seed)
    w = rand(n, k, dtype=dtype, seed=seed + 1, scale=max(k, 1) ** -0.5)
    b = rand(n, dtype=dtype, seed=seed + 2, scale=0.5) if bias else None
    return x, w, b


class GuardedEmpty:
    """Stands in for torch.empty: every floating-point allocation is NaN-filled (an element
    a kernel forgets to write stays NaN) and sits inside a sentinel-filled guard buffer (a
    stray store past either end is caught by :meth:`check`)."""

    def __init__(self, real):
        self.real = real
        self.buffers = []

    def __call__(self, *size, dtype=None, device=None, **kwargs):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point or kwargs:
            return self.real(size, dtype=dtype, device=device, **kwargs)
        n = math.prod(size)
        buf = self.real(n + 2 * PAD, dtype=dtype, device=device).fill_(SENTINEL)
        buf[PAD:PAD + n] = math.nan
        self.buffers.append((buf, n))
        return buf[PAD:PAD + n].view(size)

    def check(self):
        assert self.buffers, "no allocation went through torch.empty"
        for buf, n in self.buffers:
            assert (buf[:PAD] == SENTINEL).all() and (buf[PAD + n:] == SENTINEL).all(), \
                "a kernel wrote outside its output tensor"


@pytest.fixture
def guarded(monkeypatch):
    alloc = GuardedEmpty(torch.empty)
    monkeypatch.setattr(torch, "empty", alloc)
    yield alloc
    monkeypatch.undo()
    alloc.check()


@pytest.fixture
def launches(monkeypatch):
    """Every kernel launch of linear, as (kernel name, positional args, keyword args)."""
    calls = []
    for name, kernel in lin.KERNELS.items():
        def record(grid, dtype, *args, _orig=kernel.launch, _name=name, **kwargs):
            calls.append((_name, args, kwargs))
            return _orig(grid, dtype, *args, **kwargs)
        monkeypatch.setattr(kernel, "launch", record)
    return calls


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("act", ACTS, ids=str)
def test_gradients_match_float64(act, bias, dtype, guarded):
    # Leading batch dims, and sizes that are not multiples of the 64-wide tiles, so every
    # kernel has several programs and masked edges in all three dimensions.
    x, w, b = make_problem((2, 37), 67, 70, dtype, seed=ACTS.index(act) + 10 * bias,
                           bias=bias)
    check_all(x, w, b, act, dtype)


@pytest.mark.parametrize("mnk", [(1, 1, 1), (1, 130, 75), (150, 5, 129), (65, 64, 3)])
def test_odd_shapes(mnk):
    m, n, k = mnk
    x, w, b = make_problem((m,), n, k, torch.float32, seed=sum(mnk))
    check_all(x, w, b, "silu", torch.float32)


def _strided_x(kind, k, dtype):
    g = torch.Generator().manual_seed(5)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    if kind == "columns":  # 2-D, every other column: element stride 2
        return r(70, 2 * k)[:, ::2]
    if kind == "transposed":  # 2-D column-major
        return r(k, 70).t()
    if kind == "seq_major":  # (T, B, K) storage seen as (B, T, K): two-level rows
        return r(11, 7, k).transpose(0, 1)
    if kind == "broadcast":  # one sequence repeated over a batch: outer stride 0
        return r(1, 13, k).expand(5, 13, k)
    if kind == "sliced":  # a window of a bigger (B, T', K') buffer
        return r(3, 30, k + 9)[:, 4:27, 5:5 + k]
    if kind == "vector":  # 1-D x: one row
        return r(k)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["columns", "transposed", "seq_major", "broadcast", "sliced",
                                  "vector"])
def test_strided_x_is_read_in_place(kind, launches):
    dtype = torch.float32
    k = 45
    x = _strided_x(kind, k, dtype)
    _, w, b = make_problem((1,), 53, k, dtype, seed=3)
    check_all(x, w, b, "gelu", dtype)
    used = [args[2] if name == "bwd_dw" else args[0] for name, args, _ in launches
            if name in ("fwd", "bwd_dw")]
    assert len(used) == 2
    for t in used:  # the kernels got x itself, not a copy
        assert t.data_ptr() == x.data_ptr() and t.stride() == x.stride()


def test_three_level_layout_is_copied_and_correct(launches):
    """Leading dims that do not collapse to two (size, stride) levels are the one case that
    is copied (documented); the result is still right."""
    base = rand(4, 3, 5, 24, seed=8)
    x = base.permute(2, 1, 0, 3)  # (5, 3, 4, 24): three row levels
    assert lin._row_layout(x) is None
    _, w, b = make_problem((1,), 19, 24, torch.float32, seed=9)
    check_all(x, w, b, "relu", torch.float32)
    fwd_x = next(args[0] for name, args, _ in launches if name == "fwd")
    assert fwd_x.is_contiguous() and fwd_x.shape == (60, 24)


def test_row_layout():
    t = torch.empty(3, 7, 10)
    assert lin._row_layout(t) == (21, 0, 10, False)
    assert lin._row_layout(t.transpose(0, 1)) == (3, 10, 70, True)
    assert lin._row_layout(t[:, :, ::2]) == (21, 0, 10, False)
    assert lin._row_layout(t[:1]) == (7, 0, 10, False)
    assert lin._row_layout(torch.empty(10)) == (1, 0, 0, False)
    # A slice of the last dim keeps all leading dims one level: strides (84, 21, 7).
    assert lin._row_layout(torch.empty(2, 4, 3, 7)[..., :5]) == (24, 0, 7, False)
    # (4, 5, 3, 6) with strides (30, 6, 120, 1): the first two merge into 20 rows.
    assert lin._row_layout(torch.empty(3, 4, 5, 6).permute(1, 2, 0, 3)) == (3, 6, 120, True)
    assert lin._row_layout(torch.empty(2, 3, 4, 5).transpose(0, 1)) is None


SUBSETS = list(itertools.product([False, True], repeat=3))


@pytest.mark.parametrize("needs", SUBSETS, ids=lambda s: "".join("xwb"[i] if s[i] else "-"
                                                               for i in range(3)))
def test_only_needed_gradients_are_computed(needs, launches):
    dtype = torch.float32
    x, w, b = make_problem((3, 25), 70, 33, dtype, seed=4)
    y, _ = check_all(x, w, b, "gelu", dtype, needs=needs)
    by_name = {}
    for name, _, kwargs in launches:
        by_name.setdefault(name, []).append(kwargs)
    assert len(by_name["fwd"]) == 1
    assert by_name["fwd"][0]["SAVE_DACT"] is any(needs)
    assert len(by_name.get("bwd_dx", [])) == int(needs[0])
    if needs[1] or needs[2]:
        (dw_kwargs,) = by_name["bwd_dw"]
        assert dw_kwargs["COMPUTE_DW"] is needs[1] and dw_kwargs["COMPUTE_DB"] is needs[2]
    else:
        assert "bwd_dw" not in by_name
    if any(needs):
        saved_x, saved_w, saved_d = y.grad_fn.saved_tensors
        # x is kept alive only for dW, W only for dX.
        assert (saved_x is not None) == needs[1] and (saved_w is not None) == needs[0]
        assert saved_d is not None
    else:
        assert y.grad_fn is None


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_what_forward_saves(act, launches):
    x, w, b = make_problem((40,), 30, 20, torch.float32, seed=2)
    x.requires_grad_()
    y = linear(x, w, b, act)
    (_, _, kwargs), = launches
    saved_x, saved_w, saved = y.grad_fn.saved_tensors
    assert saved_x is None and saved_w is not None
    if act in lin.SAVES_DACT:
        # act'(Z), checked against torch autograd's derivative of act at Z in float64.
        z = F.linear(x, w, b).double().requires_grad_()
        (dact,) = torch.autograd.grad(torch_activation(z, act).sum(), z)
        assert kwargs["SAVE_DACT"] and saved.shape == (40, 30)
        torch.testing.assert_close(saved.double(), dact, rtol=1e-5, atol=1e-6)
    elif act == "relu":  # ReLU's derivative is read off y: nothing extra is stored
        assert not kwargs["SAVE_DACT"] and saved.data_ptr() == y.data_ptr()
    else:
        assert not kwargs["SAVE_DACT"] and saved is None


class _OpRecorder(TorchDispatchMode):
    """Names of the aten ops run outside kernel launches (the interpreter itself runs torch
    ops to stage a kernel's arguments; those are not the layer's work)."""

    def __init__(self):
        super().__init__()
        self.ops = []
        self.in_launch = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_launch:
            self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_backward_is_two_kernels_and_no_torch_math(act, launches, monkeypatch):
    """The activation gradient and db are fused: backward is the dX and dW kernels, and torch
    only allocates and reshapes (no elementwise pass, no reduction over G)."""
    x, w, b = make_problem((90,), 70, 33, torch.float32, seed=6)
    leaves = [t.requires_grad_() for t in (x, w, b)]
    y = linear(x, w, b, act)
    grad = torch.randn_like(y)
    launches.clear()
    rec = _OpRecorder()
    for kernel in lin.KERNELS.values():
        def launch(*args, _orig=kernel.launch, **kwargs):
            rec.in_launch += 1
            try:
                return _orig(*args, **kwargs)
            finally:
                rec.in_launch -= 1
        monkeypatch.setattr(kernel, "launch", launch)
    with rec:
        torch.autograd.grad(y, leaves, grad)
    assert [name for name, *_ in launches] == ["bwd_dx", "bwd_dw"]
    assert set(rec.ops) <= {"empty", "view", "reshape", "_reshape_alias", "alias", "detach"}, \
        rec.ops


@pytest.mark.parametrize("act", ACTS, ids=str)
def test_gradcheck_float64(act, be):
    """The interpreter computes float64 dots exactly, so float64 gradcheck runs here."""
    if be.is_gpu:
        pytest.skip("float64 linear runs on the interpreter only (its CUDA tiles are sized for "
                    "2- and 4-byte elements)")
    x, w, b = make_problem((3,), 2, 4, torch.float64, seed=ACTS.index(act))
    if act == "relu":  # keep pre-activations away from the kink, where finite differences lie
        b = b + torch.sign(b) * 0.5
    leaves = tuple(t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda *t: linear(*t, act), leaves, eps=1e-6, atol=1e-7)


def test_output_can_be_modified_in_place():
    """y is not a view: like F.linear's output it can be scaled in place, and the gradient
    follows (GELU saves Z, not y)."""
    x, w, b = make_problem((30,), 20, 10, torch.float32, seed=1)
    x.requires_grad_()
    y = linear(x, w, b, "gelu")
    y.mul_(2.0)
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    ref = reference(x, w, b, "gelu", torch.full(y.shape, 2.0))
    assert_close(dx, ref[1], torch.float32, 20, "dx")


def test_int64_addressing_path(monkeypatch):
    """The int64 address path (tensors past 2^31 elements) gives the same answer; forced on
    here because such tensors do not fit this machine's test budget."""
    monkeypatch.setattr(lin, "needs_int64", lambda *t: True)
    x = _strided_x("seq_major", 45, torch.float32)
    _, w, b = make_problem((1,), 70, 45, torch.float32, seed=12)
    check_all(x, w, b, "gelu_tanh", torch.float32)


def test_empty_and_zero_k():
    x, w, b = make_problem((0,), 6, 5, torch.float32)
    for t in (x, w, b):
        t.requires_grad_()
    y = linear(x, w, b, "gelu")
    dx, dw, db = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
    assert y.shape == (0, 6) and dx.shape == (0, 5)
    assert torch.equal(dw, torch.zeros(6, 5)) and torch.equal(db, torch.zeros(6))
    # K = 0: y = act(b) on every row, dW is empty and db still the column sums of G'.
    x, w, b = make_problem((7,), 6, 0, torch.float32)
    for t in (x, w, b):
        t.requires_grad_()
    y = linear(x, w, b, "silu")
    grad = rand(7, 6, seed=3)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), grad)
    ref = reference(x, w, b, "silu", grad)
    torch.testing.assert_close(y.double(), ref[0])
    assert dx.shape == (7, 0) and dw.shape == (6, 0)
    torch.testing.assert_close(db.double(), ref[3])


# ----------------------------------------------------------------------- infer / no-grad

@pytest.mark.parametrize("context", ["inference_mode", "no_grad"])
def test_inference_runs_one_kernel_and_saves_nothing(context, launches):
    x, w, b = make_problem((3, 40), 70, 45, torch.float16, seed=7)
    for t in (x, w, b):
        t.requires_grad_()
    with getattr(torch, context)():
        y = linear(x, w, b, "gelu")
    assert [name for name, *_ in launches] == ["fwd"]
    assert launches[0][2]["SAVE_DACT"] is False
    assert not y.requires_grad and y.grad_fn is None
    assert y.is_inference() == (context == "inference_mode")
    assert_close(y, reference(x, w, b, "gelu", torch.zeros(3, 40, 70))[0], torch.float16, 45)


# ---------------------------------------------------------------------------- nn.Module

def test_module_matches_torch_linear(device):
    torch.manual_seed(0)
    ref = torch.nn.Linear(45, 37, device=device)
    mine = Linear(45, 37, device=device)
    assert isinstance(mine, torch.nn.Linear)
    assert mine.state_dict().keys() == ref.state_dict().keys()
    assert {k: v.shape for k, v in mine.named_parameters()} == \
        {k: v.shape for k, v in ref.named_parameters()}
    mine.load_state_dict(ref.state_dict())
    x = rand(3, 11, 45, seed=4)
    y_ref, y = ref(x), mine(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    y_ref.square().sum().backward()
    y.square().sum().backward()
    for name, p in mine.named_parameters():
        torch.testing.assert_close(p.grad, dict(ref.named_parameters())[name].grad,
                                   rtol=1e-4, atol=1e-4)
    # Round trip the other way, and the constructor's bias/dtype arguments.
    ref.load_state_dict(Linear(45, 37).state_dict())
    nobias = Linear(8, 4, bias=False, dtype=torch.float16)
    assert nobias.bias is None and nobias.weight.dtype == torch.float16
    assert "activation=None" in repr(nobias)


def test_module_with_activation_matches_sequential(device):
    torch.manual_seed(1)
    seq = torch.nn.Sequential(torch.nn.Linear(30, 20, device=device), torch.nn.SiLU())
    mine = Linear(30, 20, device=device, activation="silu")
    mine.load_state_dict(seq[0].state_dict())
    x = rand(16, 30, seed=2)
    torch.testing.assert_close(mine(x), seq(x), rtol=1e-5, atol=1e-5)
    assert "activation=silu" in repr(mine)


# ----------------------------------------------------------------------------- bad input

BAD = [
    (lambda: (torch.ones(4, 5), torch.ones(3, 6), None, None), "x.shape\\[-1\\] must equal"),
    (lambda: (torch.ones(4, 5), torch.ones(5), None, None), "weight must be 2-D"),
    (lambda: (torch.ones(4, 5), torch.ones(2, 3, 5), None, None), "weight must be 2-D"),
    (lambda: (torch.ones(4, 5, dtype=torch.float16), torch.ones(3, 5), None, None),
     "weight is float32 but x is float16"),
    (lambda: (torch.ones(4, 5), torch.ones(3, 5), torch.ones(4), None),
     "bias must have shape \\(3,\\)"),
    (lambda: (torch.ones(4, 5), torch.ones(3, 5), torch.ones(3, dtype=torch.float16), None),
     "bias is float16 but x is float32"),
    (lambda: (torch.ones(4, 5), torch.ones(3, 5), None, "tanh"),
     "unknown activation 'tanh'; expected one of: None, 'relu'"),
    (lambda: (torch.tensor(1.0), torch.ones(3, 5), None, None), "shape \\(..., in_features\\)"),
]


@pytest.mark.parametrize("make,match", BAD)
def test_bad_input(make, match):
    x, w, b, act = make()
    with pytest.raises(ValueError, match=match):
        linear(x, w, b, act)


def test_bad_module_activation():
    with pytest.raises(ValueError, match="unknown activation 'gelu_erf'"):
        Linear(4, 4, activation="gelu_erf")


# ------------------------------------------------------------------------------- the SPECs

def test_specs_registered():
    ops = registry.discover()
    for name, (act, bias) in VARIANTS.items():
        op = ops[name]
        assert op.tags == {"activation": act, "bias": "yes" if bias else "no"}
        assert op.modes == ("fwd", "bwd", "fwd_bwd", "infer")
        assert op.impl("torch_compile").backends == ("cuda",)
        names = [i.name for i in op.impls]
        # cuBLASLt's epilogues are ReLU and the tanh GELU, and they need a bias vector.
        assert ("addmm_act" in names) == (bias and act in ("relu", "gelu_tanh"))
        if "addmm_act" in names:
            assert op.impl("addmm_act").modes == ("infer",)
        for shape in op.presets["llm"]:
            assert (shape["K"], shape["N"]) in ((4096, 14336), (14336, 4096))
        assert {s["M"] for s in op.presets["llm"]} >= {1, 16, 2048, 16384}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_spec_triton_passes_check_every_mode(name):
    op = registry.discover()[name]
    shape = {"M": 70, "N": 67, "K": 45}
    for mode in op.modes:
        r = check.check_case(op, op.impl("triton"), mode, torch.float16, shape, seed=1)
        assert r.correct, (mode, r.error)


@pytest.mark.parametrize("name", ["linear", "linear_plain"])
@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd_bwd", "infer"])
def test_flops_match_flop_counter(name, mode, device):
    """FlopCounterMode counts the GEMMs of the torch baseline; the SPEC adds one FLOP per
    element for the bias add, G*act'(Z) and the db sums, which it documents."""
    # Imported here: torch.utils.flop_counter imports triton, which must not happen before
    # the backend is selected (TRITON_INTERPRET is read when triton's own kernels decorate).
    from torch.utils.flop_counter import FlopCounterMode

    op = registry.discover()[name]
    act, bias = VARIANTS[name]
    shape = {"M": 33, "N": 20, "K": 17}
    run = op.impl("torch").build(op.make_inputs(shape, torch.float32, device, 0), mode)
    with FlopCounterMode(display=False) as counter:
        run()
    mn = shape["M"] * shape["N"]
    fwd_extra = mn if bias else 0
    bwd_extra = (mn if act != "none" else 0) + (mn if bias else 0)
    extra = {"fwd": fwd_extra, "infer": fwd_extra, "bwd": bwd_extra,
             "fwd_bwd": fwd_extra + bwd_extra}[mode]
    assert op.flops(shape, mode) - extra == counter.get_total_flops()


def _nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_bytes_match_tensors_touched(name, device):
    """bytes(): inputs read once and outputs written once, with the forward's saved state
    counted from what autograd actually packs (saved_tensors_hooks), not from the formula."""
    op = registry.discover()[name]
    act, bias = VARIANTS[name]
    shape = {"M": 21, "N": 13, "K": 9}
    inputs = op.make_inputs(shape, torch.float16, device, 0)
    x, w, b, g = inputs["x"], inputs["weight"], inputs.get("bias"), inputs["grad"]
    leaves = [t.requires_grad_() for t in (x, w, b) if t is not None]
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        y = linear(x, w, b, None if act == "none" else act)
    extra = [t for t in packed if all(t.data_ptr() != s.data_ptr() for s in (x, w, y))]
    saved = [t for t in packed if t.data_ptr() not in (x.data_ptr(), w.data_ptr())]
    grads = torch.autograd.grad(y, leaves, g)
    assert op.bytes(shape, torch.float16, "infer") == _nbytes(x, w, b, y)
    assert op.bytes(shape, torch.float16, "fwd") == _nbytes(x, w, b, y, *extra)
    assert op.bytes(shape, torch.float16, "bwd") == _nbytes(g, *saved, x, w, *grads)
    assert op.bytes(shape, torch.float16, "fwd_bwd") == (
        op.bytes(shape, torch.float16, "fwd") + op.bytes(shape, torch.float16, "bwd"))


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("mode", ["infer", "bwd"])
def test_unfused_bytes_match_eager_chain(name, mode, device):
    op = registry.discover()[name]
    shape = {"M": 21, "N": 13, "K": 9}
    run = op.impl("torch").build(op.make_inputs(shape, torch.float32, device, 0), mode)
    total, ops = aten_traffic(run)
    assert op.unfused_bytes(shape, torch.float32, mode) == total, ops


def test_spec_config_reports_the_kernels_of_the_mode(device, be):
    op = registry.discover()["linear"]
    shape = {"M": 70, "N": 20, "K": 9}
    impl = op.impl("triton")
    impl.build(op.make_inputs(shape, torch.float32, device, 0), "fwd_bwd")()
    assert set(impl.config("fwd_bwd")) == {"fwd", "bwd_dx", "bwd_dw"}
    impl.build(op.make_inputs(shape, torch.float32, device, 0), "infer")()
    config = impl.config("infer")
    assert set(config) == {"infer"}
    if not be.is_gpu:  # the interpreter's fixed config; on CUDA the autotuner chooses
        assert config["infer"]["BLOCK_M"] == 64
    # Every key names a compile target, with a config of that target's kernel.
    targets = {t.name: t for t in op.compile_targets(torch.float16)}
    assert {"fwd", "infer", "bwd_dx", "bwd_dw", "decode"} <= set(targets)
    assert config["infer"]["path"] == "tiled"
    assert set(config["infer"]) - {"num_warps", "num_stages", "path"} <= \
        set(insp.target_params(targets["infer"]))


def test_decode_sized_infer_takes_the_splitk_path():
    """M <= 16 without autograd goes to the split-K decode kernel and matches float64."""
    splitk = importlib.import_module("tritonlab.kernels._splitk")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 40, generator=g).to(torch.float16)  # M = 6 rows, leading dims
    w = (torch.randn(50, 40, generator=g) * 0.2).to(torch.float16)
    b = torch.randn(50, generator=g).to(torch.float16)
    before = splitk.LAUNCHES["partial"]
    with torch.inference_mode():
        y = linear(x, w, b, "gelu")
    assert splitk.LAUNCHES["partial"] == before + 1
    ref = torch.nn.functional.gelu(x.double() @ w.double().t() + b.double())
    assert (y.double() - ref).norm() / ref.norm() < 4 * reduction_tolerance(torch.float16, 40).rel_fro


def test_cli_check_linear():
    proc = run_cli("check", "linear", "--shape", "97x83x131", "--dtype", "float16", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["passed"]
    ran = [c for c in doc["cases"] if c["correct"] is not None]
    assert {(c["impl"], c["mode"]) for c in ran} >= {
        ("triton", m) for m in ("fwd", "bwd", "fwd_bwd", "infer")}


def test_cli_sweep_linear_fwd_bwd(tmp_path):
    """One fwd_bwd point through the real sweep: rows carry the SPEC's FLOPs and bytes and
    the config of each of the three kernels."""
    proc = run_cli("sweep", "linear", "--mode", "fwd_bwd", "--shape", "70x67x45", "--dtype",
                   "float32", "--out", str(tmp_path / "run"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["impl"]: r for r in json.loads(proc.stdout)["rows"]}
    assert set(rows) == {"triton", "torch"}
    op = registry.discover()["linear"]
    shape = {"M": 70, "N": 67, "K": 45}
    for r in rows.values():
        assert r["correct"] and r["error"] is None
        assert r["flops"] == op.flops(shape, "fwd_bwd")
        assert r["bytes"] == op.bytes(shape, torch.float32, "fwd_bwd")
    assert set(rows["triton"]["config"]) == {"fwd", "bwd_dx", "bwd_dw"}
    assert "torch" in rows["triton"]["speedup"]


# ---------------------------------------------------------------------------------- GPU lane

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act", ["gelu", "silu", "relu", None], ids=str)
def test_gradients_gpu(act, dtype, gpu):
    x, w, b = make_problem((3, 700), 1537, 1021, dtype, seed=5)
    x, w, b = (t.to(gpu) for t in (x, w, b))
    check_all(x, w, b, act, dtype)
    assert all(lin.KERNELS[k].last_config is not None for k in ("bwd_dx", "bwd_dw"))


@pytest.mark.gpu
def test_llm_shape_fwd_bwd_gpu(gpu):
    op = registry.discover()["linear"]
    shape = {"M": 2048, "N": 14336, "K": 4096}
    r = check.check_case(op, op.impl("triton"), "fwd_bwd", torch.bfloat16, shape, seed=0)
    assert r.correct, r.error
