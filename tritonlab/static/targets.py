"""What is compiled: an op's :class:`~tritonlab.kernels.tuning.CompileTarget`\\ s, their launch
configs per architecture, the configs a user gives on the command line, and the
specialisation of a kernel's arguments for one launch (the signature, constants and
divisibility hints Triton's JIT would derive from real arguments)."""

from __future__ import annotations

import inspect as pyinspect
from collections.abc import Iterable, Mapping

import torch

from tritonlab.errors import UsageError
from tritonlab.kernels.tuning import CompileTarget, config_dict
from tritonlab.ops.contract import OpSpec
from tritonlab.static.arch import ArchLimits
from tritonlab.static.compile import jit_function

OPTION_KEYS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
_TORCH_TO_TRITON = {
    torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
    torch.int8: "i8", torch.int16: "i16", torch.int32: "i32", torch.int64: "i64",
    torch.uint8: "u8", torch.bool: "i1",
    torch.float8_e4m3fn: "fp8e4nv", torch.float8_e5m2: "fp8e5",
}


# ----------------------------------------------------------------------------- op targets

def op_targets(op: OpSpec, dtype: torch.dtype) -> list[CompileTarget]:
    """The op's compile targets for ``dtype`` (empty when it declares none)."""
    targets = list(op.compile_targets(dtype))
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"{op.name}: compile target names repeat: {names}")
    return targets


def inspectable(op: OpSpec) -> str | None:
    """None when ``op`` has kernels to inspect, else why not."""
    if not op.triton_impls:
        return f"op {op.name!r} has no Triton implementation"
    if not any(op_targets(op, d) for d in op.dtypes):
        return (f"op {op.name!r} declares no compile_targets (see docs/inspect.md, "
                f"'how to make your kernel inspectable')")
    return None


def target_configs(target: CompileTarget, arch: ArchLimits) -> list[dict]:
    """The target's launch configs for ``arch``, as flat dicts."""
    configs = target.configs(arch.capability) if callable(target.configs) else target.configs
    return [config_dict(c) for c in configs]


# ------------------------------------------------------------------------ specialisation

def _kernel_params(kernel) -> list[tuple[str, bool, object]]:
    """(name, is_constexpr, default or inspect.Parameter.empty) for each kernel argument."""
    out = []
    for p in pyinspect.signature(jit_function(kernel).fn).parameters.values():
        ann = p.annotation
        is_const = ann is not pyinspect.Parameter.empty and "constexpr" in (
            ann if isinstance(ann, str) else getattr(ann, "__name__", repr(ann)))
        out.append((p.name, is_const, p.default))
    return out


def target_params(target: CompileTarget) -> list[str]:
    """The names of the target kernel's arguments, in order."""
    return [p for p, _, _ in _kernel_params(target.kernel)]


def _no_specialize(kernel) -> tuple[set[str], set[str]]:
    """Arguments the kernel asks the JIT not to specialise (at all / on alignment)."""
    jit = jit_function(kernel)
    names = [p for p, _, _ in _kernel_params(kernel)]
    kwargs = getattr(jit, "kwargs", None) or {}

    def names_of(attr):
        raw = getattr(jit, attr, None) or kwargs.get(attr) or ()
        return {names[x] if isinstance(x, int) else x for x in raw}

    return names_of("do_not_specialize"), names_of("do_not_specialize_on_alignment")


def _scalar_type(value, specialize: bool, align: bool) -> tuple[str, bool]:
    """(Triton type or "constexpr", divisible by 16) of a scalar launch argument, by the rules
    of Triton's JIT: 1 and None become constants, ints divisible by 16 are marked so."""
    if value is None:
        return "constexpr", False
    if isinstance(value, bool):
        return "u1", False
    if isinstance(value, int):
        if specialize and value == 1:
            return "constexpr", False
        if -(2**31) <= value < 2**31:
            ty = "i32"
        elif 2**63 <= value < 2**64:
            ty = "u64"
        else:
            ty = "i64"
        return ty, specialize and align and value % 16 == 0
    if isinstance(value, float):
        return "fp32", False
    raise TypeError(f"cannot infer a Triton type for {value!r}")


def specialise(target: CompileTarget, config: Mapping) -> dict:
    """The signature, constexprs, divisible arguments and compile options of a launch
    with ``config``; ValueError when an argument has no value."""
    params = _kernel_params(target.kernel)
    known = {p for p, _, _ in params}
    unknown = sorted((set(target.values) | set(config)) - known - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"{target.kernel_name} has no argument(s) {', '.join(unknown)}; "
                         f"its arguments: {', '.join(p for p, _, _ in params)}")
    args = {**target.values, **{k: v for k, v in config.items() if k not in OPTION_KEYS}}
    for name, rule in target.heuristics.items():
        args[name] = rule(args)
    no_spec, no_align = _no_specialize(target.kernel)
    signature, constexprs, divisible, missing = {}, {}, [], []
    for name, is_const, default in params:
        value = args.get(name, default)
        if value is pyinspect.Parameter.empty:
            if name.endswith("_ptr"):
                value = target.dtype
            else:
                missing.append(name)
                continue
        if is_const:
            signature[name] = "constexpr"
            constexprs[name] = value
        elif isinstance(value, torch.dtype):
            signature[name] = "*" + _TORCH_TO_TRITON[value]
            if name not in no_spec and name not in no_align:
                divisible.append(name)
        else:
            ty, div = _scalar_type(value, name not in no_spec, name not in no_align)
            signature[name] = ty
            if ty == "constexpr":
                constexprs[name] = value
            if div:
                divisible.append(name)
    if missing:
        raise ValueError(f"{target.kernel_name}: no value for argument(s) "
                         f"{', '.join(missing)} (give them in CompileTarget.values or "
                         f"the config)")
    options = {k: config[k] for k in OPTION_KEYS if k in config}
    return {"signature": signature, "constexprs": constexprs, "divisible": divisible,
            "options": options}


# ------------------------------------------------------------------------------ configs

def _parse_value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def parse_config(text: str) -> dict:
    """``"BLOCK_M=128,BLOCK_N=128,BLOCK_K=64,num_warps=8,num_stages=3"`` -> a dict.

    Values are ints, floats, true/false, none, or else strings. Keys left out are taken from
    the kernel's first (default) config for the architecture.
    """
    out = {}
    for part in (p for p in text.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise UsageError(f"malformed config {text!r}: expected KEY=VALUE[,KEY=VALUE...], "
                             f"e.g. BLOCK_M=128,BLOCK_N=128,BLOCK_K=64,num_warps=8,num_stages=3")
        out[key.strip()] = _parse_value(value)
    if not out:
        raise UsageError(f"empty config {text!r}")
    return out


def check_config_keys(config: Mapping, targets: Iterable[CompileTarget]) -> None:
    """UsageError when a key of a user config is an argument of none of ``targets``."""
    valid = set(OPTION_KEYS)
    for t in targets:
        valid |= {p for p, is_const, _ in _kernel_params(t.kernel) if is_const}
    unknown = sorted(set(config) - valid)
    if unknown:
        raise UsageError(f"config key(s) {', '.join(unknown)} match no kernel argument; valid "
                         f"keys: {', '.join(sorted(valid))}")


def applies(config: Mapping, target: CompileTarget) -> bool:
    """Whether ``target``'s kernel takes every key of ``config`` (launch options aside)."""
    names = set(target_params(target))
    return all(k in names for k in config if k not in OPTION_KEYS)


def format_config(config: Mapping) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items())


def config_slug(config: Mapping) -> str:
    """A config as a directory name: ``BLOCK_M128-BLOCK_N256-...-w8-s3``."""
    short = {"num_warps": "w", "num_stages": "s", "num_ctas": "ctas", "maxnreg": "maxnreg"}
    return "-".join(f"{short.get(k, k)}{v}" for k, v in config.items())


def short_config(config: Mapping) -> str:
    """``BLOCK_M=128,...,num_warps=8`` -> ``BM128 BN256 BK64 GM8 w8 s3`` for tables."""
    def short(key):
        if key in ("num_warps", "num_stages", "num_ctas"):
            return {"num_warps": "w", "num_stages": "s", "num_ctas": "ctas"}[key]
        return "".join(part[:1] for part in key.split("_")) if "_" in key else key
    return " ".join(f"{short(k)}{v}" for k, v in config.items())
