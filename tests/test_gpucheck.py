"""`tritonlab gpu-check` (tritonlab/jobs/gpucheck.py): the step orchestration and its failure
recording, on the CPU with stand-in steps; the real steps' command lines and verifiers; how
the command finds the repository's tests."""

from __future__ import annotations

import json
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import ROOT

from tritonlab.cli import cli
from tritonlab.jobs import gpucheck
from tritonlab.jobs.gpucheck import Step, junit_counts, run_steps


def py(code: str):
    return lambda out: [sys.executable, "-c", code]


SAVES_ON_SIGINT = """
import pathlib, sys, time
try:
    time.sleep(60)
except KeyboardInterrupt:
    pathlib.Path(sys.argv[1]).write_text("saved")
    sys.exit(130)
"""


def test_every_step_runs_and_each_failure_is_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "GRACE_S", 5.0)
    saved = tmp_path / "saved.txt"
    steps = [
        Step("ok", 20, py("print('hello'); import sys; print('warn', file=sys.stderr)")),
        Step("fails", 20, py("import sys; sys.exit(3)")),
        Step("slow", 2, lambda out: [sys.executable, "-c", SAVES_ON_SIGINT, str(saved)]),
        Step("missing", 20, lambda out: [str(tmp_path / "no-such-program")]),
        Step("unverified", 20, py("pass"), verify=lambda out: (False, {"why": "no report"})),
        Step("verifier-crash", 20, py("pass"), verify=lambda out: 1 / 0),
        Step("last", 20, py("print('still ran')"), verify=lambda out: (True, {"n": 1})),
    ]
    out = tmp_path / "check"
    summary = run_steps(steps, out, total_budget_s=120)
    by = {s["name"]: s for s in summary["steps"]}
    assert [s["name"] for s in summary["steps"]] == [s.name for s in steps]
    assert by["ok"]["status"] == "passed" and by["ok"]["rc"] == 0
    assert (out / "ok.out").read_text() == "hello\n" and "warn" in (out / "ok.log").read_text()
    assert by["fails"]["status"] == "failed" and by["fails"]["rc"] == 3
    # Past its budget a step gets SIGINT first, so it can save its work.
    assert by["slow"]["status"] == "timeout" and saved.read_text() == "saved"
    assert 2 <= by["slow"]["seconds"] < 10
    assert by["missing"]["status"] == "error" and "FileNotFoundError" in by["missing"]["note"]
    assert by["unverified"]["status"] == "failed"
    assert by["unverified"]["details"] == {"why": "no report"}
    assert by["verifier-crash"]["status"] == "failed"
    assert "ZeroDivisionError" in by["verifier-crash"]["details"]["verify_error"]
    assert by["last"]["status"] == "passed" and by["last"]["details"] == {"n": 1}
    assert summary["passed"] is False
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary and on_disk["finished"]
    md = (out / "summary.md").read_text()
    assert "| slow | timeout |" in md and "| last | passed |" in md


def test_steps_that_no_longer_fit_the_total_budget_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(gpucheck, "MIN_STEP_S", 1.0)
    steps = [Step("first", 30, py("import time; time.sleep(2)")),
             Step("second", 30, py("pass"))]
    t0 = time.monotonic()
    summary = run_steps(steps, tmp_path, total_budget_s=2.5)
    assert time.monotonic() - t0 < 10
    first, second = summary["steps"]
    assert first["status"] == "passed" and first["budget_s"] == pytest.approx(2.5, abs=0.1)
    assert second["status"] == "skipped" and "left" in second["note"]
    assert summary["passed"] is False


def test_all_passing_steps_pass(tmp_path):
    summary = run_steps([Step("a", 20, py("pass")), Step("b", 20, py("pass"))], tmp_path)
    assert summary["passed"] is True


def _step(name):
    return next(s for s in gpucheck.STEPS if s.name == name)


def pytest_args(argv):
    """The values of pytest's own options (after ``-m pytest``)."""
    args = argv[argv.index("pytest") + 1:]
    return {a: b for a, b in zip(args, args[1:]) if a.startswith("-")}


def test_default_steps_fit_eight_minutes_and_run_the_right_commands(tmp_path):
    names = [s.name for s in gpucheck.STEPS]
    assert names == ["nvidia-smi", "pytest-gpu", "pytest-cuda-lane", "sweep-quick",
                     "sweep-attention", "contrast", "report"]
    assert sum(s.budget_s for s in gpucheck.STEPS) <= gpucheck.TOTAL_BUDGET_S <= 480
    pytest_argv = _step("pytest-gpu").argv(tmp_path)
    assert pytest_argv[:5] == ["env", "TRITONLAB_AUTOTUNE=0", sys.executable, "-m", "pytest"]
    assert pytest_args(pytest_argv)["-m"] == "gpu" and pytest_argv[-1] == "tests"
    assert f"--junitxml={tmp_path / 'pytest-gpu.xml'}" in pytest_argv
    lane_argv = _step("pytest-cuda-lane").argv(tmp_path)
    assert lane_argv[:3] == ["env", "TRITONLAB_AUTOTUNE=0", "TRITONLAB_BACKEND=cuda"]
    assert pytest_args(lane_argv)["-m"] == "not gpu"
    assert lane_argv[-2:] == ["tests/test_matmul.py", "tests/test_linear.py"]
    assert f"--junitxml={tmp_path / 'pytest-cuda-lane.xml'}" in lane_argv
    sweep_argv = _step("sweep-quick").argv(tmp_path)
    assert sweep_argv[1:3] == ["-m", "tritonlab.cli"]
    assert ["--backend", "cuda", "sweep"] == sweep_argv[3:6]
    assert sweep_argv[sweep_argv.index("--preset") + 1] == "quick"
    assert sweep_argv[sweep_argv.index("--out") + 1] == str(tmp_path / "sweep-quick")
    attention_argv = _step("sweep-attention").argv(tmp_path)
    assert attention_argv[3:8] == ["--backend", "cuda", "sweep", "attention", "decode_attention"]
    assert attention_argv[attention_argv.index("--out") + 1] == str(tmp_path / "sweep-attention")
    contrast_argv = _step("contrast").argv(tmp_path)
    assert contrast_argv[3:6] == ["--backend", "cuda", "contrast"]
    report_argv = _step("report").argv(tmp_path)
    assert report_argv[6:9] == [str(tmp_path / "sweep-quick"), str(tmp_path / "sweep-attention"),
                                str(tmp_path / "contrast")]


def _junit(path, tests, failures=0, errors=0, skipped=0):
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" '
                    f'tests="{tests}" failures="{failures}" errors="{errors}" '
                    f'skipped="{skipped}"></testsuite></testsuites>')


def test_pytest_verifier_needs_tests_that_ran_and_passed(tmp_path):
    xml = tmp_path / "pytest-gpu.xml"
    verify = _step("pytest-gpu").verify
    assert verify(tmp_path)[0] is False  # no XML at all
    _junit(xml, tests=12, skipped=2)
    ok, counts = verify(tmp_path)
    assert ok and counts == {"tests": 12, "failures": 0, "errors": 0, "skipped": 2, "ran": 10}
    _junit(xml, tests=12, skipped=12)  # everything skipped: no GPU seen
    assert verify(tmp_path)[0] is False
    _junit(xml, tests=12, failures=1)
    assert verify(tmp_path)[0] is False
    assert junit_counts(xml)["failures"] == 1


def test_sweep_verifier_reads_the_run_directory(tmp_path):
    run = tmp_path / "sweep-quick"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps(
        {"backend": "cuda", "status": "complete", "device": {"name": "NVIDIA H200"}}))
    row = {"op": "matmul", "impl": "triton", "mode": "fwd", "dtype": "float16",
           "shape": {"M": 16, "N": 4096, "K": 4096}, "error": None}
    (run / "results.jsonl").write_text(json.dumps(row) + "\n")
    verify = _step("sweep-quick").verify
    ok, details = verify(tmp_path)
    assert ok and details["device"] == "NVIDIA H200" and details["rows"] == 1
    (run / "results.jsonl").write_text(json.dumps({**row, "error": "OOM: ..."}) + "\n")
    ok, details = verify(tmp_path)
    assert not ok and details["failed"] == ["matmul triton fwd float16 16x4096x4096: OOM: ..."]


def test_command_lists_steps_rejects_unknown_ones_and_records_a_missing_gpu(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["gpu-check", "--list"])
    assert r.exit_code == 0 and "pytest-cuda-lane" in r.output
    r = runner.invoke(cli, ["gpu-check", "--only", "nope", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "valid steps: nvidia-smi" in r.output
    r = runner.invoke(cli, ["gpu-check", "--only", "nvidia-smi", "--repo", str(ROOT),
                            "--out", str(tmp_path / "c")])
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert [s["name"] for s in summary["steps"]] == ["nvidia-smi"]
    assert r.exit_code == (0 if summary["passed"] else 1)
    assert "summary.md" in r.output


def test_the_repository_is_found_from_the_tests_not_the_package_layout(tmp_path, monkeypatch):
    assert gpucheck.find_repo(ROOT) == ROOT
    assert gpucheck.find_repo(cwd=ROOT / "docs") == ROOT  # a parent of the current directory
    # Outside any checkout, the directory above the imported package (an editable install).
    assert gpucheck.find_repo(cwd=tmp_path) == ROOT
    with pytest.raises(gpucheck.UsageError, match="no tests/conftest.py"):
        gpucheck.find_repo(tmp_path)
    # An installed package with no tests beside it, run outside a checkout: exit 2, one line.
    monkeypatch.setattr(gpucheck, "__file__", str(tmp_path / "site" / "tritonlab" / "jobs"
                                                  / "gpucheck.py"))
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli, ["gpu-check", "--only", "nvidia-smi"])
    assert r.exit_code == 2 and "cannot find the lab's tests/" in r.output
    assert "--repo" in r.output and not (tmp_path / "reports").exists()


def test_steps_run_in_the_repository_with_its_package_first(tmp_path):
    env = gpucheck.step_env(ROOT)
    assert env["PYTHONPATH"].split(":")[0] == str(ROOT)
    step = Step("where", 20, py("import os, tritonlab; print(os.getcwd()); "
                                "print(tritonlab.__file__)"))
    run_steps([step], tmp_path / "out", repo=ROOT, env=env)
    cwd, package = (tmp_path / "out" / "where.out").read_text().split()
    assert cwd == str(ROOT) and package.startswith(str(ROOT / "tritonlab"))


def test_contrast_and_report_verifiers(tmp_path):
    contrast_verify, report_verify = _step("contrast").verify, _step("report").verify
    (tmp_path / "contrast").mkdir()
    doc = {"phases": [{"name": "train/triton/b1"}, {"name": "infer/triton/b1"}],
           "verdict": {"summary": "x"}}
    (tmp_path / "contrast" / "contrast.json").write_text(json.dumps(doc))
    assert contrast_verify(tmp_path)[0] is True
    doc["phases"][1]["error"] = "OOM"
    (tmp_path / "contrast" / "contrast.json").write_text(json.dumps(doc))
    ok, details = contrast_verify(tmp_path)
    assert ok is False and details["failed"] == ["infer/triton/b1"]
    assert report_verify(tmp_path)[0] is False
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.html").write_text("<html></html>")
    (tmp_path / "report" / "report.md").write_text("# r")
    assert report_verify(tmp_path)[0] is True
