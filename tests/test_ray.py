"""Sweeps and inspections on a Ray cluster (tritonlab/runs/cluster.py, docs/cluster.md): a
local two-CPU Ray, started the way `--ray` starts one (127.0.0.1, no dashboard) and shared by
the module, measures the same points as a local sweep; a worker killed mid-point loses
nothing (the point is measured again elsewhere, or recorded with the reason); an interrupted
driver's run is completed by --resume on the cluster and locally; inspect compiles there.
Without Ray, --ray exits 2 naming the extra."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import helpers
import psutil
import pytest
import torch
from click.testing import CliRunner
from conftest import ROOT, run_cli
from helpers import DoubleOp, wait_for

from tritonlab.cli import cli
from tritonlab.ops import registry
from tritonlab.ops.contract import Impl, Tolerance
from tritonlab.runs import cluster
from tritonlab.runs import sweep as sweep_mod
from tritonlab.runs.records import point_key
from tritonlab.runs.store import load_run, read_results
from tritonlab.static import api as insp
from tritonlab.static.cache import entry_dir

ray = pytest.importorskip("ray", reason="the Ray tests need the extra: "
                                        "pip install 'tritonlab[ray]'")

FAST = sweep_mod.SweepOptions(budget_s=0.02)


@pytest.fixture(scope="module")
def ray_cluster(be):
    if be.is_gpu:
        pytest.skip("sized for the interpreter: one CPU worker per slot")
    # The toy ops below are not in the registry: their code travels to the workers by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.cloudpickle.register_pickle_by_value(helpers)
    with cluster.session(None, num_cpus=2) as c:
        yield c


def _keys(rows):
    return [point_key(r) for r in rows]


def _matmul_points():
    points, _, selection = sweep_mod.plan_from_args(["matmul"], None, ["8x8x8", "4x12x8"],
                                                    ["float32"], [], [])
    return points, selection


def _cluster_processes(address: str) -> list[psutil.Process]:
    """The Ray servers still running for the cluster whose GCS is at ``address``."""
    port = address.rsplit(":", 1)[1]
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if ("gcs_server" in cmdline or "raylet" in cmdline) and port in cmdline:
            found.append(proc)
    return found


# First, before the module's own cluster starts: one at a time on a small machine.
def test_the_cli_on_its_own_loopback_cluster_stopped_by_ctrl_c_then_resumed_locally(tmp_path):
    out = tmp_path / "run"
    args = ["sweep", "matmul", "--shape", "8x8x8", "--shape", "16x8x8", "--shape", "24x8x8",
            "--shape", "32x8x8", "--dtype", "float32", "--mode", "infer", "--impl", "triton",
            "--impl", "torch", "--budget", "0.05", "--out", str(out), "--json"]
    p = subprocess.Popen([sys.executable, "-m", "tritonlab.cli", *args, "--ray", "--workers",
                          "2"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = out / "results.jsonl"
    wait_for(lambda: results.is_file() and results.read_bytes().count(b"\n") >= 2, p,
             "the first point on the cluster", 180)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr.decode()
    doc = json.loads(stdout)  # one JSON document on stdout; Ray's messages on stderr
    assert doc["status"] == "interrupted" and "starting a local Ray cluster" in stderr.decode()
    manifest = json.loads((out / "manifest.json").read_text())
    address = manifest["cluster"]["address"]
    assert manifest["cluster"]["started_here"] is True and address.startswith("127.0.0.1:")
    deadline = time.monotonic() + 30  # the cluster went with the command
    while _cluster_processes(address) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _cluster_processes(address)
    kept = {point_key(r): r for r in read_results(results)}
    assert 2 <= len(kept) < 8

    r = run_cli(*args, "--resume")  # on this machine, without Ray
    assert r.returncode == 0, r.stderr
    rows = read_results(results)
    assert len(rows) == len({point_key(row) for row in rows}) == 8
    assert all({point_key(row): row for row in rows}[k] == row for k, row in kept.items())
    assert json.loads(r.stdout)["new_rows"] == 8 - len(kept)


def test_local_cluster_listens_on_loopback_and_is_ours(ray_cluster):
    assert ray_cluster.started_here and ray_cluster.address.startswith("127.0.0.1:")
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert ray_cluster.cpus == 2 and ray_cluster.gpus == 0
    assert ray_cluster.backend_name() == "interpreter"


def test_two_workers_measure_the_same_points_as_a_local_sweep(ray_cluster, tmp_path):
    points, selection = _matmul_points()
    local = sweep_mod.sweep(points, tmp_path / "local", resume=False, options=FAST,
                            argv=["test"], selection=selection, hooks=[])
    remote = cluster.sweep(points, tmp_path / "ray", ray_cluster, resume=False, options=FAST,
                           argv=["test"], selection=selection, hooks=[])
    assert not remote.interrupted and remote.manifest["status"] == "complete"
    lines = read_results(tmp_path / "ray" / "results.jsonl")
    assert len(_keys(lines)) == len(set(_keys(lines)))  # no point written twice
    assert sorted(_keys(lines)) == sorted(_keys(local.rows))
    assert sorted(_keys(lines)) == sorted(p.key(i) for p in points for i in p.impls)
    device = local.manifest["device"]["name"]
    here = {point_key(r): r for r in local.rows}
    for row in lines:
        # Each point checked as locally: the same verdict, and a time where it passed.
        twin = here[point_key(row)]
        assert (row["correct"], row["error"]) == (twin["correct"], twin["error"])
        assert row["ms"] > 0 if row["error"] is None else row["ms"] is None
        assert row["node"] == platform.node() and row["gpu_name"] == row["device"] == device
        assert row["gpu_uuid"] is None and row["backend"] == "interpreter"
    for row in local.rows:  # a local run records where it ran the same way
        assert (row["node"], row["gpu_name"], row["gpu_uuid"]) == (platform.node(), device,
                                                                   None)
    manifest = remote.manifest
    workers = manifest["cluster"]["workers"]
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    assert all(w["points"] >= 1 for w in workers) and manifest["cluster"]["retried"] == []
    assert sum(w["points"] for w in workers) == len(points)
    assert manifest["cluster"]["models"] == [device] and manifest["device"]["name"] == device
    assert manifest["timer"]["cache"] == local.manifest["timer"]["cache"]


def _double(inputs, mode):
    out = torch.empty_like(inputs["x"])
    return lambda: (torch.mul(inputs["x"], 2, out=out),)


def _fragile(marker: Path):
    """Kills its worker process while the point is checked: at N=33 the first time only
    (``marker`` remembers it), at N=65 every time."""

    def build(inputs, mode):
        n = inputs["x"].numel()
        if n == 65 or (n == 33 and not marker.exists()):
            marker.write_text(str(os.getpid()))
            os._exit(1)
        return _double(inputs, mode)

    return build


def _toy(marker: Path, *ns: int):
    op = DoubleOp((Impl("good", "triton", _double), Impl("fragile", "triton", _fragile(marker)),
                   Impl("torch", "baseline", _double)),
                  presets={"tiny": [{"N": n} for n in ns]}, dtypes=(torch.float32,),
                  tolerance=Tolerance(1e-6, 1e-6))
    points, _ = sweep_mod.plan([op], {"toy": op.presets["tiny"]}, {"toy": [torch.float32]},
                               backend_name="interpreter")
    return points


def test_a_killed_worker_loses_nothing(ray_cluster, tmp_path):
    points = _toy(tmp_path / "died-once", 17, 33, 65)
    result = cluster.sweep(points, tmp_path / "run", ray_cluster, resume=False, options=FAST,
                           argv=["test"], selection={}, hooks=[])
    rows = read_results(tmp_path / "run" / "results.jsonl")
    keys = _keys(rows)
    assert len(keys) == len(set(keys)) == 9
    assert sorted(keys) == sorted(p.key(i) for p in points for i in p.impls)
    by = {(r["impl"], r["shape"]["N"]): r for r in rows}
    for impl in ("good", "fragile", "torch"):
        # Untouched point: measured as usual.
        assert by[(impl, 17)]["correct"] is True and "retried_after" not in by[(impl, 17)]
        # Killed once: measured again on another worker, and says why.
        again = by[(impl, 33)]
        assert again["correct"] is True and again["error"] is None and again["ms"] > 0
        assert "died while measuring this point" in again["retried_after"]
        # Killed twice: recorded as failed with both reasons, never a third time.
        lost = by[(impl, 65)]
        assert lost["ms"] is None and lost["correct"] is None
        assert lost["error"].count("died while measuring this point") == 2
        assert lost["error"].endswith("not retried again")
    retried = result.manifest["cluster"]["retried"]
    assert sorted(r["retried"] for r in retried) == [False, True, True]
    assert len(result.manifest["cluster"]["workers"]) >= 2
    assert result.manifest["status"] == "complete"


def test_an_interrupted_driver_resumes_on_the_cluster_and_locally(ray_cluster, tmp_path):
    points = _toy(tmp_path / "never", 5, 6, 7, 8, 9, 10)
    out = tmp_path / "run"

    def stop_after(n):
        def progress(done, total, label, status):
            if status == "ok" and done >= n:
                raise KeyboardInterrupt
        return progress

    def sweep_on_ray(resume, progress):
        # "fragile" dies only at N 33 and 65: here it is as good as "good".
        return cluster.sweep(points, out, ray_cluster, resume=resume, options=FAST,
                             argv=["test"], selection={}, hooks=[], progress=progress)

    first = sweep_on_ray(False, stop_after(1))
    assert first.interrupted and first.manifest["status"] == "interrupted"
    kept = {point_key(r): r for r in read_results(out / "results.jsonl")}
    assert 3 <= len(kept) < 18 and len(kept) % 3 == 0  # whole points only

    second = sweep_on_ray(True, stop_after(len(kept) // 3 + 1))
    assert second.interrupted and second.points_done_before == len(kept) // 3
    rows = read_results(out / "results.jsonl")
    assert len(_keys(rows)) == len(set(_keys(rows))) > len(kept)
    assert all({point_key(r): r for r in rows}[k] == row for k, row in kept.items())
    kept = {point_key(r): r for r in rows}

    local = sweep_mod.sweep(points, out, resume=True, options=FAST, argv=["test"],
                            selection={}, hooks=[])
    rows = read_results(out / "results.jsonl")
    assert sorted(_keys(rows)) == sorted(p.key(i) for p in points for i in p.impls)
    assert len(rows) == 18 and local.new_rows == 18 - len(kept)
    assert all({point_key(r): r for r in rows}[k] == row for k, row in kept.items())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["resumed"]) == 2


def test_inspect_compiles_on_the_cluster_into_the_local_cache(ray_cluster, tmp_path,
                                                              monkeypatch):
    monkeypatch.setenv("TRITONLAB_CACHE_DIR", str(tmp_path / "cache"))
    op = registry.discover()["matmul"]
    with insp.compile_on_ray(ray):
        report = insp.run([op], [insp.parse_arch("sm_80")], [torch.float16], first=1)
    assert report.compiled >= 2 and not report.failed
    assert all(r["status"] == "ok" and r["registers"] > 0 for r in report.rows)
    root = insp.cache_dir()
    assert root == tmp_path / "cache" / "inspect"
    for r in report.rows:
        assert (entry_dir(root, r["key"]) / "meta.json").is_file()
    again = insp.run([op], [insp.parse_arch("sm_80")], [torch.float16], first=1)
    assert again.compiled == 0 and again.cached == report.compiled + report.cached


def test_ray_flag_without_ray_exits_2_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without the extra
    for args in (["sweep", "matmul", "--shape", "8x8x8", "--ray"],
                 ["inspect", "matmul", "--ray", "auto"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert "pip install 'tritonlab[ray]'" in result.output


@pytest.mark.parametrize("args, message", [
    (["sweep", "--ray", "matmul"], "not a cluster address"),
    (["sweep", "matmul", "--workers", "2"], "--workers needs --ray"),
])
def test_bad_ray_usage_exits_2(args, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


class _Done:
    """A finished task of :class:`_FakeRay`: its value, or the error ``get`` raises."""

    def __init__(self, value=None, error=None):
        self.value, self.error = value, error


class _FakeRay:
    """Ray's API as the driver uses it, in this process, with workers on GPU models taken
    from ``models`` in turn: the dispatch of a heterogeneous cluster without its GPUs."""

    class exceptions:
        RayError = RuntimeError

        class RayActorError(RuntimeError):
            pass

        class RayTaskError(RuntimeError):
            cause = None

    def __init__(self, models):
        self.models = list(models)
        self.started = 0

    def remote(self, cls):
        fake = self

        class Handle:
            def __init__(self, backend_name):
                self.model = fake.models[fake.started % len(fake.models)]
                self.start = _Method(lambda options, hooks: {
                    "node": f"node-{fake.started}", "gpu_name": self.model,
                    "gpu_uuid": f"GPU-{self.model}", "backend": backend_name,
                    "device": {"name": self.model, "kind": "cuda"},
                    "timer": {"timer": "cuda_events", "cache": "cold"},
                    "peaks": {"device": self.model}, "pid": fake.started})
                self.measure = _Method(self._measure)
                self.close = _Method(lambda: None)
                fake.started += 1

            def _measure(self, spec, names):
                point = sweep_mod.point_from_spec(spec)
                return [sweep_mod.failed_row(point, point.op.impl(n), backend="cuda",
                                             device=self.model, timer={}, seed=0,
                                             error=f"measured on {self.model}")
                        for n in names]

        class Actor:
            def options(self, **_):
                return self

            def remote(self, backend_name):
                return Handle(backend_name)

        return Actor()

    def wait(self, futures, num_returns=1, timeout=None):
        return list(futures[:num_returns]), list(futures[num_returns:])

    def get(self, future):
        if future.error:
            raise future.error
        return future.value

    def kill(self, handle):
        pass


class _Method:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        return _Done(self.fn(*args))


def test_each_gpu_model_measures_every_point_once(tmp_path, monkeypatch):
    fake = _FakeRay(["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"])
    monkeypatch.setattr(cluster, "import_ray", lambda: fake)
    points = _toy(tmp_path / "never", 5, 6, 7)
    gpus = cluster.Cluster(address="10.0.0.1:6379", started_here=False, gpus=4, cpus=64)
    result = cluster.sweep(points, tmp_path / "run", gpus, resume=False, options=FAST,
                           argv=["test"], selection={}, hooks=[])
    rows = read_results(tmp_path / "run" / "results.jsonl")
    got = sorted((r["device"], point_key(r)) for r in rows)
    want = sorted((m, p.key(i)) for m in fake.models for p in points for i in p.impls)
    assert got == want  # every point on each model, once
    assert all(r["error"] == f"measured on {r['device']}" for r in rows)
    manifest = result.manifest
    assert manifest["cluster"]["models"] == fake.models and result.points_total == 6
    assert manifest["device"]["name"] == " + ".join(fake.models)
    assert sorted(manifest["peaks_by_device"]) == sorted(fake.models)
    assert len(manifest["cluster"]["workers"]) == 3  # one per point, at most the GPUs
    views = load_run(tmp_path / "run").by_device()
    assert [v.model for v in views] == fake.models and all(len(v.points) == 9 for v in views)
