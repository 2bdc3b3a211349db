"""The processes a cluster sweep or inspection runs on Ray's workers (docs/cluster.md).

A Ray worker imports the module that defines the code it runs before it runs any of it, and
Triton decides when a kernel is decorated whether it is compiled or interpreted
(:mod:`tritonlab.backend`). So this module imports nothing of the lab at its top but the
backend selector: :class:`SweepWorker` selects the run's backend first and imports the sweep
(and with it the kernels) after; :func:`compile_remote` switches the interpreter off
(:func:`tritonlab.static.worker_init.init_worker`) before the compiler is imported.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tritonlab import backend


class SweepWorker:
    """One worker actor: one GPU (``num_gpus=1``; Ray makes it the only one the process
    sees), or one CPU slot under the interpreter. It measures the points the driver hands
    it with :class:`tritonlab.runs.sweep.WorkerSweep` and returns their rows."""

    def __init__(self, backend_name: str):
        backend.select(backend_name)
        self.pid = os.getpid()
        self.work = None

    def start(self, options: dict, hooks: list) -> dict:
        """Set up timing and hooks; returns where this worker measures (node, GPU name and
        UUID, the device's description, its timer and ceilings)."""
        from tritonlab.runs.sweep import SweepOptions, WorkerSweep  # after backend.select

        self.work = WorkerSweep(SweepOptions(**options), hooks)
        return {**self.work.identity, "pid": self.pid}

    def measure(self, spec, impl_names) -> list[dict]:
        return self.work.measure(spec, impl_names)

    def close(self) -> str | None:
        return self.work.close() if self.work is not None else None


def compile_remote(job: dict) -> dict:
    """Compile one inspect job (:func:`tritonlab.static.compile.run_job`) on whichever node
    Ray chose, into a temporary entry, and return the result with the entry's files
    (name -> bytes): the driver keeps the compile cache, and a remote node's disk is not
    the driver's."""
    from tritonlab.static.worker_init import init_worker

    init_worker()  # before anything imports the compiler or a kernel
    from tritonlab.static.compile import run_job

    with tempfile.TemporaryDirectory(prefix="tritonlab-compile-") as tmp:
        entry = Path(tmp) / Path(job["entry"]).name
        result = run_job({**job, "entry": str(entry)})
        files = ({p.name: p.read_bytes() for p in entry.iterdir() if p.is_file()}
                 if entry.is_dir() else {})
    return {**result, "files": files}
