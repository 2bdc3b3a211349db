"""Nothing lost: what a command may overwrite or remove, one writer per run directory, and
runs stopped at any moment (SIGINT, SIGTERM, SIGKILL) that resume without losing or
repeating a finished point or phase (tritonlab/runs/store.py, tritonlab/errors.py)."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT
from helpers import wait_for

from tritonlab import backend
from tritonlab.cli import cli
from tritonlab.errors import UsageError
from tritonlab.runs import store
from tritonlab.runs import sweep as sweep_mod
from tritonlab.runs.records import point_key
from tritonlab.runs.store import read_results

SWEEP = ["sweep", "matmul", "--preset", "tiny", "--dtype", "float32"]


@pytest.fixture(autouse=True)
def _interpreter(be):
    if be.is_gpu:
        pytest.skip("sized for the interpreter's timings")


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tritonlab.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)




def _lock_holder(run: Path) -> str | None:
    try:
        return (run / store.LOCK_FILE).read_text().strip()
    except OSError:
        return None


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _clean_run_keys() -> list:
    """The point keys a clean run of SWEEP measures: what the planner gives it."""
    points, _, _ = sweep_mod.plan_from_args(["matmul"], "tiny", [], ["float32"], [], [])
    return sorted(p.key(impl) for p in points for impl in p.impls)


# ---------------------------------------------------- only what a command proves it wrote

def _user_sweep_run(path: Path) -> None:
    """A user's own sweep run (a real manifest, as `tritonlab sweep --out` writes it)."""
    manifest = store.build_manifest(kind="sweep", backend=backend.current(),
                                    device={"name": "cpu"}, argv=["tritonlab", "sweep"],
                                    options={})
    store.RunDir.create(path, manifest).release()
    (path / store.RESULTS).write_text('{"schema_version": 1, "op": "matmul"}\n')


def test_demo_refuses_a_directory_holding_a_users_run_and_deletes_nothing(tmp_path):
    # A user's sweep run and their report of it, where the demo writes its own.
    mine = tmp_path / "mine"
    _user_sweep_run(mine / "sweep")
    (mine / "report.md").write_text("my notes\n")
    before = _snapshot(mine)
    r = CliRunner().invoke(cli, ["demo", "--out", str(mine)])
    assert r.exit_code == 2, r.output
    assert len(r.stderr.strip().splitlines()) == 1 and "did not write" in r.stderr
    assert _snapshot(mine) == before

    # Inside a directory a previous demo wrote, a run that demo did not write stays too.
    ours = tmp_path / "ours"
    with store.claim_dir(ours, "demo"):
        pass
    _user_sweep_run(ours / "sweep")
    before = _snapshot(ours)
    r = CliRunner().invoke(cli, ["demo", "--out", str(ours)])
    assert r.exit_code == 2 and "not written by the previous tritonlab demo" in r.stderr
    assert _snapshot(ours) == before


@pytest.mark.parametrize("args", [
    ["report", "{run}", "-o", "{out}"],
    ["inspect", "matmul", "--dump", "{out}"],
    ["gpu-check", "--out", "{out}", "--only", "nvidia-smi"],
    ["sweep", "matmul", "--shape", "8x8x8", "--out", "{out}"],
    ["contrast", "--out", "{out}"],
])
def test_writing_commands_refuse_a_directory_they_did_not_write(tmp_path, args):
    run = tmp_path / "run"
    _user_sweep_run(run)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("mine\n")
    before = _snapshot(tmp_path)
    r = CliRunner().invoke(cli, [a.format(run=run, out=out) for a in args])
    assert r.exit_code == 2, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in r.output
    assert _snapshot(tmp_path) == before


def test_claim_dir_accepts_only_new_empty_or_its_own_directories(tmp_path):
    claim = store.claim_dir(tmp_path / "new", "report")
    with pytest.raises(UsageError, match="in use by another tritonlab process"):
        store.claim_dir(tmp_path / "new", "report")
    claim.release()
    (tmp_path / "empty").mkdir()
    store.claim_dir(tmp_path / "empty", "report").release()
    again = store.claim_dir(tmp_path / "new", "report")  # its own: a report may replace it
    assert again.previous["write_id"] == claim.mark["write_id"]
    again.release()
    with pytest.raises(UsageError, match="holds the output of tritonlab report"):
        store.claim_dir(tmp_path / "new", "inspect")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        store.claim_dir(tmp_path / "file", "report")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == [store.OWNER_FILE]


# --------------------------------------------------------- one writer per run directory

def test_a_second_process_on_a_run_directory_exits_2_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    first = _start(*SWEEP, "--budget", "0.3", "--out", str(out))
    wait_for(lambda: _lock_holder(out) == str(first.pid), first, "it locked its run")
    fresh = _start(*SWEEP, "--out", str(out))
    resume = _start(*SWEEP, "--out", str(out), "--resume")
    for second in (fresh, resume):
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2, err.decode()
        assert f"in use by another tritonlab process (pid {first.pid}" in err.decode()
    assert first.poll() is None, "the first sweep ended before the second ones were refused"
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err.decode()
    keys = [point_key(r) for r in read_results(out / store.RESULTS)]
    assert sorted(keys) == _clean_run_keys()
    assert not (out / store.LOCK_FILE).exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------- stopped at any moment, then resumed

def test_a_sweep_killed_at_random_moments_resumes_without_losing_or_repeating_a_point(
        tmp_path):
    rng = random.Random(20240611)
    out = tmp_path / "run"
    args = [*SWEEP, "--budget", "0.05", "--out", str(out)]
    results = out / store.RESULTS
    kept: dict = {}
    for i, sig in enumerate((signal.SIGINT, signal.SIGTERM, signal.SIGKILL)):
        p = _start(*args, *(("--resume",) if i else ()))
        wait_for(lambda p=p: _lock_holder(out) == str(p.pid), p, "it locked its run")
        # Paced by the run's progress, not the clock (a fast machine finishes the sweep
        # within any fixed sleep): after 0, 1 or 2 more rows, at a random moment of the next.
        target = len(kept) + rng.randint(0, 2)
        wait_for(lambda target=target: len(read_results(results, lambda _m: None)
                                           if results.exists() else []) >= target, p,
                 f"it wrote {target} rows")
        time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
        if sig != signal.SIGKILL:
            assert p.returncode == 130, err.decode()
            assert json.loads((out / store.MANIFEST).read_text())["status"] == "interrupted"
        rows = read_results(results, lambda _m: None)
        keys = [point_key(r) for r in rows]
        assert len(keys) == len(set(keys)), f"a point repeats after {sig.name}"
        now = dict(zip(keys, rows))
        assert all(now.get(k) == row for k, row in kept.items()), f"lost after {sig.name}"
        kept = now
    assert len(kept) < len(_clean_run_keys()), "the kills came too late to test anything"
    p = subprocess.run([sys.executable, "-m", "tritonlab.cli", *args, "--resume", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    rows = read_results(results)
    keys = [point_key(r) for r in rows]
    assert sorted(keys) == _clean_run_keys()
    final = dict(zip(keys, rows))
    assert all(final[k] == row for k, row in kept.items())
    manifest = json.loads((out / store.MANIFEST).read_text())
    assert manifest["status"] == "complete" and len(manifest["resumed"]) == 3


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_sweep_stopped_before_its_first_point_exits_130(tmp_path, sig):
    out = tmp_path / "run"
    p = _start(*SWEEP, "--out", str(out))
    wait_for(lambda: (out / store.MANIFEST).is_file(), p, "it wrote its manifest")
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err.decode()
    assert "Traceback" not in err.decode()
    assert json.loads((out / store.MANIFEST).read_text())["status"] == "interrupted"


def test_an_interrupted_contrast_keeps_its_phases_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["contrast", "--model", "ffn", "--mode", "infer", "--batch", "1", "--batch", "2", "--batch", "3",
            "--duration", "1", "--idle", "0", "--warmup", "0", "--cooldown", "0",
            "--interval-ms", "50", "--out", str(out)]
    doc_path = out / store.CONTRAST

    def measured() -> list:
        try:
            return json.loads(doc_path.read_text())["phases"]
        except (OSError, ValueError):
            return []

    p = _start(*args)
    wait_for(lambda: len(measured()) >= 1, p, "it measured a phase")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err.decode()
    doc = json.loads(doc_path.read_text())
    assert doc["status"] == "interrupted" and doc["verdict"] is None
    kept = {ph["name"]: ph for ph in doc["phases"]}
    assert 1 <= len(kept) < 6 and all(ph["steps"] >= 1 for ph in kept.values())
    assert json.loads((out / store.MANIFEST).read_text())["status"] == "interrupted"

    r = subprocess.run([sys.executable, "-m", "tritonlab.cli", *args, "--resume", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(doc_path.read_text())
    assert doc["status"] == "complete" and doc["verdict"] is not None
    names = [ph["name"] for ph in doc["phases"]]
    assert names == [f"infer/{i}/b{b}" for b in (1, 2, 3) for i in ("triton", "torch")]
    assert all(doc["phases"][names.index(n)] == ph for n, ph in kept.items())
    assert r.stderr.count("already measured") == len(kept)
    manifest = json.loads((out / store.MANIFEST).read_text())
    assert manifest["status"] == "complete" and len(manifest["resumed"]) == 1
