"""Running the phases of a contrast: building a workload's step, and the warm-up, measured
phase and cool-down of one (mode, impl, batch) inside the counter sampler's windows, each
also an NVTX range (``tritonlab:contrast/<phase>``, named as in counters.csv) on CUDA so
that an Nsight Systems timeline lines up with the counters."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import torch

from tritonlab.contrast.plan import MIN_WARMUP_STEPS, PlannedPhase
from tritonlab.hw import counters as counters_mod
from tritonlab.workloads.infer import InferenceWorkload
from tritonlab.workloads.train import TrainingWorkload

WorkloadFactory = Callable[..., object]
# Opens a named range around a phase: torch.cuda.nvtx.range on CUDA, or a test's recorder.
RangeFactory = Callable[[str], AbstractContextManager]
NVTX_PREFIX = "tritonlab:contrast/"


def nvtx_ranges(backend_name: str) -> RangeFactory:
    """NVTX ranges on CUDA; nothing elsewhere (the interpreter has no CUDA to mark)."""
    if backend_name == "cuda":
        return torch.cuda.nvtx.range
    return lambda _name: nullcontext()


@contextmanager
def phase(sampler, ranges: RangeFactory, name: str, kind: str, **meta
          ) -> Iterator[counters_mod.Phase]:
    """A sampler window inside the NVTX range ``tritonlab:contrast/<name>``."""
    with ranges(NVTX_PREFIX + name), sampler.phase(name, kind=kind, **meta) as ph:
        yield ph


def lab_workloads(mode: str, cfg, *, impl: str, dtype, device, seed: int):
    """The lab's workloads: TrainingWorkload for ``train``, InferenceWorkload for ``infer``."""
    if mode == "train":
        return TrainingWorkload(cfg, impl=impl, dtype=dtype, device=device, seed=seed)
    return InferenceWorkload(cfg, impl=impl, dtype=dtype, device=device, seed=seed)


@dataclass
class PhaseRun:
    """What the workload side of one measured phase recorded."""

    name: str
    mode: str
    impl: str | None
    batch: int | None
    phase: counters_mod.Phase | None = None
    latencies_s: list[float] = field(default_factory=list)
    flops_per_step: int | None = None
    peak_mem_bytes: int | None = None
    error: str | None = None
    # The grid point ({"batch": ..} and the layer regimes' seq, prompt or context).
    point: dict | None = None
    # What the layer contrast's rows need beyond the steps: tokens, bytes, footprint.
    info: object = None
    # Why the phase was not run (a footprint larger than the card), with no measurement.
    skipped: str | None = None


def sleep_phase(sampler, ranges: RangeFactory, name: str, kind: str, seconds: float
                ) -> counters_mod.Phase | None:
    """A window in which the process only sleeps (the idle baseline, a cool-down); None when
    ``seconds`` is 0."""
    if seconds <= 0:
        return None
    with phase(sampler, ranges, name, kind) as ph:
        time.sleep(seconds)
    return ph


def ffn_step(factory: WorkloadFactory, mode: str, cfg, *, impl: str, batch: int,
             data_seed: int, seed: int, dtype, device) -> tuple[Callable[[], object], int, None]:
    """One step of a feed-forward workload on a fixed batch (data loading is not what is
    measured), its FLOPs, and no extra row metrics."""
    workload = factory(mode, cfg, impl=impl, dtype=dtype, device=device, seed=seed)
    data = workload.make_batch(batch, data_seed)
    flops = int(workload.flops(batch))
    if mode == "train":
        x, target = data
        return (lambda: workload.step(x, target)), flops, None
    return (lambda: workload.step(data)), flops, None


# Builds a phase's step: returns the step, its FLOPs, and what the rows need beyond them
# (the layer contrast's tokens, bytes and footprint; None for the feed-forward block).
StepBuilder = Callable[[], tuple[Callable[[], object], int, object]]


def measure(sampler, ranges: RangeFactory, plan, planned: PlannedPhase, build: StepBuilder,
            *, backend_name: str) -> PhaseRun:
    """Setup (``build``), warm-up, measured phase and cool-down for one planned phase, each a
    sampler window inside a ``ranges`` range. A failure (OOM, a compile error) is recorded
    on the phase and the run goes on."""
    is_gpu = backend_name == "cuda"
    sync = torch.cuda.synchronize if is_gpu else (lambda: None)
    name, mode, impl, batch = planned.name, planned.mode, planned.impl, planned.batch
    run = PhaseRun(name=name, mode=mode, impl=impl, batch=batch, point=planned.point())
    step = None
    try:
        with phase(sampler, ranges, f"setup {name}", "setup", mode=mode, impl=impl,
                   batch=batch):
            step, run.flops_per_step, run.info = build()
        with phase(sampler, ranges, f"warmup {name}", "warmup", mode=mode, impl=impl,
                   batch=batch):
            steps, deadline = 0, time.perf_counter() + plan.warmup_s
            while steps < MIN_WARMUP_STEPS[backend_name] or time.perf_counter() < deadline:
                step()
                sync()
                steps += 1
        if is_gpu:
            torch.cuda.reset_peak_memory_stats()
        with phase(sampler, ranges, name, mode, mode=mode, impl=impl, batch=batch) as ph:
            run.phase = ph
            deadline = time.perf_counter() + plan.duration_s
            while True:
                t0 = time.perf_counter()
                step()
                sync()
                t1 = time.perf_counter()
                run.latencies_s.append(t1 - t0)
                if t1 >= deadline:
                    break
        if is_gpu:
            run.peak_mem_bytes = int(torch.cuda.max_memory_allocated())
    except Exception as exc:  # OOM, Triton compile/resource errors: recorded, the run goes on
        run.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        run.phase = None
    finally:
        step = None  # frees the workload (weights, optimizer state) before the next phase
        gc.collect()
        if is_gpu:
            torch.cuda.empty_cache()
    sleep_phase(sampler, ranges, f"cooldown after {name}", "cooldown", plan.cooldown_s)
    return run
