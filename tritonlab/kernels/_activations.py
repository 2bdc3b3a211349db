"""Activation functions and their derivatives as Triton device functions, for kernel
epilogues. ``ACTIVATION`` is a constexpr string, so each kernel specialisation contains only
the math it uses. All math is done in fp32 (the caller passes the fp32 accumulator).

Only functions that work both compiled and under the interpreter are used: sigmoid and tanh
are written with ``tl.exp`` because libdevice (``tl.extra.cuda``) is not available there, and
because the interpreter (triton 3.9) fails on a ``tl.sigmoid`` reached through two levels of
``@triton.jit`` helpers ("Cannot call @triton.jit'd outside of the scope of a kernel").
"""

import triton
import triton.language as tl

ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")

# tl.constexpr: compiled kernels may read a global only if it is one (plain floats run
# under the interpreter but fail to compile with "Cannot access global variable"). Under
# the interpreter a constexpr must not be the left operand of a tensor op (it wraps the
# result instead of computing it), hence `x * C`, never `C * x`, below.
_SQRT1_2 = tl.constexpr(0.7071067811865476)
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
_GELU_TANH_C = tl.constexpr(0.044715)


def normalize_activation(activation: str | None) -> str:
    """None -> "none"; anything outside ACTIVATIONS raises ValueError naming the choices."""
    name = "none" if activation is None else activation
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; expected one of: None, "
                         + ", ".join(repr(a) for a in ACTIVATIONS[1:]))
    return name


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # exp(2x) overflows to inf for large x, which still gives exactly 1.
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def apply_activation(x, ACTIVATION: tl.constexpr):
    """act(x) elementwise on an fp32 tile."""
    if ACTIVATION == "relu":
        x = tl.maximum(x, 0.0)
    elif ACTIVATION == "gelu":
        x = 0.5 * x * (1.0 + tl.math.erf(x * _SQRT1_2))
    elif ACTIVATION == "gelu_tanh":
        x = 0.5 * x * (1.0 + _tanh((x + x * x * x * _GELU_TANH_C) * _SQRT_2_OVER_PI))
    elif ACTIVATION == "silu":
        x = x * _sigmoid(x)
    return x


@triton.jit
def activation_grad(x, ACTIVATION: tl.constexpr):
    """d act(x) / dx elementwise on an fp32 tile of pre-activations ``x``."""
    if ACTIVATION == "relu":
        d = tl.where(x > 0.0, 1.0, 0.0)
    elif ACTIVATION == "gelu":
        d = 0.5 * (1.0 + tl.math.erf(x * _SQRT1_2)) + x * _INV_SQRT_2PI * tl.exp(-0.5 * x * x)
    elif ACTIVATION == "gelu_tanh":
        t = _tanh((x + x * x * x * _GELU_TANH_C) * _SQRT_2_OVER_PI)
        d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (
            1.0 + x * x * (3.0 * _GELU_TANH_C))
    elif ACTIVATION == "silu":
        s = _sigmoid(x)
        d = s * (1.0 + x * (1.0 - s))
    else:
        d = tl.full(x.shape, 1.0, tl.float32)
    return d

