"""How the lab's kernels are launched and described: :class:`TunedKernel` (autotuning on
CUDA, one fixed config under the interpreter), :class:`LastConfig` (the config an op's last
call ran), the autotuning log the sweep records, and :class:`CompileTarget`, the description
of one kernel launch that static inspection compiles without running it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import triton
from triton.compiler.errors import CompileTimeAssertionFailure
from triton.runtime.errors import OutOfResources, PTXASError

from tritonlab import backend

# Under the interpreter each program costs about 1 ms of Python, whatever its size, so big
# tiles keep the number of programs (and the test time) small.
INTERPRETER_CONFIG = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8},
                                   num_stages=1, num_warps=4)


def config_dict(config: triton.Config | Mapping | None) -> dict | None:
    """A ``triton.Config`` (or a dict already) as the flat dict the lab uses everywhere: the
    meta-parameters plus num_warps and num_stages (num_ctas / maxnreg when set)."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    out = {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}
    if getattr(config, "num_ctas", 1) not in (None, 1):
        out["num_ctas"] = config.num_ctas
    if getattr(config, "maxnreg", None) is not None:
        out["maxnreg"] = config.maxnreg
    return out


# What Triton's autotuner treats as "this config cannot run here" (it times it as infinite).
_CANNOT_RUN = (OutOfResources, CompileTimeAssertionFailure, PTXASError)


def hopper_class(capability: tuple[int, int]) -> bool:
    """Whether a GPU of compute ``capability`` gets the large-tile configs: the data-centre
    SMs of capability 9.x and 10.x (H100/H200, B200) with 227 KB of shared memory per block,
    TMA and an MMA fed from shared memory (wgmma on 9.x, tcgen05 on 10.x). Consumer Blackwell
    (12.x) is newer but has Ada's 99 KB and mma.sync, so it gets the Ampere/Ada configs: the
    persistent GEMM's Hopper default needs 129 KB there (``tritonlab inspect matmul --arch
    sm_120a --config BLOCK_M=128,BLOCK_N=256,BLOCK_K=64,num_warps=8,num_stages=3``)."""
    return capability[0] in (9, 10)


def smem_budget(capability: tuple[int, int]) -> int:
    """The shared memory per block (bytes) a config may plan for, with headroom for the
    compiler's own buffers: 200 KB of the Hopper class's 227, 160 KB of the 163 of sm_80 and
    sm_87, 96 KB of the 99 of every other SM (sm_86, sm_89, sm_120)."""
    if hopper_class(capability):
        return 200 * 1024
    if tuple(capability) in ((8, 0), (8, 7)):
        return 160 * 1024
    return 96 * 1024


def autotune_enabled() -> bool:
    return os.environ.get("TRITONLAB_AUTOTUNE", "1") != "0"


# One entry per autotuning run of any TunedKernel, oldest first: {"kernel", "config" (the
# winner), "timings" (ms per config)}. The sweep reads the entries a point's warm-up added,
# so the timings it records are those of the tuning that chose that point's config (a
# tuner's own ``configs_timings`` keeps the last tuning of any key), and a growing log tells
# it that tuning is still going on.
TUNING_LOG: list[dict] = []


class TunedKernel:
    """Launches a ``@triton.jit`` kernel with the right config for the backend.

    On CUDA the kernel is wrapped (lazily, on the first call, because the config list depends
    on the GPU's compute capability) in ``triton.autotune`` keyed on ``key``; with
    ``TRITONLAB_AUTOTUNE=0`` the list's first config that launches on this GPU is used
    without tuning (:meth:`_launch_first_fitting`). Under the
    interpreter, where multi-config autotuning cannot run, ``interpreter_config`` is used.
    ``heuristics`` maps a constexpr name to a function of the launch arguments (as in
    ``triton.heuristics``), evaluated after the config is chosen.
    """

    def __init__(self, kernel, *, key: Sequence[str],
                 configs: Callable[[tuple[int, int], torch.dtype], list[triton.Config]],
                 interpreter_config: triton.Config = INTERPRETER_CONFIG,
                 heuristics: dict[str, Callable[[dict], object]] | None = None):
        self.kernel = kernel
        self.key = list(key)
        self.configs = configs
        self.interpreter_config = interpreter_config
        self.heuristics = heuristics or {}
        self._tuners: dict[tuple, object] = {}
        self._fitting: dict[tuple, int] = {}
        self.last_config: dict | None = None
        self.last_timings: dict[str, float] | None = None
        self._logged_timings: object = None

    @property
    def __name__(self) -> str:
        return self.kernel.fn.__name__ if hasattr(self.kernel, "fn") else str(self.kernel)

    def compile_target(self, name: str, dtype: torch.dtype, values: dict, **kwargs):
        """This kernel, its per-architecture config list and its heuristics as a
        :class:`CompileTarget` launched with ``values`` (a typical launch's arguments)."""
        return CompileTarget(name, self.kernel, dtype, values,
                             configs=lambda capability: self.configs(capability, dtype),
                             heuristics=self.heuristics, **kwargs)

    def _runner(self, dtype: torch.dtype):
        inner = triton.heuristics(self.heuristics)(self.kernel) if self.heuristics else self.kernel
        if not backend.current().is_gpu:
            return None, inner
        cap = torch.cuda.get_device_capability()
        tag = (cap, dtype, autotune_enabled())
        if tag not in self._tuners:
            configs = self.configs(cap, dtype)
            self._tuners[tag] = (
                triton.autotune(configs=configs, key=self.key)(inner) if autotune_enabled()
                else [triton.autotune(configs=[c], key=self.key)(inner) for c in configs])
        return self._tuners[tag], inner

    def _launch_first_fitting(self, tuners: Sequence, grid: Callable[[dict], tuple],
                              args: tuple, kwargs: dict):
        """Autotuning off: launch with the first config of the list that fits this GPU, and
        return its tuner. A config that asks for more shared memory (or registers) than the
        SM has raises OutOfResources when it is loaded, before anything runs, so the next one
        is tried: the lists are sized for a class of GPU (sm_80's 163 KB, Hopper's 227 KB),
        and a smaller SM of the class (Ada's 99 KB) or a wider dtype (fp32) can overflow the
        first. Errors Triton's autotuner takes for "this config cannot run" (a ptxas
        failure, a compile-time assertion) are skipped the same way. The index that fitted
        is remembered per launch key and constexpr switch (each starts from the top, so the
        config a launch gets does not depend on what ran before it)."""
        bound = {**dict(zip(self.kernel.arg_names, args)), **kwargs}
        switches = tuple(sorted((k, v) for k, v in kwargs.items()
                                if isinstance(v, (bool, int, str))))
        key = (id(tuners), *(bound.get(k) for k in self.key), switches)
        i = self._fitting.get(key, 0)
        while True:
            try:
                tuners[i][grid](*args, **kwargs)
                break
            except _CANNOT_RUN:
                if i == len(tuners) - 1:
                    raise
                i += 1
        self._fitting[key] = i
        return tuners[i]

    def launch(self, grid: Callable[[dict], tuple], dtype: torch.dtype, *args, **kwargs) -> None:
        """Run the kernel on ``grid`` (a function of the chosen meta-parameters)."""
        tuner, inner = self._runner(dtype)
        if tuner is None:
            cfg = self.interpreter_config
            inner[grid(cfg.kwargs)](*args, **kwargs, **cfg.kwargs,
                                    num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            self.last_config = config_dict(cfg)
            self.last_timings = None
            return
        if isinstance(tuner, list):
            tuner = self._launch_first_fitting(tuner, grid, args, kwargs)
        else:
            tuner[grid](*args, **kwargs)
        self.last_config = config_dict(tuner.best_config)
        timings = getattr(tuner, "configs_timings", None)
        self.last_timings = ({str(config_dict(c)): float(t[0] if isinstance(t, list) else t)
                              for c, t in timings.items()} if timings else None)
        if timings and timings is not self._logged_timings:
            self._logged_timings = timings
            TUNING_LOG.append({"kernel": self.__name__, "config": self.last_config,
                               "timings": self.last_timings})


class LastConfig:
    """The launch config of an op's last call, whichever path ran (for ``Impl.config``)."""

    def __init__(self) -> None:
        self.value: dict | None = None

    def tiled(self, tuned: TunedKernel) -> None:
        self.value = {"path": "tiled", **(tuned.last_config or {})}

    def __call__(self) -> dict | None:
        return self.value


@dataclass(frozen=True)
class CompileTarget:
    """One kernel as an op launches it, for ``tritonlab inspect`` (see docs/inspect.md).

    ``name``: a label unique within the op (e.g. ``"fwd"``, ``"bwd_dx"``).
    ``kernel``: the ``@triton.jit`` function; it must be a module-level name of its module
    (compile workers import it from there).
    ``dtype``: the element type of every argument named ``*_ptr``.
    ``values``: a typical launch's arguments: ints for sizes and strides (a stride of 1 becomes
    a constant and a multiple of 16 is marked divisible, as Triton's JIT does), floats,
    constexpr values (bool, int, str, tl.dtype), and a torch.dtype for a pointer argument
    whose element type differs from ``dtype``. Config keys need not be given here.
    ``configs``: the launch configs per architecture: a function of the compute capability
    (``(9, 0)``) returning ``triton.Config``s or flat dicts, or one list for every
    architecture. The first entries are the "main" configs.
    ``heuristics``: constexpr name -> function of the launch arguments, evaluated after the
    config is applied (as ``triton.heuristics`` does).
    ``impls``: the op's Triton impls that launch this kernel (None: all of them).
    """

    name: str
    kernel: object
    dtype: torch.dtype
    values: Mapping[str, object]
    configs: Callable[[tuple[int, int]], Sequence] | Sequence
    heuristics: Mapping[str, Callable[[dict], object]] = field(default_factory=dict)
    impls: tuple[str, ...] | None = None

    @property
    def kernel_name(self) -> str:
        fn = self.kernel
        while not callable(getattr(fn, "__code__", None)) and hasattr(fn, "fn"):
            fn = fn.fn
        return fn.__name__
