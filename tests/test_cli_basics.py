"""The CLI through a real subprocess: list and check, every kind of bad input (exit 2), the
group's --backend (applied before any kernel is decorated) and sweep progress."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli


def test_list_json_is_clean_and_lists_matmul():
    r = run_cli("list", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # stdout holds one JSON document and nothing else
    ops = {op["name"]: op for op in doc["ops"]}
    assert doc["backend"] in ("cuda", "interpreter")
    mm = ops["matmul"]
    assert mm["dims"] == ["M", "N", "K"]
    assert {"fwd", "infer"} <= set(mm["modes"])
    assert {"tiny", "quick", "square", "llm"} <= set(mm["presets"])
    assert {i["name"] for i in mm["impls"]} >= {"triton", "torch"}


def test_list_table_names_backend():
    r = run_cli("list")
    assert r.returncode == 0, r.stderr
    assert "backend:" in r.stdout and "matmul" in r.stdout


def test_check_matmul_passes_and_json_reports_every_case():
    r = run_cli("check", "matmul", "--shape", "33x17x65", "--shape", "1x9x130", "--seeds", "2",
                "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["passed"] is True
    cases = doc["cases"]
    # impls x modes x dtypes x shapes x seeds, every one present
    keys = {(c["impl"], c["mode"], c["dtype"], c["shape"]["M"], c["seed"]) for c in cases}
    assert len(keys) == len(cases)
    assert {c["impl"] for c in cases} == {"triton", "torch"}
    n_dtypes = len({c["dtype"] for c in cases})
    assert len(cases) == 2 * 2 * n_dtypes * 2 * 2  # impls, modes, dtypes, shapes, seeds
    for c in cases:
        if c["correct"] is None:
            continue
        assert c["correct"] is True
        assert c["rel_fro_err"] <= c["tol_rel_fro"] and c["max_rel_err"] <= c["tol_max_rel"]


def test_check_table_and_backend_override():
    r = run_cli("--backend", "interpreter", "check", "matmul", "--impl", "triton",
                "--dtype", "float16", "--mode", "fwd")
    assert r.returncode == 0, r.stderr
    assert "interpreter" in r.stdout and "0 failed" in r.stdout


def test_check_bfloat16_on_interpreter_is_skipped_with_reason(be):
    if be.is_gpu:
        pytest.skip("on a GPU bf16 is checked for real")
    r = run_cli("check", "matmul", "--dtype", "bfloat16", "--impl", "triton", "--json")
    assert r.returncode == 2, r.stderr  # every case skipped: nothing was checked
    doc = json.loads(r.stdout)
    cases = doc["cases"]
    assert cases and all(c["correct"] is None and "interpreter" in c["error"] for c in cases)
    assert doc["passed"] is False and "every case was skipped" in doc["error"]


@pytest.mark.parametrize("args, needle", [
    (["check", "nosuchop"], "valid ops: "),
    (["check", "matmul", "--shape", "12x"], "malformed shape"),
    (["check", "matmul", "--shape", "12x12"], "takes 3"),
    (["check", "matmul", "--shape", "0x4x4"], "must be positive"),
    (["check", "matmul", "--shape", "-3x4x4"], "must be positive"),
    (["check", "matmul", "--dtype", "int8"], "float16"),
    (["check", "matmul", "--impl", "cublas"], "valid impls: triton, torch"),
    (["check", "matmul", "--mode", "sideways"], "valid modes"),
    (["--backend", "tpu", "list"], "interpreter"),
])
def test_bad_input_exits_2_with_the_valid_choices(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert needle in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


# ------------------------------------------------------------ the group and its subcommands

def test_help_lists_every_command():
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    for name in ("list", "check", "sweep", "compare", "contrast", "device", "inspect", "report",
                 "demo", "new", "gpu-check"):
        assert f"  {name} " in r.stdout


def test_importing_the_cli_decorates_no_kernel():
    # The backend must be chosen before the first kernel is decorated, so the group itself
    # imports no kernel; a subcommand's module is imported once --backend was applied.
    code = ("import sys, tritonlab.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('tritonlab.kernels', "
            "'tritonlab.ops', 'triton.'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_backend_from_the_environment_and_the_flag():
    r = run_cli("list", "--json", env={"TRITONLAB_BACKEND": "interpreter"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backend"] == "interpreter"
    r = run_cli("--backend", "nope", "list", env={"TRITONLAB_BACKEND": "interpreter"})
    assert r.returncode == 2 and "nope" in r.stderr and r.stdout == ""


def test_cuda_without_a_gpu_is_one_line_and_exit_2(be):
    if be.is_gpu:
        pytest.skip("a GPU is present")
    r = run_cli("--backend", "cuda", "list")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "error: backend 'cuda' requested but torch sees no CUDA GPU; use --backend interpreter"]


def test_sweep_progress_goes_to_stderr_and_is_off_with_json(tmp_path):
    args = ["sweep", "matmul", "--shape", "64x64x64", "--dtype", "float32", "--impl", "triton",
            "--budget", "0.05"]
    r = run_cli(*args, "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    assert "[2/2] matmul" in r.stderr and "[2/2]" not in r.stdout
    r = run_cli(*args, "--out", str(tmp_path / "b"), "--json")
    assert r.returncode == 0, r.stderr
    assert "[1/2]" not in r.stderr and len(json.loads(r.stdout)["rows"]) == 2
