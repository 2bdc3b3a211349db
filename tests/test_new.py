"""`tritonlab new`: scaffolded ops work end to end with no other edit (in a copy of the
package, through the real CLI), and bad names are refused with exit 2 before anything is
written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import ROOT

from tritonlab.cli import cli

NEW_OPS = {"myop": "matmul", "mylin": "linear", "mygate": "gated_mlp"}


def _files(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def _run(root: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """A command in the copy, which comes first on the path (ahead of any installed
    tritonlab)."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("TRITONLAB_BACKEND", None)
    return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A copy of the package and tests/conftest.py with the three scaffolded ops in it."""
    root = tmp_path_factory.mktemp("lab")
    shutil.copytree(ROOT / "tritonlab", root / "tritonlab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "tests").mkdir()
    shutil.copy(ROOT / "tests" / "conftest.py", root / "tests" / "conftest.py")
    before = _files(root)
    for name, family in NEW_OPS.items():
        r = _run(root, "-m", "tritonlab.cli", "new", name, "--like", family)
        assert r.returncode == 0, r.stderr
        assert f"wrote {root / 'tritonlab' / 'ops' / f'{name}.py'}" in r.stdout
    expected = {Path(p) for name in NEW_OPS for p in (
        f"tritonlab/kernels/{name}.py", f"tritonlab/ops/{name}.py", f"tests/test_{name}.py")}
    assert _files(root) - before == expected and before <= _files(root)
    return root


@pytest.mark.slow
def test_scaffolded_ops_are_listed_checked_swept_and_reported(lab):
    r = _run(lab, "-m", "tritonlab.cli", "list", "--json")
    assert r.returncode == 0, r.stderr
    ops = {op["name"]: op for op in json.loads(r.stdout)["ops"]}
    assert set(NEW_OPS) <= set(ops) and "matmul" in ops
    assert ops["mylin"]["modes"] == ["fwd", "bwd", "fwd_bwd", "infer"]
    assert ops["mygate"]["fused"] is True and "tiny" in ops["myop"]["presets"]

    # Every impl, mode and dtype on one odd shape; the scaffolded tests cover the presets.
    r = _run(lab, "-m", "tritonlab.cli", "check", *NEW_OPS, "--shape", "97x83x131", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["passed"] and {c["op"] for c in doc["cases"]} == set(NEW_OPS)
    assert all(c["correct"] for c in doc["cases"])

    run_dir = lab / "runs" / "tiny"
    r = _run(lab, "-m", "tritonlab.cli", "sweep", *NEW_OPS, "--preset", "tiny", "--mode", "infer",
             "--dtype", "float32", "--budget", "0.05", "--out", str(run_dir), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert {row["op"] for row in rows} == set(NEW_OPS)
    assert all(row["error"] is None and row["flops"] > 0 and row["bytes"] > 0 for row in rows)

    r = _run(lab, "-m", "tritonlab.cli", "report", str(run_dir))
    assert r.returncode == 0, r.stderr
    assert "mygate" in (run_dir / "report" / "report.md").read_text()


@pytest.mark.slow
def test_scaffolded_tests_pass(lab):
    r = _run(lab, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             *(f"tests/test_{name}.py" for name in NEW_OPS))
    assert r.returncode == 0, r.stdout[-3000:]
    assert " passed" in r.stdout and "failed" not in r.stdout


@pytest.fixture
def empty_lab(tmp_path):
    """The two package folders and a tests folder, nothing else."""
    for sub in ("pkg/kernels", "pkg/ops", "tests"):
        (tmp_path / sub).mkdir(parents=True)
    for sub in ("kernels", "ops"):
        (tmp_path / "pkg" / sub / "__init__.py").write_text("")
    return tmp_path


@pytest.mark.parametrize("name, needle", [
    ("class", "keyword"),
    ("match", "keyword"),
    ("matmul", "exists already; existing ops: "),
    ("my-op", "not a Python identifier"),
    ("2op", "not a Python identifier"),
    ("MyOp", "lowercase"),
    ("_hidden", "lowercase"),
    ("torch", "importable module"),
    ("x" * 33, "at most 32"),
])
def test_bad_names_exit_2_and_write_nothing(empty_lab, name, needle):
    before = _files(empty_lab)
    r = CliRunner().invoke(cli, ["new", name, "--package-dir", str(empty_lab / "pkg"),
                                 "--tests-dir", str(empty_lab / "tests")])
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert _files(empty_lab) == before


def test_an_existing_file_is_never_overwritten(empty_lab):
    (empty_lab / "tests" / "test_fresh.py").write_text("# mine\n")
    (empty_lab / "pkg" / "ops" / "scratch.py").write_text("# mine\n")
    args = ["--package-dir", str(empty_lab / "pkg"), "--tests-dir", str(empty_lab / "tests")]
    for name, needle in (("fresh", "test_fresh.py exists already"),
                         ("scratch", "tritonlab.ops.scratch exists already")):
        before = _files(empty_lab)
        r = CliRunner().invoke(cli, ["new", name, *args])
        assert r.exit_code == 2 and needle in r.output, r.output
        assert _files(empty_lab) == before
    assert (empty_lab / "tests" / "test_fresh.py").read_text() == "# mine\n"
    r = CliRunner().invoke(cli, ["new", "fresh2", "--like", "gated_mlp", *args])
    assert r.exit_code == 0, r.output
    assert "def fresh2(" in (empty_lab / "pkg" / "kernels" / "fresh2.py").read_text()
    assert r.output.count("wrote ") == 3


def test_unknown_family_and_missing_tests_folder_exit_2(tmp_path, empty_lab):
    r = CliRunner().invoke(cli, ["new", "fresh", "--like", "conv"])
    assert r.exit_code == 2 and "gated_mlp" in r.output
    r = CliRunner().invoke(cli, ["new", "fresh", "--package-dir", str(empty_lab / "pkg")])
    assert r.exit_code == 2 and "--tests-dir" in r.output
    r = CliRunner().invoke(cli, ["new", "fresh", "--package-dir", str(empty_lab)])
    assert r.exit_code == 2 and "not a tritonlab package" in r.output
