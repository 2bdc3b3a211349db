"""`tritonlab demo` end to end (marked slow: about a minute on 2 CPU cores, left out of the
quick lane `-m "not slow and not gpu"`), and its refusals."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from tritonlab.cli import cli
from tritonlab.errors import UsageError
from tritonlab.jobs import demo
from tritonlab.runs import store

# The contrast runs the training and inference workloads of tritonlab.workloads.
HAVE_WORKLOADS = all(importlib.util.find_spec(f"tritonlab.workloads.{m}") is not None
                     for m in ("train", "infer"))
SHORT_CONTRAST = {"contrast": dict(model="ffn", batches=(1, 16), duration_s=1.0, model_size="tiny",
                                   warmup_s=0.1, idle_s=1.0, cooldown_s=0.1),
                  "layer_contrast": dict(model="layer", model_size="tiny", duration_s=1.0,
                                         warmup_s=0.1, idle_s=0.0, cooldown_s=0.0,
                                         impls=("triton",))}


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_WORKLOADS, reason="the contrast's workloads "
                    "(tritonlab.workloads.train / .infer) are not written yet")
def test_demo_end_to_end(tmp_path, be, monkeypatch):
    monkeypatch.setenv("TRITONLAB_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    lines = []
    result = demo.run_demo(out, ops=["matmul"], progress=lines.append,
                           settings=None if be.is_gpu else SHORT_CONTRAST)
    assert result.passed, result.check_failures + result.sweep_failures
    assert result.html == out / "index.html" and result.html.is_file()
    check = json.loads((out / "check.json").read_text())
    assert check["passed"] and {c["op"] for c in check["cases"]} == {"matmul"}
    assert {c["impl"] for c in check["cases"] if c["correct"]} == {"triton", "torch"}
    rows = [json.loads(x) for x in (out / "sweep" / "results.jsonl").read_text().splitlines()]
    assert rows and all(r["correct"] and r["error"] is None for r in rows)
    # the demo measured the ceilings first, so every point has a measured % of roofline
    assert (tmp_path / "cache" / "ceilings.json").is_file()
    assert all(r["pct_roofline_measured"] > 0 for r in rows)
    assert {r["mode"] for r in rows} == {"fwd", "infer"}
    assert (out / "contrast" / "contrast.json").is_file()
    layer = json.loads((out / "contrast-layer" / "contrast.json").read_text())
    assert {p["mode"] for p in layer["phases"]} >= {"train", "prefill", "decode"}
    assert not [p for p in layer["phases"] if p.get("error")]
    md = result.markdown.read_text()
    for heading in ("Roofline", "Results per op", "Training vs inference", "Correctness"):
        assert f"## {heading}" in md
    assert any(line.startswith("4/4 report") for line in lines)
    assert any(line.startswith("demo done") for line in lines)


def test_a_second_demo_replaces_only_what_the_first_wrote(tmp_path):
    previous = store.writer_mark("demo")
    for run in ("sweep", "contrast"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "manifest.json").write_text(json.dumps(store.writer_mark(run,
                                                                                   previous)))
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "roofline-x.png").write_bytes(b"png")
    for name in ("index.html", "report.md", "check.json", "notes.md"):
        (tmp_path / name).write_text("old")
    demo._clear(tmp_path, previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.md"]


def test_demo_refuses_to_overwrite_what_it_did_not_write(tmp_path):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds files tritonlab did not write"):
        demo.run_demo(tmp_path, ops=["matmul"])
    assert (tmp_path / "sweep" / "notes.txt").read_text() == "mine"
    # A run another demo did not write, in a demo's own directory, stays too.
    previous = store.writer_mark("demo")
    (tmp_path / "contrast").mkdir()
    (tmp_path / "contrast" / "manifest.json").write_text(json.dumps(store.writer_mark(
        "contrast", store.writer_mark("demo"))))
    with pytest.raises(UsageError, match="not written by the previous tritonlab demo"):
        demo._clear(tmp_path, previous)
    assert (tmp_path / "contrast" / "manifest.json").is_file()


def test_demo_unknown_op():
    with pytest.raises(UsageError, match="valid ops"):
        demo.run_demo("unused", ops=["no_such_op"])


def test_demo_cli_bad_out(tmp_path):
    (tmp_path / "file").write_text("x")
    r = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "file")])
    assert r.exit_code == 2 and "Traceback" not in r.stderr
