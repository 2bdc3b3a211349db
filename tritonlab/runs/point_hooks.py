"""What the sweep adds to each timed point on a GPU, beside the timing itself:

* ``static``: the compiled kernel's registers, spills, shared memory, occupancy and
  tensor-core instruction counts for the config the point ran with
  (:func:`tritonlab.static.inspect_ops.static_facts`, from the compile cache);
* ``counters``: average power, energy per call and SM clock while the point runs back to
  back for a short window (:func:`tritonlab.hw.counters.sweep_hook`), with the samples
  written to ``RUN/counters.csv``.

Under the interpreter neither means anything (no GPU, no SASS of the run), so no hook runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from tritonlab import backend as backend_mod
from tritonlab.hw import counters as counters_mod
from tritonlab.output import info
from tritonlab.static.inspect_ops import static_facts

# Each point runs this long more inside its counter window: two updates of NVML's energy
# counter (100 ms), enough for average power and clocks; energy per call is reported with its
# resolution (counters.point_summary).
COUNTER_WINDOW_S = 0.25


def static_hook(arch: tuple[int, int]):
    """``hook(op, impl, row, run)`` adding ``{"static": ...}`` to each Triton row. Ops that
    report one config per kernel (``{target: config}``, e.g. linear) get one entry per
    kernel, each the facts of *that* target. The facts are those of the config as launched on
    the op's typical problem (its compile targets' values), not re-specialised per shape:
    compiling every point's own specialisation would cost a compile per point."""
    def facts_for(op, impl, config, dtype, target=None):
        facts = static_facts(op, impl.name, config, dtype, arch)
        if target is None:
            return facts
        # Kernels of several targets take the same keys (linear's fwd, bwd_dx and bwd_dw all
        # have BLOCK_M/N/K): keep the named one. A split-K decode config has a target of its
        # own, which its keys select.
        mine = [k for k in facts.get("kernels") or [] if k.get("target") == target]
        return {**facts, **mine[0], "kernels": mine} if mine else facts

    def hook(op, impl, row, run):
        if impl.kind != "triton" or run is None:
            return None
        config = row.get("config")
        dtype = getattr(torch, row["dtype"])
        if isinstance(config, dict) and config and all(isinstance(v, dict) for v in config.values()):
            return {"static": {target: facts_for(op, impl, cfg, dtype, target)
                               for target, cfg in config.items()}}
        return {"static": facts_for(op, impl, config, dtype)}

    hook.__name__ = "static"
    return hook


@contextmanager
def gpu_point_hooks(run_dir: Path, *, counters: bool = True, static: bool = True) -> Iterator[list]:
    """The hooks for a sweep on the current backend (none on the interpreter). The counter
    sampler runs for the whole sweep; its samples go to ``run_dir/counters.csv`` at the end,
    also after Ctrl-C."""
    be = backend_mod.current()
    if not be.is_gpu:
        yield []
        return
    hooks = []
    if static:
        hooks.append(static_hook(torch.cuda.get_device_capability()))
    sampler = None
    if counters:
        # NVML numbers GPUs in PCI order whatever CUDA_VISIBLE_DEVICES says: name it by UUID.
        uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
        if not uuid.startswith(("GPU-", "MIG-")):
            uuid = f"GPU-{uuid}"
        sampler = counters_mod.open_sampler("auto", device_uuid=uuid,
                                            warn=lambda m: info(f"warning: {m}"))
        sampler.start()
        hook = counters_mod.sweep_hook(sampler, min_seconds=COUNTER_WINDOW_S,
                                       sync=torch.cuda.synchronize)
        hook.__name__ = "counters"
        hooks.append(hook)
    try:
        yield hooks
    finally:
        if sampler is not None:
            sampler.stop()
            sampler.write_csv(Path(run_dir) / "counters.csv")
