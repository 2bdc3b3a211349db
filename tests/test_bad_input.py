"""Bad input and corrupt files, each class closed for every command: numbers that are NaN,
infinite or out of range, output directories that cannot be written, corrupt run stores,
errors under --json, and a stdout that is closed or full. Each ends in one ``error:`` line
and its exit code, never a traceback, and before any work starts."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from conftest import ROOT

from tritonlab.cli import COMMANDS, cli
from tritonlab.commands import SEED, BoundedInt, FiniteFloat
from tritonlab.errors import UsageError
from tritonlab.output import output_dir

TINY_SWEEP = ["sweep", "matmul", "--shape", "8x8x8", "--dtype", "float32", "--mode", "fwd",
              "--budget", "0.01"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, code: int, needle: str) -> None:
    """Exit ``code``, no traceback, and the error as the last line of stderr, once."""
    assert result.exit_code == code, (result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and needle in lines[-1], result.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real (tiny) sweep run directory; tests copy it before they corrupt it."""
    out = tmp_path_factory.mktemp("bad-input") / "run"
    result = invoke(*TINY_SWEEP, "--out", out)
    assert result.exit_code == 0, result.output
    return out


# --------------------------------------------------------------------- numeric options

def _commands():
    for name, target in COMMANDS.items():
        module, attr = target.split(":")
        yield name, getattr(importlib.import_module(module), attr)


def test_every_numeric_option_has_a_bounded_type():
    """A numeric option added later without a range would take NaN and 1e400 again."""
    numeric = (click.types.IntParamType, click.types.FloatParamType)
    loose = [f"{name} {p.opts[0]}" for name, cmd in _commands() for p in cmd.params
             if isinstance(p.type, numeric) and not isinstance(p.type, (FiniteFloat, BoundedInt))]
    assert loose == []


# (command and the arguments that would make it run, option, a bad value)
NUMERIC = [
    (["sweep", "matmul"], "--budget", "nan"),
    (["sweep", "matmul"], "--budget", "inf"),
    (["sweep", "matmul"], "--budget", "0"),
    (["sweep", "matmul"], "--budget", "1e400"),
    (["sweep", "matmul"], "--seed", str(2**63)),
    (["sweep", "matmul"], "--seed", "-1"),
    (["check", "matmul"], "--seeds", "0"),
    (["check", "matmul"], "--seeds", "nan"),
    (["compare", "A", "B"], "--threshold", "nan"),
    (["compare", "A", "B"], "--threshold", "-inf"),
    (["contrast"], "--cooldown", "nan"),
    (["contrast"], "--warmup", "inf"),
    (["contrast"], "--idle", "-1"),
    (["contrast"], "--duration", "1e30"),
    (["contrast"], "--interval-ms", "nan"),
    (["contrast"], "--batch", "1.5"),
    (["contrast"], "--seed", str(2**64)),
    (["inspect", "matmul"], "--first", "0"),
    (["gpu-check", "--list"], "--total-budget", "nan"),
]


@pytest.mark.parametrize("args, option, value", NUMERIC,
                         ids=[f"{a[0]}{o}={v}" for a, o, v in NUMERIC])
def test_numeric_options_refuse_nan_inf_and_out_of_range(args, option, value, tmp_path):
    result = invoke(*args, option, value)
    label = "batch sizes" if option == "--batch" else option
    assert_one_line_error(result, 2, f"{label} must be ")
    assert "at most" in result.stderr  # the message names the valid range
    assert list(tmp_path.iterdir()) == []


def test_range_types_take_their_bounds_and_nothing_else():
    assert SEED.convert(str(2**63 - 1), None, None) == 2**63 - 1
    assert SEED.convert("0", None, None) == 0
    budget = FiniteFloat(0, 3600, min_open=True, unit="s")
    assert budget.convert("3600", None, None) == 3600.0
    for bad in ("0", "-0.0", "nan", "NaN", "inf", "-inf", "3600.5", "x", ""):
        with pytest.raises(UsageError, match="positive and at most 3600 s"):
            budget.convert(bad, None, None)
    for bad in ("1.0", "1e3", "true", str(2**63)):
        with pytest.raises(UsageError, match="an integer"):
            SEED.convert(bad, None, None)


# ------------------------------------------------------------------- output directories

OUTPUTS = [
    (["sweep", "matmul", "--shape", "8x8x8", "--out"], "the run directory"),
    (["contrast", "--out"], "the run directory"),
    (["report", "RUN", "-o"], "the report directory"),
    (["inspect", "matmul", "--dump"], "the dump directory"),
    (["demo", "--out"], "the demo directory"),
    (["gpu-check", "--only", "nvidia-smi", "--out"], "the directory of the check"),
]


@pytest.mark.parametrize("kind", ["proc", "below-a-file", "a-file"])
@pytest.mark.parametrize("args, what", OUTPUTS, ids=[a[0] for a, _ in OUTPUTS])
def test_unwritable_output_dirs_fail_in_one_line_before_any_work(args, what, kind, run,
                                                                 tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    target = {"proc": "/proc/tritonlab-out", "below-a-file": blocker / "out",
              "a-file": blocker}[kind]
    args = [str(run) if a == "RUN" else a for a in args]
    result = invoke(*args, target)
    assert_one_line_error(result, 2, f"cannot write {what} ")
    assert blocker.read_text() == "in the way"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_the_output_check_leaves_nothing_behind(tmp_path):
    fresh = tmp_path / "a" / "b"
    assert output_dir(fresh) == fresh
    assert list(tmp_path.iterdir()) == []  # probed, not made
    existing = tmp_path / "empty"
    existing.mkdir()
    assert output_dir(existing) == existing and list(existing.iterdir()) == []


# ------------------------------------------------------------------- corrupt run stores

def _corrupt_row(run, dst, edit):
    shutil.copytree(run, dst)
    path = dst / "results.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[0])
    edit(row)
    lines[0] = json.dumps(row)  # json.dumps writes NaN and Infinity as Python reads them
    path.write_text("\n".join(lines) + "\n")


ROW_EDITS = {
    "ms-string": lambda r: r.update(ms="fast"),
    "ms-negative": lambda r: r.update(ms=-1.0),
    "ms-nan": lambda r: r.update(ms=float("nan")),
    "ms-infinite": lambda r: r.update(ms=float("inf")),
    "no-op": lambda r: r.pop("op"),
    "shape-text": lambda r: r.update(shape="8x8x8"),
    "samples-nan": lambda r: r.update(samples_ms=[1.0, float("nan")]),
    "speedup-negative": lambda r: r.update(speedup={"torch": -2.0}),
    "correct-text": lambda r: r.update(correct="false"),
}


@pytest.mark.parametrize("command", ["compare", "report"])
@pytest.mark.parametrize("edit", list(ROW_EDITS))
def test_a_corrupt_row_exits_2_with_file_and_line(command, edit, run, tmp_path):
    bad = tmp_path / "bad"
    _corrupt_row(run, bad, ROW_EDITS[edit])
    args = ["compare", run, bad] if command == "compare" else ["report", bad, "-o",
                                                                tmp_path / "report"]
    assert_one_line_error(invoke(*args), 2, f"{bad / 'results.jsonl'}:1: ")


@pytest.mark.parametrize("command", ["compare", "report"])
def test_a_line_that_is_not_json_and_a_results_dir_exit_2(command, run, tmp_path):
    garbled = tmp_path / "garbled"
    shutil.copytree(run, garbled)
    rows = (garbled / "results.jsonl").read_text()
    (garbled / "results.jsonl").write_text("{not json\n" + rows)
    dir_run = tmp_path / "dir"
    shutil.copytree(run, dir_run)
    (dir_run / "results.jsonl").unlink()
    (dir_run / "results.jsonl").mkdir()
    for bad, where in ((garbled, "results.jsonl:1: "), (dir_run, "results.jsonl: ")):
        args = ["compare", run, bad] if command == "compare" else ["report", bad]
        assert_one_line_error(invoke(*args), 2, where)


@pytest.mark.parametrize("field, value", [("device", 5), ("timer", "cold"), ("options", [1]),
                                          ("peaks", "x")])
def test_a_manifest_field_of_the_wrong_kind_exits_2(field, value, run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest[field] = value
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(invoke("compare", run, bad), 2, f"manifest.json: {field!r}")


def test_a_device_name_from_an_older_manifest_still_compares(run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["device"] = manifest["device"]["name"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("compare", run, old, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"] is True


def test_repeated_points_warn_in_compare_and_report(run, tmp_path):
    twice = tmp_path / "twice"
    shutil.copytree(run, twice)
    rows = (twice / "results.jsonl").read_text()
    (twice / "results.jsonl").write_text(rows + rows.splitlines()[0] + "\n")
    for args in (["compare", run, twice], ["report", twice, twice, "-o", tmp_path / "rep"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert "appears twice; using the last" in result.stderr, args


# ----------------------------------------------------------------------- errors as JSON

JSON_ERRORS = [
    ["--backend", "tpu", "list", "--json"],           # Click, while the group parses
    ["list", "--bogus", "--json"],                    # Click, while the command parses
    ["check", "matmul", "--dtype", "int8", "--json"],  # Click, a bad choice
    ["check", "nosuchop", "--json"],                  # the harness's UsageError
    ["sweep", "matmul", "--budget", "nan", "--json"],  # a range type
    ["compare", "/nonexistent/a", "/nonexistent/b", "--json"],
    ["sweep", "matmul", "--out", "/proc/x", "--json"],
]


@pytest.mark.parametrize("args", JSON_ERRORS, ids=[" ".join(a[:3]) for a in JSON_ERRORS])
def test_errors_under_json_print_one_json_document(args):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 2 and doc["error"]
    assert doc["error"] in result.stderr  # and the same message on stderr
    assert "Traceback" not in result.output


def test_without_json_errors_leave_stdout_empty():
    result = invoke("check", "nosuchop")
    assert result.exit_code == 2 and result.stdout == ""


# ------------------------------------------------------------------ stdout closed or full

def _entry_point(*args):
    return [sys.executable, "-m", "tritonlab.cli", *args]


def test_a_closed_stdout_ends_quietly_with_exit_1():
    proc = subprocess.Popen(_entry_point("list", "--json"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT)
    proc.stdout.close()  # the reader is gone before the command writes (| head -c 0)
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert stderr == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_stdout_is_one_line_and_exit_1():
    with open("/dev/full", "w") as full:
        r = subprocess.run(_entry_point("list", "--json"), stdout=full, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == "error: No space left on device"
