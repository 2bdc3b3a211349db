"""The contrast's plan: which modes, impls and batches run, for how long, on which model;
the backend's defaults, and the checks that name the valid choices."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from tritonlab.errors import UsageError
from tritonlab.hw import counters as counters_mod
from tritonlab.kernels.fp8_matmul import MIN_CAPABILITY
from tritonlab.ops.contract import DTYPES
from tritonlab.workloads.fp8 import FP8
from tritonlab.workloads.model import SIZES

MODES = ("train", "infer")
IMPLS = ("triton", "torch")
# Ten updates of the NVML energy counter (100 ms each): the counter difference over a phase
# is then within about 10% whatever the phase's alignment with the updates.
MIN_PHASE_S = 1.0
# Warm-up steps at least: on a GPU the first step compiles and autotunes every kernel and the
# second shows it is done; the interpreter compiles nothing.
MIN_WARMUP_STEPS = {"cuda": 2, "interpreter": 1}

DEFAULTS = {
    # A GPU gets batches from one token (decode) to a large prefill-sized batch; the
    # interpreter (about 1 ms per Triton program) keeps to the tiny model and two batches.
    "cuda": dict(batches=(1, 16, 256, 4096), duration_s=10.0, model_size="base",
                 dtype="bfloat16", warmup_s=2.0, idle_s=5.0, cooldown_s=3.0),
    "interpreter": dict(batches=(1, 64), duration_s=2.0, model_size="tiny",
                        dtype="float32", warmup_s=0.2, idle_s=1.0, cooldown_s=0.2),
}
INTERPRETER_SIZES = ("tiny", "small")
# --dtype: one dtype for every phase, or fp8 for the inference phases (training stays in the
# backend's default: bfloat16 on a GPU).
DTYPE_CHOICES = (*DTYPES, FP8)
# What "fp8" means in the inference phases (tritonlab.workloads.fp8).
FP8_SCHEME = "e4m3, per-token activation scales, per-channel weight scales"


class PlanDtypes:
    """What both plans (feed-forward and layer) say about dtypes: ``dtype`` is the --dtype
    given (or the default), ``train_dtype`` the training phases' dtype where it differs
    (an fp8 plan: only inference runs in fp8), else None."""

    dtype: str
    train_dtype: str | None
    modes: tuple[str, ...]

    def to_dict(self) -> dict:
        """The plan as JSON-ready data (what the manifest records and a resume compares);
        ``train_dtype`` only when set, so that runs planned before fp8 still resume."""
        d = asdict(self)
        if d["train_dtype"] is None:
            del d["train_dtype"]
        return d

    def dtype_of(self, mode: str) -> str:
        """The dtype the phases of ``mode`` run in (``fp8``, or a name of DTYPES)."""
        return self.train_dtype if mode == "train" and self.train_dtype else self.dtype

    def precision(self) -> str:
        """The dtypes in words, for the headers: the dtype, or for an fp8 plan
        "inference fp8 (<scheme>), training bfloat16" (each part when its modes run)."""
        if self.dtype != FP8:
            return self.dtype
        parts = ([f"inference {FP8} ({FP8_SCHEME})"] if set(self.modes) - {"train"} else [])
        parts += [f"training {self.train_dtype}"] if "train" in self.modes else []
        return ", ".join(parts)


@dataclass(frozen=True)
class Plan(PlanDtypes):
    """What a feed-forward contrast runs: modes, impls and batches, the model size, dtypes
    (:class:`PlanDtypes`), timing and seed."""

    batches: tuple[int, ...]
    duration_s: float
    model_size: str
    impls: tuple[str, ...]
    modes: tuple[str, ...]
    dtype: str
    warmup_s: float
    idle_s: float
    cooldown_s: float
    interval_ms: float
    seed: int
    train_dtype: str | None = None

    @property
    def model(self) -> str:
        """The contrast's model: the feed-forward block (not a field, so the manifests of
        runs planned before the layer contrast existed still resume)."""
        return "ffn"

    def phases(self) -> list[PlannedPhase]:
        """Every measured phase in run order: mode, then batch, then impl."""
        return [PlannedPhase(m, i, b) for m in self.modes for b in self.batches
                for i in self.impls]


@dataclass(frozen=True)
class PlannedPhase:
    """One measured phase of a plan: (mode, impl, batch) and, for the layer contrast, the
    grid point's second axis ``second`` (train: seq; prefill: prompt; decode: context)."""

    mode: str
    impl: str
    batch: int
    second: int | None = None

    @property
    def name(self) -> str:
        """The phase's name: ``train/triton/b64`` (feed-forward block), or with the second
        axis ``train/triton/b1s16``, ``prefill/torch/b1p16``, ``decode/triton/b4c32``."""
        base = f"{self.mode}/{self.impl}/b{self.batch}"
        if self.second is None:
            return base
        return base + SECOND_AXIS[self.mode][0] + str(self.second)

    def point(self) -> dict:
        """The grid point as the rows record it: {"batch": ..} and its second axis."""
        if self.second is None:
            return {"batch": self.batch}
        return {"batch": self.batch, SECOND_AXIS[self.mode][1]: self.second}


# The layer regimes' second grid axis: the letter in a phase name, and its name in the rows.
SECOND_AXIS = {"train": ("s", "seq"), "prefill": ("p", "prompt"), "decode": ("c", "context")}


def choices(values: Sequence[str], valid: Sequence[str], unknown_what: str,
            valid_what: str) -> tuple[str, ...]:
    """``values`` without repeats (all of ``valid`` when empty), or a UsageError
    "<unknown_what> 'x'; <valid_what>: a, b" naming the valid ones."""
    values = tuple(dict.fromkeys(values)) or tuple(valid)
    unknown = [v for v in values if v not in valid]
    if unknown:
        raise UsageError(f"{unknown_what} {', '.join(map(repr, unknown))}; {valid_what}: "
                         f"{', '.join(valid)}")
    return values


def gpu_capability() -> tuple[int, int]:
    """The current GPU's compute capability (major, minor)."""
    return torch.cuda.get_device_capability()


def check_dtype(dtype: str, backend_name: str) -> str:
    """``dtype`` if the backend computes it correctly, else a UsageError naming the valid
    ones: bf16 is wrong under the interpreter, and fp8 needs tensor cores of compute
    capability 8.9 or newer on a GPU (the interpreter upcasts fp8 dots, so it runs there)."""
    if dtype not in DTYPE_CHOICES:
        raise UsageError(f"unsupported dtype {dtype!r}; valid dtypes: "
                         f"{', '.join(DTYPE_CHOICES)}")
    if backend_name != "cuda" and dtype == "bfloat16":
        raise UsageError("bfloat16 is wrong under the Triton interpreter (its bf16 dot returns "
                         "garbage); use float32 or float16, or run on a GPU")
    if backend_name == "cuda" and dtype == FP8 and gpu_capability() < MIN_CAPABILITY:
        cap = gpu_capability()
        raise UsageError(f"--dtype fp8 needs a GPU of compute capability "
                         f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} or newer (Ada, Hopper); "
                         f"this one is {cap[0]}.{cap[1]}: use one of "
                         f"{', '.join(d for d in DTYPE_CHOICES if d != FP8)}")
    return dtype


def train_dtype_for(dtype: str, defaults: dict, backend_name: str, modes: Sequence[str]
                    ) -> tuple[str | None, list[str]]:
    """The training phases' dtype when it differs from ``dtype``: for fp8 the backend's
    default (``defaults["dtype"]``: bfloat16 on a GPU, float32 under the interpreter, whose
    bf16 dots are wrong), since only inference is quantised; else None. Returns it and a
    warning when training runs under the interpreter, where it cannot run in bfloat16."""
    if dtype != FP8:
        return None, []
    train = defaults["dtype"]
    if backend_name == "cuda" or "train" not in modes:
        return train, []
    return train, [f"--dtype fp8: the inference phases run in fp8 (the rest of inference in "
                   f"float16), and training, which stays bfloat16 on a GPU, runs in {train} "
                   f"here, the interpreter's default (its bf16 dots are wrong)"]


def torch_dtype(name: str) -> torch.dtype | str:
    """What the workloads take for a dtype name: a torch.dtype, or "fp8" as it is (the
    inference workloads' fp8 path)."""
    return name if name == FP8 else DTYPES[name]


def make_plan(backend_name: str, *, batches: Sequence[int] | None = None,
              duration_s: float | None = None, model_size: str | None = None,
              impls: Sequence[str] = IMPLS, modes: Sequence[str] = MODES,
              dtype: str | None = None, warmup_s: float | None = None,
              idle_s: float | None = None, cooldown_s: float | None = None,
              interval_ms: float = 1e3 * counters_mod.DEFAULT_INTERVAL_S,
              seed: int = 0) -> tuple[Plan, list[str]]:
    """Validate the options (UsageError naming the valid choices) and fill the backend's
    defaults. Returns the plan and warnings (a duration lengthened to the minimum)."""
    d = DEFAULTS["cuda" if backend_name == "cuda" else "interpreter"]
    batches = tuple(dict.fromkeys(batches)) if batches else d["batches"]
    bad = [b for b in batches if not isinstance(b, int) or isinstance(b, bool) or b <= 0]
    if bad:
        raise UsageError(f"batch sizes must be positive integers (tokens per step); got "
                         f"{', '.join(map(str, bad))}")
    model_size = model_size or d["model_size"]
    if model_size not in SIZES:
        raise UsageError(f"unknown model size {model_size!r}; valid sizes: {', '.join(SIZES)}")
    if backend_name != "cuda" and model_size not in INTERPRETER_SIZES:
        raise UsageError(f"model size {model_size!r} needs a GPU; under the interpreter use "
                         f"one of: {', '.join(INTERPRETER_SIZES)}")
    impls = choices(impls, IMPLS, "unknown impl", "valid impls")
    modes = choices(modes, MODES, "unknown mode", "valid modes")
    dtype = check_dtype(dtype or d["dtype"], backend_name)
    train_dtype, dtype_warnings = train_dtype_for(dtype, d, backend_name, modes)
    timing, warnings = timing_options(d, duration_s=duration_s, warmup_s=warmup_s,
                                      idle_s=idle_s, cooldown_s=cooldown_s,
                                      interval_ms=interval_ms)
    plan = Plan(batches=batches, model_size=model_size, impls=impls, modes=modes,
                dtype=dtype, seed=seed, train_dtype=train_dtype, **timing)
    return plan, dtype_warnings + warnings


def timing_options(defaults: dict, *, duration_s: float | None, warmup_s: float | None,
                   idle_s: float | None, cooldown_s: float | None, interval_ms: float
                   ) -> tuple[dict, list[str]]:
    """The timing of a contrast (either model): duration, warm-up, idle baseline, cool-down
    and sampling interval, validated (UsageError) with ``defaults`` for those left None.
    Returns the Plan fields (duration_s, warmup_s, idle_s, cooldown_s, interval_ms) and
    warnings (a duration or idle baseline lengthened to the minimum)."""
    warnings: list[str] = []
    duration_s = defaults["duration_s"] if duration_s is None else float(duration_s)
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise UsageError(f"--duration must be positive, got {duration_s} s (minimum "
                         f"{MIN_PHASE_S} s per phase)")
    if duration_s < MIN_PHASE_S:
        warnings.append(f"a {duration_s} s phase is too short for the energy counter (it "
                        f"moves every {counters_mod.NVML_ENERGY_UPDATE_S * 1e3:.0f} ms); "
                        f"lengthened to the minimum of {MIN_PHASE_S} s")
        duration_s = MIN_PHASE_S
    timing = {}
    for name, value in (("warmup", warmup_s), ("idle", idle_s), ("cooldown", cooldown_s)):
        value = defaults[f"{name}_s"] if value is None else float(value)
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(f"--{name} must be >= 0 seconds and finite, got {value}")
        timing[name] = value
    if 0 < timing["idle"] < MIN_PHASE_S:
        warnings.append(f"an idle baseline of {timing['idle']} s is too short for the energy "
                        f"counter; lengthened to {MIN_PHASE_S} s")
        timing["idle"] = MIN_PHASE_S
    if not interval_ms > 0:
        raise UsageError(f"--interval-ms must be positive, got {interval_ms}")
    return {"duration_s": duration_s, "warmup_s": timing["warmup"], "idle_s": timing["idle"],
            "cooldown_s": timing["cooldown"], "interval_ms": float(interval_ms)}, warnings
