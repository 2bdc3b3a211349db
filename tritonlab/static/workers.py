"""Making sure every job has a cache entry: the jobs missing from the cache are compiled in
parallel worker processes (a spawn ``ProcessPoolExecutor`` set up by
:func:`tritonlab.static.worker_init.init_worker`), or in this process when there is one
missing kernel and it is already a compilable ``JITFunction`` (the cuda backend), which
saves a worker's start-up. Inside :func:`compile_on_ray` (``tritonlab inspect --ray``) the
jobs are Ray tasks spread over a cluster's CPUs instead, and the entries they compile come
back to this machine's cache."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from triton.runtime.jit import JITFunction

from tritonlab.runs.cluster_worker import compile_remote
from tritonlab.static.cache import Job, entry_dir
from tritonlab.static.compile import compile_job, jit_function, run_job
from tritonlab.static.worker_init import init_worker

# progress(done, total, label of the job just finished)
Progress = Callable[[int, int, str], None]

MAX_WORKERS = 8

_DIED = ("the compile worker died while compiling this config (a crash in the compiler, or the "
         "process was killed; its stderr says more)")

# The Ray module while compile_on_ray() is active (innermost last).
_RAY: list = []


@contextlib.contextmanager
def compile_on_ray(ray) -> Iterator[None]:
    """While inside, the jobs the cache lacks are compiled as Ray tasks (one CPU each) on
    the cluster ``ray`` is connected to."""
    _RAY.append(ray)
    try:
        yield
    finally:
        _RAY.pop()


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
    if _RAY:
        return _run_ray(_RAY[-1], misses, root, progress), len(misses), len(hits)
    return _run_workers(misses, root, progress), len(misses), len(hits)


def _run_ray(ray, jobs: Sequence[Job], root: Path, progress: Progress | None
             ) -> dict[str, str]:
    """Compile ``jobs`` as Ray tasks (:func:`tritonlab.runs.cluster_worker.compile_remote`)
    and store the entries they send back under ``root``; returns key -> error as
    :func:`_run_workers` does. Ray runs a task whose worker died once more elsewhere; a job
    whose second worker dies too is reported as the one that killed it."""
    task = ray.remote(compile_remote).options(num_cpus=1, max_retries=1)
    futures = {task.remote(j.payload(root)): j for j in jobs}
    pending = list(futures)
    failed: dict[str, str] = {}
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            job = futures[ready[0]]
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError:
                failed[job.key] = _DIED
            else:
                if result.get("transient"):
                    failed[job.key] = result["error"]
                elif result["files"]:
                    _store_entry(entry_dir(root, job.key), result["files"])
            if progress:
                progress(len(jobs) - len(pending), len(jobs), job.label)
    except BaseException:  # Ctrl-C: stop what is still queued on the cluster
        for f in pending:
            with contextlib.suppress(Exception):
                ray.cancel(f)
        raise
    return failed


def _store_entry(entry: Path, files: dict[str, bytes]) -> None:
    """Write a cache entry's files under a temporary name and rename it into place, as
    :func:`tritonlab.static.compile.compile_job` does, so a reader sees all of it or none."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
    try:
        for name, data in files.items():
            (tmp / Path(name).name).write_bytes(data)
        tmp.rename(entry)
    except OSError:  # another process stored the same entry first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (entry / "meta.json").exists():
            raise


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
            failed[killer.key] = _DIED
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
