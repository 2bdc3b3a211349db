"""Making sure every job has a cache entry: the jobs missing from the cache are compiled in
parallel worker processes (a spawn ``ProcessPoolExecutor`` set up by
:func:`tritonlab.static.worker_init.init_worker`), or in this process when there is one
missing kernel and it is already a compilable ``JITFunction`` (the cuda backend), which
saves a worker's start-up."""

from __future__ import annotations

import multiprocessing
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from triton.runtime.jit import JITFunction

from tritonlab.static.cache import Job, entry_dir
from tritonlab.static.compile import compile_job, jit_function, run_job
from tritonlab.static.worker_init import init_worker

# progress(done, total, label of the job just finished)
Progress = Callable[[int, int, str], None]

MAX_WORKERS = 8


def compile_jobs(jobs: Sequence[Job], root: Path, progress: Progress | None,
                 rebuild: bool) -> tuple[dict[str, str], int, int]:
    """Make sure every job with a spec has a cache entry under ``root``; returns (key ->
    failure message for entries that could not be made, number compiled now, number found
    in the cache). ``rebuild`` drops the jobs' entries first."""
    todo: dict[str, Job] = {}
    hits: set[str] = set()
    for j in jobs:
        if j.spec is None or j.key in todo or j.key in hits:
            continue
        entry = entry_dir(root, j.key)
        if rebuild and entry.exists():
            shutil.rmtree(entry)
        if (entry / "meta.json").exists():
            hits.add(j.key)
        else:
            todo[j.key] = j
    misses = list(todo.values())
    if not misses:
        return {}, 0, len(hits)
    if len(misses) == 1 and isinstance(jit_function(misses[0].target.kernel), JITFunction):
        job = misses[0]
        compile_job(job.payload(root), kernel=jit_function(job.target.kernel))
        if progress:
            progress(1, 1, job.label)
        return {}, 1, len(hits)
    return _run_workers(misses, root, progress), len(misses), len(hits)


def _run_workers(jobs: Sequence[Job], root: Path, progress: Progress | None) -> dict[str, str]:
    """Compile ``jobs`` in worker processes (one per core, at most :data:`MAX_WORKERS`);
    returns key -> error for jobs that failed other than in the compiler (whose errors are
    stored in the cache entry).

    A worker that dies (a crash in the compiler, or killed) takes the pool and every job it
    held with it. Those jobs are then compiled again in a pool of one worker, in order, so
    that the job running when that worker dies is the one that killed it: it is reported,
    and the jobs after it go on in a fresh worker.
    """
    failed: dict[str, str] = {}
    done = 0

    def finished(job: Job) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, len(jobs), job.label)

    workers = max(1, min(len(jobs), os.cpu_count() or 1, MAX_WORKERS))
    left = _pool_round(jobs, root, workers, failed, finished)
    while left:
        left = _pool_round(left, root, 1, failed, finished)
        if left:
            killer = left.pop(0)
            failed[killer.key] = ("the compile worker died while compiling this config (a "
                                  "crash in the compiler, or the process was killed; its "
                                  "stderr says more)")
            finished(killer)
    return failed


_SPAWN = multiprocessing.get_context("spawn")


def _pool_round(jobs: Sequence[Job], root: Path, workers: int, failed: dict[str, str],
                finished: Callable[[Job], None]) -> list[Job]:
    """Run ``jobs`` in a pool of ``workers`` processes, recording transient failures in
    ``failed`` and calling ``finished`` per finished job; returns the jobs that a dying
    worker left unfinished, in their order."""
    # Spawned, not forked: a fork would copy this process's Triton, whose kernels are
    # interpreted under the interpreter backend (and a CUDA context cannot be forked).
    with ProcessPoolExecutor(workers, mp_context=_SPAWN, initializer=init_worker) as pool:
        futures = {pool.submit(run_job, j.payload(root)): j for j in jobs}
        for future in as_completed(futures):
            if isinstance(future.exception(), BrokenProcessPool):
                continue
            result = future.result()
            if result.get("transient"):
                failed[result["key"]] = result["error"]
            finished(futures[future])
    return [j for f, j in futures.items() if isinstance(f.exception(), BrokenProcessPool)]
