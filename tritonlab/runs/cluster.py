"""Sweeps on a Ray cluster (``tritonlab sweep ... --ray [ADDRESS]``; docs/cluster.md).

The driver (this process) plans the points as a local sweep does and starts one worker
actor per GPU (``num_gpus=1``), or one per CPU under the interpreter
(:class:`tritonlab.runs.cluster_worker.SweepWorker`). Each worker checks and times the
points it is handed with the sweep's own per-point code (``_Sweeper.point_rows``, the code
a local sweep runs) and sends the rows back; the driver appends them to
``RUN/results.jsonl``, flushed, as they arrive, and is the only writer of the run
directory, which has the format of a local run plus the ``cluster`` fields of the manifest.

Device models: every worker reports its GPU (node, name, UUID). Each model measures every
point once (on whichever of its GPUs is free), so that a cluster of H100s and A100s gives
each point on both, side by side; the manifest keeps each model's ceilings
(``peaks_by_device``) and every row its device.

Faults: a worker that dies while measuring a point (its process killed, its node lost) has
that point handed to another worker of the same model, once; a replacement worker is
started where the cluster has room. A point whose second worker dies too, or whose model has
no worker left, is recorded with the reason, as any failed point is. Ctrl-C (or SIGTERM)
stops the driver: the workers are killed, the points in flight are dropped, every row
already written stays, and ``--resume`` (on a cluster or locally, on a device of a model
the run has) measures what is missing.

Security: a cluster runs the code its driver sends. A cluster this module starts itself
(no ADDRESS) listens on 127.0.0.1 only (:func:`_loopback_only`) and is shut down when the
sweep ends, also on Ctrl-C; Ray's token authentication, on by default for such a cluster,
is left as Ray sets it. Nothing here turns authentication off or opens a port.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tritonlab import backend as backend_mod
from tritonlab.errors import UsageError
from tritonlab.output import info
from tritonlab.runs import sweep as sweep_mod
from tritonlab.runs.cluster_worker import SweepWorker
from tritonlab.runs.records import Point, PointKey, ResultRow, point_key
from tritonlab.runs.store import RunDir, atomic_write_text, now_iso
from tritonlab.runs.sweep import PointHook, ProgressFn, SweepOptions, SweepResult

EXTRA_HINT = "pip install 'tritonlab[ray]'"
# What a bare --ray stands for (Click needs a value for it): a local cluster for the command.
LOCAL = "local"
LOOPBACK = "127.0.0.1"
# Ray's switch that keeps a node on the loopback interface: with it off, the node's address
# is 127.0.0.1 and every server of the cluster binds there (Ray reads it when it is imported,
# and hands the environment to the processes it starts).
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# How long the driver waits for a worker to start (imports torch and Triton, measures an
# unknown GPU's ceilings) before it gives up on it.
START_TIMEOUT_S = 600.0

_ADDRESS = re.compile(r"^(auto|ray://[^\s/]+|[A-Za-z0-9_.\-\[\]:]+:\d+)$")


def import_ray():
    """The ``ray`` module, or :class:`UsageError` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, an optional extra of tritonlab: {EXTRA_HINT}"
                         ) from None
    return ray


def check_address(address: str | None) -> str | None:
    """``address`` if it names a cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``);
    None (start a local one) as is; else :class:`UsageError`. A bare ``--ray`` followed by an
    op would otherwise take the op's name for an address."""
    if address is None or _ADDRESS.match(address):
        return address
    raise UsageError(f"--ray {address!r}: not a cluster address; give auto (the cluster this "
                     f"machine joined), HOST:PORT or ray://HOST:PORT, or nothing for a local "
                     f"cluster (write --ray=ADDRESS, or put a bare --ray after the ops)")


@contextlib.contextmanager
def _loopback_only(ray) -> Iterator[None]:
    """Keep the cluster started inside on 127.0.0.1 (see :data:`_LOOPBACK_ENV`): in the
    environment its processes inherit, and in this process's Ray, which read it when it was
    imported. Both are restored afterwards, so that a later connection to a real cluster
    from this process is not held to loopback."""
    constants = ray._private.ray_constants
    before = os.environ.get(_LOOPBACK_ENV), constants.ENABLE_RAY_CLUSTER
    os.environ[_LOOPBACK_ENV] = "0"
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if before[0] is None:
            os.environ.pop(_LOOPBACK_ENV, None)
        else:
            os.environ[_LOOPBACK_ENV] = before[0]
        constants.ENABLE_RAY_CLUSTER = before[1]


@dataclass
class Cluster:
    """A connection to a Ray cluster: its address, whether this process started it (then
    it is shut down with the session), and what it has."""

    address: str
    started_here: bool
    gpus: int
    cpus: int

    def backend_name(self) -> str:
        """The backend the workers measure on: cuda where the cluster has GPUs, unless this
        process was told to use the interpreter (``--backend`` or ``TRITONLAB_BACKEND``)."""
        be = backend_mod.current()
        if be.reason == "requested":
            return be.name
        return "cuda" if self.gpus else "interpreter"

    def describe(self) -> dict:
        return {"address": self.address, "started_here": self.started_here,
                "gpus": self.gpus, "cpus": self.cpus}


@contextlib.contextmanager
def session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[Cluster]:
    """Connect to the cluster at ``address`` (``auto``: the one this machine joined), or
    start a local one on 127.0.0.1 (``address`` None; ``num_cpus``: its size, default the
    machine's), without the dashboard; a Ray this process already initialised (a notebook,
    the tests) is used as it is and left running. Ray's own handler of SIGTERM is undone,
    so that SIGTERM stops a sweep as Ctrl-C does."""
    ray = import_ray()
    address = check_address(address)
    if ray.is_initialized():
        yield _describe(ray, started_here=False)
        return
    main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if main else None
    with _loopback_only(ray) if address is None else contextlib.nullcontext():
        try:
            if address is None:
                info("starting a local Ray cluster on 127.0.0.1 (stopped when this command "
                     "ends)")
                ray.init(_node_ip_address=LOOPBACK, num_cpus=num_cpus, include_dashboard=False,
                         log_to_driver=False, configure_logging=True, logging_level="warning")
            else:
                ray.init(address=address, log_to_driver=False, logging_level="warning")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            with contextlib.suppress(Exception):
                ray.shutdown()
            what = ("start a local Ray cluster" if address is None else
                    f"connect to the Ray cluster at {address!r}")
            raise UsageError(f"cannot {what}: {_first_line(exc)}") from None
        finally:
            if main and sigterm is not None:
                signal.signal(signal.SIGTERM, sigterm)
        try:
            yield _describe(ray, started_here=address is None)
        finally:
            ray.shutdown()  # a local cluster stops with it; from a remote one it disconnects


def _describe(ray, *, started_here: bool) -> Cluster:
    resources = ray.cluster_resources()
    context = ray.get_runtime_context()
    address = getattr(context, "gcs_address", None) or "unknown"
    return Cluster(address=str(address), started_here=started_here,
                   gpus=int(resources.get("GPU", 0)), cpus=int(resources.get("CPU", 0)))


# ---------------------------------------------------------------------------------- workers

@dataclass
class _Worker:
    handle: object
    index: int
    ident: dict = field(default_factory=dict)
    points: int = 0

    @property
    def model(self) -> str:
        return self.ident["gpu_name"]

    @property
    def label(self) -> str:
        uuid = self.ident.get("gpu_uuid")
        return (f"worker {self.index} (pid {self.ident.get('pid')} on {self.ident.get('node')}"
                f"{', ' + uuid if uuid else ''})")

    def record(self) -> dict:
        return {"worker": self.index, "node": self.ident.get("node"),
                "pid": self.ident.get("pid"), "gpu_name": self.ident.get("gpu_name"),
                "gpu_uuid": self.ident.get("gpu_uuid"), "points": self.points}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


class _Pool:
    """The worker actors of one sweep: started, replaced after a death, killed at the end."""

    def __init__(self, ray, backend_name: str, options: SweepOptions,
                 hooks: Sequence[PointHook]):
        self.ray = ray
        self.gpu = backend_name == "cuda"
        self.actor = ray.remote(SweepWorker).options(
            num_gpus=1 if self.gpu else 0, num_cpus=0 if self.gpu else 1, max_restarts=0)
        self.backend_name = backend_name
        self.options = options.to_dict()
        self.hooks = list(hooks)
        self.starting: dict = {}  # start() future -> _Worker
        self.everyone: list[_Worker] = []  # every worker started, in order
        self.live: list[_Worker] = []
        self.count = 0

    def start(self, n: int) -> None:
        for _ in range(n):
            handle = self.actor.remote(self.backend_name)
            worker = _Worker(handle, self.count)
            self.count += 1
            self.everyone.append(worker)
            self.starting[handle.start.remote(self.options, self.hooks)] = worker

    def wait_started(self, timeout: float) -> None:
        """Wait until every starting worker reports (or fails to)."""
        deadline = time.monotonic() + timeout
        while self.starting:
            ready, _ = self.ray.wait(list(self.starting), num_returns=1,
                                     timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            self.took(ready[0])

    def took(self, future) -> None:
        """A start() future came back: the worker joins the pool or is dropped."""
        worker = self.starting.pop(future)
        try:
            worker.ident = self.ray.get(future)
        except Exception as exc:  # noqa: BLE001 - a worker that cannot start is reported
            info(f"warning: worker {worker.index} did not start: {_first_line(exc)}")
            return
        self.live.append(worker)

    def died(self, worker: _Worker) -> None:
        self.live.remove(worker)
        with contextlib.suppress(Exception):
            self.ray.kill(worker.handle)

    def close(self) -> dict[str, str]:
        """End every worker; the counter samples of those that had some, by GPU."""
        samples: dict[str, str] = {}
        futures = {w.handle.close.remote(): w for w in self.live}
        if futures:
            ready, _ = self.ray.wait(list(futures), num_returns=len(futures), timeout=60)
            for f in ready:
                with contextlib.suppress(Exception):
                    text = self.ray.get(f)
                    if text:
                        w = futures[f]
                        samples[w.ident.get("gpu_uuid") or f"worker{w.index}"] = text
        self.kill()
        return samples

    def kill(self) -> None:
        for w in [*self.live, *self.starting.values()]:
            with contextlib.suppress(Exception):
                self.ray.kill(w.handle)
        self.live.clear()
        self.starting.clear()


# -------------------------------------------------------------------------------- the sweep

def _worker_count(cluster: Cluster, gpu: bool, workers: int | None) -> int:
    available = cluster.gpus if gpu else cluster.cpus
    if available < 1:
        raise UsageError(f"the Ray cluster at {cluster.address} has no "
                         f"{'GPU' if gpu else 'CPU'} for a worker")
    return min(available, workers) if workers else available


def _manifest_device(workers: Sequence[_Worker]) -> tuple[dict, list[str]]:
    """The manifest's ``device`` (the first worker's; for several models, their names) and
    the models, in the order the workers reported them."""
    models = list(dict.fromkeys(w.model for w in workers))
    first = dict(workers[0].ident["device"])
    if len(models) == 1:
        return first, models
    return {"name": " + ".join(models), "kind": first.get("kind"), "models": models}, models


def sweep(points: Sequence[Point], out: Path, cluster: Cluster, *, resume: bool,
          options: SweepOptions, argv: Sequence[str], selection: Mapping,
          hooks: Sequence[PointHook] | None = None, progress: ProgressFn | None = None,
          notes: Sequence[str] = (), part_of: Mapping | None = None,
          workers: int | None = None) -> SweepResult:
    """:func:`tritonlab.runs.sweep.sweep` on ``cluster`` (see the module docstring):
    ``workers`` caps the number of worker actors."""
    ray = import_ray()
    backend_name = cluster.backend_name()
    if options.graph and backend_name != "cuda":
        raise UsageError("--graph needs the cuda backend (CUDA graphs)")
    options = SweepOptions(cache=options.cache, graph=options.graph, seed=options.seed,
                           budget_s=sweep_mod.default_rule(backend_name,
                                                           options.budget_s).budget_s)
    pool = _Pool(ray, backend_name, options,
                 sweep_mod.POINT_HOOKS if hooks is None else hooks)
    run: RunDir | None = None
    try:
        pool.start(min(_worker_count(cluster, backend_name == "cuda", workers),
                       max(1, len(points))))
        info(f"starting {len(pool.starting)} Ray worker(s) ({backend_name})")
        pool.wait_started(START_TIMEOUT_S)
        if not pool.live:
            raise UsageError(f"no Ray worker started on {cluster.address} (see the "
                             f"warnings above)")
        device, models = _manifest_device(pool.live)
        first = pool.live[0].ident
        options = SweepOptions(cache=first["timer"].get("cache"), graph=options.graph,
                               budget_s=options.budget_s, seed=options.seed)
        be = backend_mod.Backend(backend_name, "cuda" if backend_name == "cuda" else "cpu",
                                 f"the Ray cluster's workers ({cluster.address})")
        peaks = {w.model: w.ident["peaks"] for w in pool.live if w.ident.get("peaks")}
        extra = {"cluster": {**cluster.describe(), "models": models},
                 "peaks_by_device": peaks}
        if len(models) == 1 and peaks:
            extra["peaks"] = peaks[models[0]]
        run = sweep_mod.open_run_for(out, resume=resume, be=be, device=device,
                                     timer=first["timer"], models=models, argv=argv,
                                     selection=selection, options=options, part_of=part_of,
                                     extra=None if resume else extra)
        if resume:  # a resumed run keeps the models and ceilings it had
            manifest = run.manifest()
            had = sweep_mod.run_models(manifest)
            run.update_manifest(
                cluster={**extra["cluster"], "models": list(dict.fromkeys([*had, *models]))},
                peaks_by_device={**(manifest.get("peaks_by_device") or {}), **peaks})
        return _Driver(ray, pool, run, points, progress, notes).run()
    finally:
        pool.kill()
        if run is not None:
            run.release()


class _Driver:
    """The dispatch loop of one cluster sweep: hands each idle worker the next point of its
    model, appends the rows that come back, retries a point once after its worker died."""

    def __init__(self, ray, pool: _Pool, run: RunDir, points: Sequence[Point],
                 progress: ProgressFn | None, notes: Sequence[str]):
        self.ray, self.pool, self.run_dir = ray, pool, run
        self.points = list(points)
        self.progress = progress
        self.notes = list(notes)
        self.specs = [sweep_mod.point_spec(p) for p in self.points]
        done: set[tuple[str, PointKey]] = {(r.get("device"), point_key(r)) for r in run.rows()}
        # model -> indexes of the points still to measure there, and their missing impls
        self.pending: dict[str, collections.deque] = {}
        self.missing: dict[tuple[str, int], list] = {}
        self.before = 0
        present = list(dict.fromkeys(w.model for w in pool.live))
        for model in present:
            queue = self.pending.setdefault(model, collections.deque())
            for i, point in enumerate(self.points):
                missing = [impl for impl in point.impls if (model, point.key(impl)) not in done]
                if missing:
                    queue.append(i)
                    self.missing[(model, i)] = missing
                else:
                    self.before += 1
        self.total = len(self.points) * len(present)
        self.finished = self.before
        self.failures: dict[tuple[str, int], list[str]] = {}
        self.retried: list[dict] = []
        self.in_flight: dict = {}  # measure() future -> (worker, model, point index)
        self.new_rows = 0

    def run(self) -> SweepResult:
        interrupted = False
        samples: dict[str, str] = {}
        try:
            self._loop()
            samples = self.pool.close()
        except KeyboardInterrupt:
            interrupted = True
        except BaseException:
            # Cut short by an error (a Ray failure the pool does not retry, a full disk): not
            # complete; --resume finishes it from the rows already written.
            interrupted = True
            raise
        finally:
            for name, text in samples.items():
                atomic_write_text(self.run_dir.path / f"counters-{name}.csv", text)
            cluster = {**(self.run_dir.manifest().get("cluster") or {}),
                       "workers": [w.record() for w in self.pool.everyone if w.ident],
                       "retried": self.retried}
            manifest = self.run_dir.update_manifest(
                cluster=cluster, status="interrupted" if interrupted else "complete",
                end_time=now_iso())
        return SweepResult(run_dir=self.run_dir.path, manifest=manifest,
                           rows=self.run_dir.rows(), new_rows=self.new_rows,
                           points_total=self.total, points_done_before=self.before,
                           interrupted=interrupted, notes=self.notes)

    def _label(self, model: str, i: int) -> str:
        many = len(self.pending) > 1
        return f"{self.points[i].label}{' on ' + model if many else ''}"

    def _assign(self) -> None:
        busy = {id(w) for w, _, _ in self.in_flight.values()}
        for worker in self.pool.live:
            queue = self.pending.get(worker.model)
            if id(worker) in busy or not queue:
                continue
            i = queue.popleft()
            names = [impl.name for impl in self.missing[(worker.model, i)]]
            future = worker.handle.measure.remote(self.specs[i], names)
            self.in_flight[future] = (worker, worker.model, i)
            if self.progress:
                self.progress(self.finished, self.total, self._label(worker.model, i),
                              f"measuring on {worker.label}")

    def _loop(self) -> None:
        while True:
            self._assign()
            # Workers still starting are waited for only while there is work they could do.
            starting = list(self.pool.starting) if any(self.pending.values()) else []
            waiting = list(self.in_flight) + starting
            if not waiting:
                break
            ready, _ = self.ray.wait(waiting, num_returns=1, timeout=START_TIMEOUT_S)
            if not ready:  # only workers that never start are left: give up on them
                self.pool.kill()
                break
            future = ready[0]
            if future in self.pool.starting:
                self.pool.took(future)
                continue
            worker, model, i = self.in_flight.pop(future)
            try:
                rows = self.ray.get(future)
            except self.ray.exceptions.RayActorError as exc:
                self._worker_died(worker, model, i, exc)
                continue
            except self.ray.exceptions.RayTaskError as exc:
                # The per-point code records every failure in its rows; this is one before
                # it ran (the point could not be rebuilt there): the same on any worker.
                self._record_failed(model, i, f"the worker could not measure this point: "
                                              f"{_first_line(exc.cause or exc)}")
                continue
            worker.points += 1
            why = self.failures.get((model, i))
            if why:
                for row in rows:
                    row["retried_after"] = why[-1]
            self._append(model, i, rows)
        for model, queue in self.pending.items():  # a model whose workers all died
            while queue:
                i = queue.popleft()
                self._record_failed(model, i, f"no worker of {model} is left on the cluster "
                                              f"(see the manifest's cluster.workers)")

    def _append(self, model: str, i: int, rows: list[ResultRow]) -> None:
        self.run_dir.append(rows)
        self.new_rows += len(rows)
        self.finished += 1
        if self.progress:
            bad = [r for r in rows if r.get("error")]
            self.progress(self.finished, self.total, self._label(model, i),
                          f"{len(bad)} failed" if bad else "ok")

    def _worker_died(self, worker: _Worker, model: str, i: int, exc: BaseException) -> None:
        why = f"{worker.label} died while measuring this point ({_first_line(exc)})"
        info(f"warning: {why}: {self.points[i].label}")
        self.pool.died(worker)
        reasons = self.failures.setdefault((model, i), [])
        reasons.append(why)
        self.retried.append({"point": self._label(model, i), "model": model, "why": why,
                             "retried": len(reasons) == 1})
        if len(reasons) == 1:
            self.pending[model].appendleft(i)
        else:
            self._record_failed(model, i, f"{'; then '.join(reasons)}; not retried again")
        if any(self.pending.values()):
            self.pool.start(1)  # where the cluster has room; it joins when it reports

    def _record_failed(self, model: str, i: int, error: str) -> None:
        """Rows for the point's missing impls that say why it was not measured."""
        point = self.points[i]
        ident = next((w.ident for w in self.pool.everyone if w.ident and w.model == model), {})
        rows = []
        for impl in self.missing[(model, i)]:
            rows.append(sweep_mod.failed_row(point, impl, backend=self.pool.backend_name,
                                             device=model, timer=ident.get("timer") or {},
                                             seed=self.pool.options["seed"], error=error))
        self._append(model, i, rows)
