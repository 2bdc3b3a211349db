"""The checker tells the truth: correct code passes at any shape (each output's tolerance from
its own reduction, errors measured against the scale of the summed terms), wrong code fails
(an injected error, a dropped K tile, a wrong output dtype or shape), and neither `check` nor
`compare` reports a pass when it checked nothing."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from helpers import DoubleOp

from tritonlab import backend
from tritonlab.cli import cli
from tritonlab.measure import check
from tritonlab.ops import registry
from tritonlab.ops.contract import Impl, Tolerance, reduction_tolerance
from tritonlab.ops.shapes import mnk
from tritonlab.runs.records import SCHEMA_VERSION

OPS = registry.discover()
INTERPRETER = not backend.current().is_gpu

# Every size of {1, 2, 3, 7, 13, 64} in every dimension, 1 and the large size alone in each.
DEGENERATE = [mnk(*s) for s in ((1, 1, 1), (64, 1, 1), (1, 64, 1), (1, 1, 64), (2, 1, 7),
                                (1, 2, 13), (3, 7, 1), (7, 3, 2), (13, 13, 13), (2, 64, 3),
                                (64, 13, 2), (3, 2, 64))]
# The Triton impls are interpreted: a few of those shapes.
DEGENERATE_TRITON = [mnk(*s) for s in ((1, 1, 1), (64, 1, 1), (1, 64, 1), (1, 1, 64),
                                       (13, 7, 3))]


def _degenerate(op, triton: bool) -> list:
    """The degenerate shapes of an op: the (M, N, K) lists above for the GEMM family, the
    op's own ``edge`` preset for ops with other dims (attention's heads and lengths)."""
    if op.dims == ("M", "N", "K"):
        return DEGENERATE_TRITON if triton else DEGENERATE
    assert "edge" in op.presets, f"{op.name} has dims {op.dims} and no edge preset"
    return op.presets["edge"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _dtypes(op):
    return op.dtypes_interpreter if INTERPRETER else op.dtypes


def _failures(op, impls, shapes, seeds):
    """The failed cases, after checking that some case ran."""
    out, checked = [], 0
    for impl in impls:
        for mode in op.modes:
            for dtype in _dtypes(op):
                for shape in shapes:
                    for seed in range(seeds):
                        r = check.check_case(op, impl, mode, dtype, shape, seed)
                        checked += r.correct is not None
                        if r.correct is False:
                            out.append(f"{impl.name} {mode} {r.dtype} "
                                       f"{op.format_shape(shape)} seed={seed}: {r.error}")
    assert checked, f"{op.name}: no case ran"
    return out


# ------------------------------------------------------------------ correct code passes


def test_linear_bwd_reducing_over_m_into_one_element_passes():
    """dW and db of a 64x1x1 linear sum 64 terms into one element that may cancel to near
    zero: measured against the terms' scale, the Triton kernel and torch pass."""
    result = invoke("check", "linear", "--shape", "64x1x1", "--dtype", "float32", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["passed"] and doc["checked"] >= 8
    assert not [c for c in doc["cases"] if c["correct"] is False]


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_baseline_passes_at_degenerate_shapes(name):
    op = OPS[name]
    assert _failures(op, op.baselines, _degenerate(op, False), seeds=3) == []


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_triton_impl_passes_at_degenerate_shapes(name):
    op = OPS[name]
    assert _failures(op, op.triton_impls, _degenerate(op, True), seeds=1) == []


# ------------------------------------------------------------------ wrong code fails


def _wrapped(impl: Impl, edit) -> Impl:
    """``impl`` with ``edit(outputs)`` applied to what each run returns."""
    def build(inputs, mode):
        run = impl.build(inputs, mode)
        return lambda: edit(tuple(t.detach().clone(memory_format=torch.contiguous_format)
                                  for t in run()))
    return Impl("edited", impl.kind, build, modes=impl.modes, dtypes=impl.dtypes,
                backends=impl.backends)


def _perturb(index, amount):
    """Move the largest element of output ``index`` away from zero by ``amount``."""
    def edit(outs):
        flat = outs[index].view(-1)
        i = int(flat.float().abs().argmax())
        flat[i] = flat[i].float() + math.copysign(amount, float(flat[i]))
        return outs
    return edit


@pytest.mark.parametrize("name", sorted(OPS))
def test_a_one_percent_error_in_one_element_of_any_output_fails(name):
    """1% of the output's scale (its largest magnitude, or the largest scale of the terms it
    sums where they cancel, as in the 1x1 dW of a 64x1x1 linear) added to one element."""
    op = OPS[name]
    torch_impl = op.impl("torch")
    be = backend.current()
    for shape in (op.presets["tiny"][0], _degenerate(op, False)[1]):
        for mode in op.modes:
            for dtype in _dtypes(op):
                inputs = op.make_inputs(shape, dtype, be.device, 0)
                ref = op.reference(inputs, mode)
                scales = op.error_scale(inputs, mode) or (None,) * len(ref)
                for index, (r, sc) in enumerate(zip(ref, scales)):
                    top = float(r.abs().max() if sc is None else torch.maximum(r.abs(), sc).max())
                    wrong = _wrapped(torch_impl, _perturb(index, 0.01 * top))
                    res = check.check_case(op, wrong, mode, dtype, shape, 0)
                    assert res.correct is False, (mode, dtype, op.format_shape(shape), index)
                    assert f"output {index}" in res.error


def test_a_dropped_k_tile_fails():
    """The last 16 columns of K left out of the sum: about 1/8 of each dot at K = 131."""
    op = OPS["matmul"]

    def build(inputs, mode):
        a, b = inputs["a"], inputs["b"]
        return lambda: ((a[:, :-16] @ b[:-16, :]),)

    for dtype in _dtypes(op):
        r = check.check_case(op, Impl("dropped", "triton", build), "fwd", dtype,
                             mnk(97, 83, 131), 0)
        assert r.correct is False and r.max_rel_err > 10 * r.tol_max_rel, r


def test_each_output_has_its_own_tolerance():
    """linear's y reduces over K, dx over N, dW and db over M: a tall-thin shape gives dW a
    looser bound than y, not y's bound stretched to the longest reduction."""
    tols = OPS["linear"].tolerance(torch.float32, mnk(4096, 2, 3), "fwd_bwd")
    assert [t.rel_fro for t in tols] == [reduction_tolerance(torch.float32, n).rel_fro
                                        for n in (3, 2, 4096, 4096)]


def test_a_tolerance_count_that_does_not_match_the_outputs_fails():
    ok, *_, why = check.compare((torch.ones(2),), (torch.ones(2),), (Tolerance(1, 1),) * 2)
    assert not ok and "2 tolerance(s) for 1 output(s)" in why


# ------------------------------------------------------------- the output contract


def _toy(fn, output_dtype=None) -> DoubleOp:
    """y = 2 x, with an impl returning whatever ``fn`` makes of x."""
    return DoubleOp((Impl("impl", "triton", lambda inputs, mode: lambda: (fn(inputs["x"]),)),),
                    modes=("fwd",), output_dtype=output_dtype)


def _check_toy(op, dtype=torch.float16):
    return check.check_case(op, op.impls[0], "fwd", dtype, {"N": 8}, 0)


def test_an_output_of_the_wrong_dtype_fails():
    r = _check_toy(_toy(lambda x: x.double() * 2))
    assert r.correct is False
    assert r.error == ("output 0 has dtype float64, expected float16 (the op's declared "
                       "output dtype)")
    assert _check_toy(_toy(lambda x: x * 2)).correct is True


def test_an_op_may_declare_another_output_dtype():
    widening = _toy(lambda x: x.float() * 2, output_dtype=torch.float32)
    assert _check_toy(widening).correct is True
    r = _check_toy(_toy(lambda x: x * 2, output_dtype=torch.float32))
    assert r.correct is False and "dtype float16, expected float32" in r.error


def test_an_output_of_the_wrong_shape_fails():
    r = _check_toy(_toy(lambda x: (x * 2).view(1, -1)))
    assert r.correct is False
    assert r.error == "output 0 has shape (1, 8), expected (8,) (the reference's)"


# ------------------------------------------------------- checking nothing is no pass


def test_check_with_no_applicable_case_exits_2():
    result = invoke("check", "decode_matmul", "--mode", "bwd")
    assert result.exit_code == 2, result.output
    assert "nothing checked" in result.stderr and "decode_matmul: infer" in result.stderr
    assert "passed" not in result.stderr
    result = invoke("check", "decode_matmul", "--mode", "bwd", "--json")
    assert result.exit_code == 2
    doc = json.loads(result.stdout)
    assert doc["passed"] is False and doc["checked"] == 0 and "nothing checked" in doc["error"]


@pytest.mark.skipif(not INTERPRETER, reason="bfloat16 is skipped only under the interpreter")
def test_check_where_every_case_is_skipped_exits_2():
    result = invoke("check", "matmul", "--dtype", "bfloat16", "--shape", "2x2x2", "--json")
    assert result.exit_code == 2, result.output
    doc = json.loads(result.stdout)
    assert doc["passed"] is False and doc["checked"] == 0
    assert doc["cases"] and all(c["correct"] is None for c in doc["cases"])
    assert "every case was skipped" in doc["error"] and "interpreter" in doc["error"]


def _run_dir(path, kind="sweep", status="complete", rows=()):
    path.mkdir()
    manifest = {"schema_version": SCHEMA_VERSION, "run_id": path.name, "kind": kind,
                "status": status, "backend": "interpreter", "device": {"name": "cpu"},
                "timer": {"cache": "warm", "graph": False}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    if rows:
        (path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _point(m, ms=1.0, correct=True):
    return {"schema_version": SCHEMA_VERSION, "op": "matmul", "impl": "torch", "mode": "fwd",
            "dtype": "float32", "shape": {"M": m, "N": 2, "K": 2}, "correct": correct,
            "error": None if correct else "mismatch", "ms": ms if correct else None,
            "samples_ms": [ms, ms] if correct else []}


def test_compare_of_contrast_runs_compared_nothing(tmp_path):
    run = _run_dir(tmp_path / "contrast", kind="contrast")
    result = invoke("compare", run, run, "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert doc["passed"] is False and doc["compared"] == 0
    assert "no point is in both runs" in doc["reason"] and "contrast run" in doc["reason"]
    result = invoke("compare", run, run)
    assert result.exit_code == 1 and "not passed: nothing compared" in result.stdout


def test_compare_with_no_paired_point_exits_1(tmp_path):
    base = _run_dir(tmp_path / "base", rows=[_point(1)])
    new = _run_dir(tmp_path / "new", rows=[_point(3)])
    result = invoke("compare", base, new, "--json")
    assert result.exit_code == 1, result.output
    doc = json.loads(result.stdout)
    assert not doc["passed"] and doc["regressions"] == 0 and not doc["points"]
    assert doc["reason"].startswith("nothing compared")


def test_compare_where_no_pair_was_measured_in_both_exits_1(tmp_path):
    base = _run_dir(tmp_path / "base", rows=[_point(1, correct=False)])
    new = _run_dir(tmp_path / "new", rows=[_point(1, correct=False)])
    doc = json.loads(invoke("compare", base, new, "--json").stdout)
    assert not doc["passed"] and "none of the 1 paired point(s)" in doc["reason"]
    good = _run_dir(tmp_path / "good", rows=[_point(1)])
    result = invoke("compare", good, good, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["compared"] == 1


def test_compare_says_when_a_run_is_incomplete(tmp_path):
    base = _run_dir(tmp_path / "base", rows=[_point(1)])
    cut = _run_dir(tmp_path / "cut", status="interrupted", rows=[_point(1)])
    result = invoke("compare", base, cut, "--json")
    assert result.exit_code == 0, result.output
    (note,) = json.loads(result.stdout)["incomplete"]
    assert note.startswith("NEW run") and "status: interrupted" in note
    assert "status: interrupted" in result.stderr
    result = invoke("compare", cut, base)
    assert "warning: BASE run" in result.stdout and "status: interrupted" in result.stdout
    assert not json.loads(invoke("compare", base, base, "--json").stdout)["incomplete"]
