"""What the sweep adds to each timed point on a GPU, beside the timing itself:

* ``static``: the compiled kernel's registers, spills, shared memory, occupancy and
  tensor-core instruction counts for the config the point ran with
  (:func:`tritonlab.harness.inspect.static_facts`, from the compile cache);
* ``counters``: average power, energy per call and SM clock while the point runs back to
  back for a short window (:func:`tritonlab.harness.counters.sweep_hook`), with the samples
  written to ``RUN/counters.csv``.

Under the interpreter neither means anything (no GPU, no SASS of the run), so no hook runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from tritonlab.harness import backend as backend_mod
from tritonlab.harness.output import info

# Each point runs this long more inside its counter window: two updates of NVML's energy
# counter (100 ms), enough for average power and clocks; energy per call is reported with its
# resolution (counters.point_summary).
COUNTER_WINDOW_S = 0.25


def static_hook(arch: tuple[int, int]):
    """``hook(op, impl, row, run)`` adding ``{"static": ...}`` to each Triton row. Ops that
    report one config per kernel (``{target: config}``, e.g. linear) get one entry per
    kernel."""
    from tritonlab.harness.inspect import static_facts

    def hook(op, impl, row, run):
        if impl.kind != "triton" or run is None:
            return None
        config = row.get("config")
        dtype = getattr(torch, row["dtype"])
        if isinstance(config, dict) and config and all(isinstance(v, dict) for v in config.values()):
            return {"static": {target: static_facts(op, impl.name, cfg, dtype, arch)
                               for target, cfg in config.items()}}
        return {"static": static_facts(op, impl.name, config, dtype, arch)}

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
        from tritonlab.harness import counters as counters_mod

        sampler = counters_mod.open_sampler("auto", device_index=torch.cuda.current_device(),
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
