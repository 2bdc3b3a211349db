"""Autograd honesty of every public op of ``tritonlab.kernels``: with an input requiring grad
and grad mode on, an op either returns an output with a grad_fn whose gradients match float64
torch autograd, or raises a clear error; it never returns an output that a backward silently
treats as a constant. Also second-order gradients (``create_graph=True``) of ``linear`` /
``Linear`` and ``matmul``: right where supported, a RuntimeError where not."""

from __future__ import annotations

import importlib

import pytest
import torch
from helpers import DEVICE, assert_close_to_reference

import tritonlab.kernels as kernels
from tritonlab.kernels import Linear, linear, matmul
from tritonlab.reference import eager_attention, eager_linear

# The module, not the function of the same name that tritonlab.kernels exports.
matmul_module = importlib.import_module("tritonlab.kernels.matmul")

# Odd on purpose: every edge mask of every tile is exercised.
M, N, K = 37, 29, 41
DTYPE = torch.float32
EPS = 1e-5


def _randn(*shape, seed, scale=1.0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(device=DEVICE, dtype=DTYPE)


def _inputs(**shapes):
    """Fresh float32 tensors on the backend's device, one seed per name; weights are scaled
    by K^-1/2 so every output has unit scale."""
    return {name: _randn(*shape, seed=i, scale=K ** -0.5 if name.startswith("w") else 1.0)
            for i, (name, shape) in enumerate(shapes.items())}


def _linear_module(t):
    """Linear+GELU whose parameters are copies of t["w"] and t["b"]: its output and the
    tensors whose gradients stand for x, w and b."""
    layer = Linear(K, N, activation="gelu", device=DEVICE, dtype=DTYPE)
    with torch.no_grad():
        layer.weight.copy_(t["w"])
        layer.bias.copy_(t["b"])
    return layer(t["x"]), [t["x"], layer.weight, layer.bias]


def _all(out, t):
    return out, list(t.values())


# Every name in tritonlab.kernels.__all__ declares its behaviour with an input requiring grad:
#   ("grad", inputs, run, reference): differentiable; run(leaves) returns the lab's output and
#       the tensors standing for the inputs (in order), reference(float64 leaves) the eager
#       torch chain; the gradients of every input are compared.
#   ("raises", inputs, run): an inference kernel; with any one input requiring grad a
#       RuntimeError naming the op and that input comes before any output exists, and the
#       same call works under torch.no_grad() and torch.inference_mode().
BEHAVIOUR = {
    "Linear": ("grad", dict(x=(M, K), w=(N, K), b=(N,)), _linear_module,
               lambda t: eager_linear(t["x"], t["w"], t["b"], "gelu")),
    "linear": ("grad", dict(x=(M, K), w=(N, K), b=(N,)),
               lambda t: _all(linear(t["x"], t["w"], t["b"], "silu", input_precision="ieee"), t),
               lambda t: eager_linear(t["x"], t["w"], t["b"], "silu")),
    "matmul": ("grad", dict(a=(M, K), b=(K, N)),
               lambda t: _all(matmul(t["a"], t["b"], input_precision="ieee"), t),
               lambda t: t["a"] @ t["b"]),
    "splitk_matmul": ("raises", dict(a=(5, K), b=(K, N), bias=(N,)),
                      lambda t: kernels.splitk_matmul(t["a"], t["b"], bias=t["bias"])),
    "gated_mlp": ("raises", dict(x=(M, K), w_gate=(N, K), w_up=(N, K), norm_weight=(K,)),
                  lambda t: kernels.gated_mlp(t["x"], t["w_gate"], t["w_up"],
                                              norm_weight=t["norm_weight"])),
    "attention": ("grad", dict(q=(1, 4, N, 32), k=(1, 2, M, 32), v=(1, 2, M, 32)),
                  lambda t: _all(kernels.attention(t["q"], t["k"], t["v"], causal=True), t),
                  lambda t: eager_attention(t["q"], t["k"], t["v"], True)),
    "decode_attention": ("raises", dict(q=(2, 4, 32), k_cache=(2, M, 2, 32),
                                        v_cache=(2, M, 2, 32)),
                         lambda t: kernels.decode_attention(
                             t["q"], t["k_cache"], t["v_cache"],
                             torch.tensor([M, 5], dtype=torch.int32, device=DEVICE))),
    # fp8 operands as torch._scaled_mm takes them: K and N multiples of 16, b column-major.
    "fp8_matmul": ("raises", dict(a=(M, 48), b=(32, 48), scale_a=(M, 1), scale_b=(1, 32)),
                   lambda t: kernels.fp8_matmul(t["a"].to(torch.float8_e4m3fn),
                                                t["b"].to(torch.float8_e4m3fn).t(),
                                                t["scale_a"].abs(), t["scale_b"].abs(),
                                                out_dtype=torch.float32)),
    "quantize_fp8": ("raises", dict(x=(M, K)), lambda t: kernels.quantize_fp8(t["x"])[0].float()),
    "rmsnorm_linear": ("raises", dict(x=(M, K), norm_weight=(K,), weight=(N, K), bias=(N,)),
                       lambda t: kernels.rmsnorm_linear(t["x"], t["norm_weight"], t["weight"],
                                                        EPS, bias=t["bias"])),
}


def test_every_public_op_declares_its_autograd_behaviour():
    assert set(kernels.__all__) == set(BEHAVIOUR), \
        "declare the autograd behaviour of each public op of tritonlab.kernels in BEHAVIOUR"


@pytest.mark.parametrize("name", kernels.__all__)
def test_public_op_gradients_match_float64_autograd_or_raise(name):
    if name not in BEHAVIOUR:
        pytest.fail(f"{name} is exported by tritonlab.kernels but declares no autograd "
                    f"behaviour in BEHAVIOUR")
    kind, shapes, run, *reference = BEHAVIOUR[name]
    tensors = _inputs(**shapes)
    if kind == "raises":
        for needs_grad in tensors:
            t = {k: v.detach().requires_grad_(k == needs_grad) for k, v in tensors.items()}
            with pytest.raises(RuntimeError, match=rf"{name} is an inference kernel.*"
                                                   rf"{needs_grad} requires grad.*no_grad"):
                run(t)
        t = {k: v.detach().requires_grad_() for k, v in tensors.items()}
        with torch.no_grad():
            assert run(t).grad_fn is None
        with torch.inference_mode():
            assert torch.isfinite(run(t)).all()
        return

    out, targets = run({k: v.detach().requires_grad_() for k, v in tensors.items()})
    assert out.grad_fn is not None, f"{name}'s output has no grad_fn"
    ref_leaves = {k: v.detach().double().requires_grad_() for k, v in tensors.items()}
    ref = reference[0](ref_leaves)
    assert_close_to_reference(out, ref, K, what=f"{name} output")
    probe = _randn(*out.shape, seed=99)
    grads = torch.autograd.grad(out, targets, probe)
    ref_grads = torch.autograd.grad(ref, list(ref_leaves.values()), probe.double())
    for what, g, r in zip(tensors, grads, ref_grads):
        assert_close_to_reference(g, r, max(M, N, K), what=f"{name} d{what}")


# ------------------------------------------------------------------------- second order

def _penalty_loss(y, x, w, *, create_graph=True):
    """A gradient-penalty loss whose output gradient depends on the inputs (G = y), so the
    second-order terms through G, x and W are all exercised:
    L = |y|^2 / 2 + |dL0/dx|^2 + |dL0/dW|^2 with L0 = |y|^2 / 2."""
    l0 = 0.5 * y.pow(2).sum()
    gx, gw = torch.autograd.grad(l0, (x, w), create_graph=create_graph)
    return l0 + gx.pow(2).sum() + gw.pow(2).sum()


def _linear_case():
    t = _inputs(x=(3, M // 3, K), w=(N, K), b=(N,))
    return t["x"], t["w"], t["b"]


@pytest.mark.parametrize("activation", [None, "relu"])
def test_linear_module_second_order_gradients_match_float64_autograd(activation):
    x, w, b = _linear_case()
    layer = Linear(K, N, activation=activation, device=DEVICE, dtype=DTYPE)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    x = x.requires_grad_()
    loss = _penalty_loss(layer(x), x, layer.weight)
    grads = torch.autograd.grad(loss, (x, layer.weight, layer.bias))

    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    ref_loss = _penalty_loss(eager_linear(x64, w64, b64, activation), x64, w64)
    ref_grads = torch.autograd.grad(ref_loss, (x64, w64, b64))
    for what, g, r in zip(("dx", "dW", "db"), grads, ref_grads):
        assert_close_to_reference(g, r, max(M, N, K), scale=4.0,
                                  what=f"{activation} second-order {what}")


def test_linear_second_order_gradients_are_differentiable_again():
    """The create_graph backward is built from linear itself, so a third derivative exists
    (here d/dW of a penalty on the gradient of a penalty), and it matches float64."""
    x, w, _ = _linear_case()
    x64, w64 = (t.double().requires_grad_() for t in (x, w))
    x, w = x.requires_grad_(), w.requires_grad_()

    def third(fn, x, w):
        loss = _penalty_loss(fn(x, w), x, w)
        (gx,) = torch.autograd.grad(loss, x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), w)[0]

    got = third(lambda x, w: linear(x, w, input_precision="ieee"), x, w)
    ref = third(lambda x, w: x @ w.t(), x64, w64)
    assert_close_to_reference(got, ref, max(M, N, K), scale=8.0, what="third-order dW")


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("wrt", ["x", "weight", "bias"])
def test_linear_module_second_order_raises_where_unsupported(activation, wrt):
    """GELU and SiLU: a backward with create_graph=True raises before returning any
    gradient, whichever single input requires grad (torch's once_differentiable would have
    returned gradients with requires_grad=False here, since the incoming gradient does not
    require grad, and a gradient penalty built on them would silently lose its terms)."""
    x, w, b = _linear_case()
    layer = Linear(K, N, activation=activation, device=DEVICE, dtype=DTYPE)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    inputs = {"x": x, "weight": layer.weight, "bias": layer.bias}
    for name, t in inputs.items():
        t.requires_grad_(name == wrt)
    y = layer(x)
    with pytest.raises(RuntimeError, match=f"activation '{activation}' has no double backward"):
        torch.autograd.grad(y.pow(2).sum(), inputs[wrt], create_graph=True)
    # Without create_graph the same backward is the ordinary first-order one.
    (g,) = torch.autograd.grad(y.pow(2).sum(), inputs[wrt])
    assert g.shape == inputs[wrt].shape and torch.isfinite(g).all()


# ------------------------------------------------------------------------------- matmul

@pytest.mark.parametrize("m", [5, M], ids=["decode", "tiled"])
def test_matmul_second_order_gradients_match_float64_autograd(m):
    t = _inputs(a=(m, K), b=(K, N))
    a, b = (v.requires_grad_() for v in t.values())
    a64, b64 = (v.detach().double().requires_grad_() for v in t.values())

    def loss(fn, a, b):
        c = fn(a, b)
        # c.sum() hands the backward a broadcast (stride-0) gradient.
        ga, gb = torch.autograd.grad(c.sum() + 0.5 * c.pow(2).sum(), (a, b), create_graph=True)
        return c.sum() + ga.pow(2).sum() + gb.pow(2).sum()

    grads = torch.autograd.grad(loss(lambda a, b: matmul(a, b, input_precision="ieee"), a, b),
                                (a, b))
    ref = torch.autograd.grad(loss(torch.matmul, a64, b64), (a64, b64))
    for what, g, r in zip(("dA", "dB"), grads, ref):
        assert_close_to_reference(g, r, max(m, N, K), scale=4.0, what=f"second-order {what}")


@pytest.mark.parametrize("needs", ["a", "b"])
def test_matmul_saves_and_computes_only_the_needed_gradients(needs, monkeypatch):
    t = _inputs(a=(M, K), b=(K, N))
    t[needs].requires_grad_()
    c = matmul(t["a"], t["b"])
    saved_a, saved_b = c.grad_fn.saved_tensors
    assert (saved_a is None, saved_b is None) == (needs == "a", needs == "b")
    launches = []
    real = matmul_module._launch
    monkeypatch.setattr(matmul_module, "_launch", lambda *a: launches.append(a) or real(*a))
    c.sum().backward()
    assert len(launches) == 1, "the backward ran a GEMM for a gradient nobody asked for"
    other = "b" if needs == "a" else "a"
    assert t[needs].grad is not None and t[other].grad is None


def test_matmul_out_refuses_autograd():
    t = _inputs(a=(M, K), b=(K, N))
    out = torch.empty(M, N, device=DEVICE, dtype=DTYPE)
    a = t["a"].requires_grad_()
    with pytest.raises(RuntimeError, match=r"matmul\(out=...\) does not support autograd"):
        matmul(a, t["b"], out=out)
    with torch.no_grad():
        assert matmul(a, t["b"], out=out) is out
