"""A fuzz lane over the command line: hypothesis builds commands from the real command set
with random option values (NaN, infinities, huge and negative numbers, malformed shapes,
unknown ops, dtypes, modes, presets and options, paths that cannot be written) and runs them
through Click's CliRunner. Whatever it builds, the CLI must keep its contract: an exit code
of 0, 1, 2 or 130, no traceback, and with --json one JSON document on stdout.

Commands are kept cheap: most fail while their arguments are checked; the ones that would
do real work are held to one op at a tiny shape with a short budget (check, sweep), to run
directories made once per module (compare, report), or to a listing (gpu-check --list).
``contrast``, ``inspect``, ``demo`` and ``new`` always carry one bad argument, so they end
before they measure, compile or write.
"""

from __future__ import annotations

import contextlib
import itertools
import json

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tritonlab.cli import cli

NUMBERS = ["nan", "NaN", "inf", "-inf", "1e400", "-1", "0", "-0.0", "1e30", "abc", "",
           "0x10", "1.5", "3", str(2**63), str(2**63 - 1), str(-(2**64)), "9" * 30]
bad_number = st.sampled_from(NUMBERS) | st.floats(allow_nan=True, allow_infinity=True).map(str)
any_int = st.sampled_from(NUMBERS) | st.integers(-(2**70), 2**70).map(str)
TINY_SHAPES = ["1x1x1", "2x3x1", "3x1x2"]
# A shape no machine can allocate: the check records the failure (exit 1) at once.
HUGE_SHAPE = "99999999999999999999999x1x1"
BAD_SHAPES = ["", "x", "12x", "12x12", "0x4x4", "-3x4x4", "4x4x4x4", "nanx1x1", "1e3x1x1",
              "4.0x4x4", "１x1x1", "99999999999999999999999x1x1", " 1x1x1 ", "1X1X1"]
JUNK = ["--bogus", "--json=1", "-z", "--", "nosuchop", "--dtype", "--shape"]
OPS = ["matmul", "nosuchop", "linear", "gated_mlp", ""]
DTYPES = ["float32", "float16", "bfloat16", "int8", "fp32", "NaN"]
MODES = ["fwd", "infer", "bwd", "fwd_bwd", "sideways", ""]
_fresh = itertools.count()


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """Run directories and paths the generated commands point at."""
    root = tmp_path_factory.mktemp("fuzz")
    result = CliRunner().invoke(cli, ["sweep", "matmul", "--shape", "8x8x8", "--dtype",
                                      "float32", "--mode", "fwd", "--budget", "0.01",
                                      "--out", str(root / "run")])
    assert result.exit_code == 0, result.output
    (root / "file").write_text("not a directory")
    (root / "cwd").mkdir()
    return {"run": str(root / "run"), "missing": str(root / "missing"),
            "file": str(root / "file"), "below_file": str(root / "file" / "x"),
            "proc": "/proc/tritonlab-fuzz", "root": root, "cwd": root / "cwd"}


def out_path(places, draw, *, writable: bool):
    """A new directory when ``writable``, else one that cannot be written."""
    if writable:
        return str(places["root"] / f"out{next(_fresh)}")
    return places[draw(st.sampled_from(["file", "below_file", "proc"]))]


def maybe(draw, *args):
    return list(args) if draw(st.booleans()) else []


def measured_check(draw, places):
    """check: one op at a tiny shape, or something bad that ends it early."""
    args = ["check", "matmul", "--impl", draw(st.sampled_from(["torch", "triton"])),
            "--mode", draw(st.sampled_from(["fwd", "infer"])), "--dtype", "float32",
            "--shape", draw(st.sampled_from([*TINY_SHAPES, HUGE_SHAPE]))]
    args += maybe(draw, "--seeds", draw(st.sampled_from(["1", "2"]) | any_int))
    return args


def failing_check(draw, places):
    return ["check", draw(st.sampled_from(OPS)),
            "--shape", draw(st.sampled_from(BAD_SHAPES)),
            *maybe(draw, "--dtype", draw(st.sampled_from(DTYPES))),
            *maybe(draw, "--mode", draw(st.sampled_from(MODES))),
            *maybe(draw, "--impl", draw(st.sampled_from(["torch", "cublas", ""])))]


def sweep(draw, places):
    """sweep: a valid one is one op at a tiny shape with a short budget; otherwise one value
    or more is bad, and the sweep must fail before it measures."""
    args = ["sweep", "matmul", "--impl", "torch", "--mode", "fwd", "--dtype", "float32"]
    if draw(st.booleans()):
        return args + ["--shape", draw(st.sampled_from(TINY_SHAPES)), "--budget", "0.01",
                       "--out", out_path(places, draw, writable=True),
                       *maybe(draw, "--seed", draw(st.sampled_from(["0", str(2**63 - 1)])))]
    args += ["--shape", draw(st.sampled_from(TINY_SHAPES + BAD_SHAPES)),
             "--budget", draw(st.sampled_from(["0.01"]) | bad_number),
             "--out", out_path(places, draw, writable=False)]
    args += maybe(draw, "--seed", draw(any_int))
    args += maybe(draw, "--preset", draw(st.sampled_from(["tiny", "huge", ""])))
    args += maybe(draw, "--cache", draw(st.sampled_from(["cold", "warm", "hot"])))
    args += maybe(draw, "--resume")
    return args


def compare(draw, places):
    runs = st.sampled_from([places["run"], places["missing"], places["file"], "/proc"])
    return ["compare", draw(runs), draw(runs),
            *maybe(draw, "--threshold", draw(st.sampled_from(["0.05"]) | bad_number)),
            *maybe(draw, "--force")]


def report(draw, places):
    if draw(st.booleans()):
        return ["report", places["run"], "-o", out_path(places, draw, writable=True)]
    run = draw(st.sampled_from([places["run"], places["missing"], places["file"]]))
    return ["report", run, *maybe(draw, "-o", out_path(places, draw, writable=False))]


def contrast(draw, places):
    """Always one bad value: a valid contrast measures for seconds."""
    options = {"--batch": any_int, "--duration": bad_number, "--warmup": bad_number,
               "--idle": bad_number, "--cooldown": bad_number, "--interval-ms": bad_number,
               "--seed": any_int}
    bad = draw(st.sampled_from(sorted(options)))
    value = draw(options[bad].filter(lambda v: v in NUMBERS[:10] or "e" in v or "n" in v))
    return ["contrast", bad, value,
            *maybe(draw, "--model-size", draw(st.sampled_from(["tiny", "huge"]))),
            *maybe(draw, "--out", out_path(places, draw, writable=False))]


def inspect(draw, places):
    """Always a bad argument: a valid inspect compiles kernels for seconds."""
    bad = draw(st.sampled_from(["--first", "--arch", "--dump", "--config", "--dtype"]))
    value = {"--first": draw(st.sampled_from(["0", "-1", "nan", "inf", "1.5", str(2**70)])),
             "--arch": draw(st.sampled_from(["sm_0", "gfx90a", "", "sm_90b"])),
             "--dump": out_path(places, draw, writable=False),
             "--config": draw(st.sampled_from(["BLOCK_M=nan", "=", "NOPE=1", "BLOCK_M"])),
             "--dtype": draw(st.sampled_from(["int8", "fp16"]))}[bad]
    return ["inspect", draw(st.sampled_from(["matmul", "nosuchop"])), bad, value]


def small(draw, places):
    """Commands that are cheap whatever they are given, or fail at once."""
    return draw(st.sampled_from([
        ["list"],
        ["device"],
        ["device", "--spec", draw(st.sampled_from(["H100 SXM5", "nosuchgpu", ""]))],
        ["device", "--measure", "--spec", "H100 SXM5"],
        ["gpu-check", "--list", "--total-budget", draw(bad_number)],
        ["gpu-check", "--list", "--only", draw(st.sampled_from(["nosuchstep", "sweep-quick"]))],
        ["demo", "--out", out_path(places, draw, writable=False)],
        ["new", draw(st.sampled_from(["Bad-Name", "matmul", "ok_name", ""])),
         "--package-dir", places["missing"]],
        ["--backend", draw(st.sampled_from(["tpu", "interpreter", ""])), "list"],
        [draw(st.sampled_from(["nosuchcommand", "lst", ""]))],
    ]))


BUILDERS = [measured_check, failing_check, failing_check, sweep, compare, report, contrast,
            inspect, small, small]


@st.composite
def command_lines(draw, places):
    args = draw(st.sampled_from(BUILDERS))(draw, places)
    if draw(st.booleans()):
        args.insert(draw(st.integers(1, len(args))), "--json")
    if draw(st.integers(0, 4)) == 0:  # now and then an unknown token somewhere
        args.insert(draw(st.integers(1, len(args))), draw(st.sampled_from(JUNK)))
    return args


def wants_json(args: list[str]) -> bool:
    head = args[:args.index("--")] if "--" in args else args
    return "--json" in head


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(data=st.data())
def test_any_command_line_keeps_the_cli_contract(data, places):
    args = data.draw(command_lines(places), label="args")
    # In a working directory of its own: a default output path must not land in the
    # repository.
    with contextlib.chdir(places["cwd"]):
        result = CliRunner().invoke(cli, args)
    assert result.exit_code in (0, 1, 2, 130), (args, result.exit_code, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        (args, repr(result.exception))
    assert "Traceback" not in result.output, (args, result.output)
    if wants_json(args):
        try:
            json.loads(result.stdout)
        except ValueError:
            pytest.fail(f"{args}: stdout is not one JSON document: {result.stdout!r}")
