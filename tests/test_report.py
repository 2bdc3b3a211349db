"""`tritonlab report` on a real interpreter sweep and on run directories built as
docs/design.md ("The run directory") describes: a self-contained HTML whose embedded images
decode, the Markdown twin, several runs side by side, the training-vs-inference section, and
every kind of bad input."""

from __future__ import annotations

import base64
import html.parser
import io
import json
import re
import shutil

import matplotlib.image as mpimg
import pytest
from click.testing import CliRunner
from conftest import run_cli

from tritonlab.cli import cli
from tritonlab.errors import UsageError
from tritonlab.hw import devices
from tritonlab.report import render as report
from tritonlab.runs import sweep
from tritonlab.runs.store import load_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    """A real sweep of matmul under the selected backend (interpreter here): two shapes."""
    out = tmp_path_factory.mktemp("runs") / "sweep"
    shapes = ["97x83x131", "1x130x75"]
    points, notes, selection = sweep.plan_from_args(["matmul"], None, shapes, [], [], [])
    result = sweep.sweep(points, out, resume=False, argv=["pytest"], selection=selection,
                         options=sweep.SweepOptions(budget_s=0.05))
    assert result.new_rows == len(result.rows) > 0
    assert not result.failed, [r["error"] for r in result.failed]
    return out


def _copy_run(src, dst, edit_rows=None, edit_manifest=None):
    shutil.copytree(src, dst)
    if edit_manifest:
        doc = json.loads((dst / "manifest.json").read_text())
        edit_manifest(doc)
        (dst / "manifest.json").write_text(json.dumps(doc))
    if edit_rows:
        rows = [json.loads(line) for line in (dst / "results.jsonl").read_text().splitlines()]
        for r in rows:
            edit_rows(r)
        (dst / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


class _Checker(html.parser.HTMLParser):
    """Collects image sources, links and ids (with the ids of the elements around each),
    and checks that every opened tag is closed."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.images, self.links, self.errors = [], [], [], []
        self.open_ids: list[str | None] = []  # beside stack: each open element's id
        self.ids: dict[str, list[str]] = {}
        self.order: list[str] = []  # the ids and headings' tags of the body, in order

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            assert attrs["id"] not in self.ids, f"duplicate id {attrs['id']}"
            self.ids[attrs["id"]] = [i for i in self.open_ids if i]
            self.order.append(attrs["id"])
        elif tag in ("h2", "details"):
            self.order.append(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("href", "src"):
            if key in attrs and tag != "img":
                self.links.append(attrs[key])
        if tag not in self.VOID:
            self.stack.append(tag)
            self.open_ids.append(attrs.get("id"))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
            self.open_ids.pop()


def _md_cells(md: str) -> list[list[str]]:
    """The cells of every Markdown table row (separator lines left out)."""
    out = []
    for line in md.splitlines():
        if line.startswith("|") and not set(line) <= set("|-: "):
            out.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return out


def _check_html(path) -> _Checker:
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert not checker.errors and not checker.stack, (checker.errors, checker.stack)
    # No script, stylesheet or font fetched from anywhere; links only within the page.
    for link in checker.links:
        assert link.startswith("#") and link[1:] in checker.ids, link
    assert "http://" not in text and "https://" not in text
    for src in checker.images:
        head, data = src.split(",", 1)
        assert head == "data:image/png;base64"
        raw = base64.b64decode(data, validate=True)
        assert raw[:8] == PNG_SIGNATURE
        img = mpimg.imread(io.BytesIO(raw), format="png")
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
    return checker


def test_report_of_a_real_run(sweep_run, tmp_path):
    paths = report.write_report([sweep_run], tmp_path / "rep")
    checker = _check_html(paths.html)
    assert len(checker.images) == len(paths.figures) >= 2  # roofline + speedup plot
    names = {p.name.split("-")[0] for p in paths.figures}
    assert {"roofline", "speedup"} <= names
    text = paths.html.read_text()
    rows = [json.loads(line) for line in (sweep_run / "results.jsonl").read_text().splitlines()]
    backend = rows[0]["backend"]
    if backend == "interpreter":
        assert "NOT GPU performance" in text
    for anchor, heading in (("environment", "Environment"), ("ceilings", "Ceilings"),
                            ("roofline", "Roofline"), ("results", "Results per op"),
                            ("correctness", "Correctness")):
        assert f'<h2 id="{anchor}">{heading}</h2>' in text
    assert '<h3 id="op-matmul">matmul</h3>' in text
    assert "% roofline (spec)" in text and "speedup vs torch" in text
    md = paths.markdown.read_text()
    cells = _md_cells(md)
    table_rows = [c for c in cells if c[0] in ("triton", "torch")]
    assert len(table_rows) == len(rows)  # one line per measured point
    for ref in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (paths.out_dir / ref).is_file()
    ok = sum(r["correct"] is True and not r["error"] for r in rows)
    correctness = md.split("## Correctness")[1].split("\n## ")[0]
    assert [str(len(rows)), str(ok), str(len(rows) - ok)] in [c[1:4] for c in _md_cells(correctness)]
    # The HTML page has the same tables, numbers right-aligned.
    assert '<td style="text-align: right;">' in text


def test_runs_side_by_side(sweep_run, tmp_path):
    def faster(row):
        if row.get("tflops"):
            row["tflops"] *= 2

    def rename(doc):
        doc["run_id"] = "faster-run"

    other = _copy_run(sweep_run, tmp_path / "other", faster, rename)
    paths = report.write_report([sweep_run, other], tmp_path / "both")
    _check_html(paths.html)
    md = paths.markdown.read_text()
    assert "## Runs side by side" in md and "ratio sweep-faster-run" in md
    section = md.split("## Runs side by side")[1].split("\n## ")[0]
    lines = [c for c in _md_cells(section) if c[0] == "matmul"]
    assert lines and all(c[-1] == "2" for c in lines)
    assert len([p for p in paths.figures if p.name.startswith("roofline")]) == 2


def test_truncated_last_line_is_skipped_with_a_warning(sweep_run, tmp_path):
    run = _copy_run(sweep_run, tmp_path / "cut")
    n = len((run / "results.jsonl").read_text().splitlines())
    with open(run / "results.jsonl", "a") as f:
        f.write('{"schema_version": 1, "op": "matmul", "impl": "tri')
    loaded, _ = report.load_annotated(run)
    assert len(loaded.rows) == n
    assert any("truncated" in w for w in loaded.warnings)
    r = CliRunner().invoke(cli, ["report", str(run), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stderr and "truncated" in r.stderr
    assert (tmp_path / "out" / "index.html").is_file()


def _contrast_dir(tmp_path, backend="cuda"):
    run = tmp_path / "contrast"
    run.mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "contrast-1", "kind": "contrast", "backend": backend,
        "device": {"name": "NVIDIA H100 80GB HBM3", "kind": "cuda", "uuid": "GPU-0"}}))
    phases = [{"name": "idle", "mode": "idle", "impl": None, "batch": None, "avg_power_w": 70}]
    for mode, watts in (("train", 600.0), ("infer", 250.0)):
        for impl in ("triton", "torch"):
            for batch in (1, 4096):
                phases.append({"name": f"{mode}/{impl}/b{batch}", "mode": mode, "impl": impl,
                               "batch": batch, "steps": 100,
                               "throughput_samples_s": 50.0 * batch,
                               "latency_p50_ms": 1.0 + batch / 1000, "avg_power_w": watts,
                               "energy_per_sample_j": watts / (50.0 * batch),
                               "gpm_sm_util_pct": 90.0 if mode == "train" else None})
    phases.append({"name": "infer/torch/b9", "mode": "infer", "impl": "torch", "batch": 9,
                   "error": "OOM: out of memory"})
    doc = {"schema_version": 1, "kind": "contrast", "backend": backend,
           "device": "NVIDIA H100 80GB HBM3", "counters": "nvml",
           "model": {"size": "base", "dim": 1024, "hidden": 2816, "dtype": "bfloat16"},
           "plan": {"batches": [1, 4096], "duration_s": 10.0},
           "phases": phases, "warnings": ["GPM unavailable: metric x"],
           "impl_comparison": [{"mode": "train", "batch": 1, "impl": "triton",
                                "baseline": "torch", "throughput_ratio": 0.9,
                                "latency_p50_ratio": 1.1, "energy_per_sample_ratio": 1.05}],
           "verdict": {"harder": "train", "decided_by": "power",
                       "resources": [
                           {"resource": "power", "metric": "avg_power_w", "unit": "W",
                            "winner": "train", "train": {"phase": "train/triton/b1",
                                                         "value": 600.0},
                            "infer": {"phase": "infer/triton/b1", "value": 250.0}},
                           {"resource": "heat", "metric": "temp_rise_c", "winner": None,
                            "reason": "temp_rise_c not measured in train, infer phases"}],
                       "explanation": ["Training pushes harder: 600 W against 250 W."]}}
    (run / "contrast.json").write_text(json.dumps(doc))
    (run / "counters.csv").write_text("time,phase,power_w\n0.0,idle,70\n0.1,train/triton/b1,600\n")
    return run


def test_contrast_section(sweep_run, tmp_path):
    contrast = _contrast_dir(tmp_path)
    paths = report.write_report([sweep_run, contrast], tmp_path / "rep")
    _check_html(paths.html)
    md = paths.markdown.read_text()
    section = md.split("\n## Training vs inference\n")[1].split("\n## ")[0]
    assert "Verdict: training pushes harder (decided by power)." in section
    assert "- Training pushes harder: 600 W against 250 W." in section
    assert "OOM: out of memory" in section and "GPM unavailable" in section
    assert "2 samples over 2 phases; metrics: power_w" in section
    assert any(p.name.startswith("train-vs-infer-") for p in paths.figures)
    assert "CPU counters" not in section  # a GPU contrast carries no CPU banner
    # a run with only a contrast is reportable on its own; it has no roofline
    alone = report.write_report([contrast], tmp_path / "alone")
    assert "## Roofline" not in alone.markdown.read_text()


def test_static_facts_and_fused_points(sweep_run, tmp_path):
    def add(row):
        row["unfused_bytes"] = row["bytes"] * 2
        if row["impl"] == "triton":
            row["static"] = {"arch": "sm_90a", "kernel": "_matmul_fwd_kernel", "registers": 128,
                             "kernels": [{"kernel": "_matmul_fwd_kernel", "registers": 128,
                                          "spill_stores": 0, "smem_bytes": 65536,
                                          "tensor_core": {"HGMMA.64x128x16.F32": 8}}]}

    run = _copy_run(sweep_run, tmp_path / "static", add)
    loaded, _ = report.load_annotated(run)
    assert all(r["unfused_intensity"] == pytest.approx(r["intensity"] / 2) for r in loaded.rows)
    md = report.write_report([run], tmp_path / "rep").markdown.read_text()
    assert "## Static compile facts" in md and "HGMMA.64x128x16.F32:8" in md


def test_static_facts_of_ops_with_one_config_per_kernel(sweep_run, tmp_path):
    """linear records {target: static_facts} (fwd, bwd_dx, bwd_dw): one table row each."""
    def add(row):
        if row["impl"] == "triton":
            row["static"] = {t: {"arch": "sm_80", "kernel": f"_k_{t}", "registers": regs,
                                 "spill_stores": 0, "tensor_core": {"HMMA.16816.F32": 4}}
                             for t, regs in (("fwd", 111), ("bwd_dx", 122), ("bwd_dw", 133))}

    run = _copy_run(sweep_run, tmp_path / "static", add)
    md = report.write_report([run], tmp_path / "rep").markdown.read_text()
    section = md.split("## Static compile facts", 1)[1]
    for kernel, regs in (("_k_fwd", 111), ("_k_bwd_dx", 122), ("_k_bwd_dw", 133)):
        line = next(ln for ln in section.splitlines() if kernel in ln)
        assert str(regs) in line and "sm_80" in line


def test_failed_points_leave_no_plot_but_a_message(sweep_run, tmp_path):
    def fail(row):
        row.update(error="compile error: out of resources", tflops=None, speedup=None,
                   correct=False)

    run = _copy_run(sweep_run, tmp_path / "failed", fail)
    paths = report.write_report([run], tmp_path / "rep")
    md = paths.markdown.read_text()
    assert "no roofline plot: no successful measured point" in md
    assert "No speedup plot" in md and "compile error: out of resources" in md
    assert paths.figures == []


def _report_cli(*args):
    return CliRunner().invoke(cli, ["report", *map(str, args)])


def test_bad_input(sweep_run, tmp_path):
    r = run_cli("report", str(tmp_path / "nope"))  # once through the real entry point
    assert r.returncode == 2 and "no such directory" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = _report_cli(tmp_path / "empty")
    assert r.exit_code == 2 and "manifest.json" in r.output
    newer = _copy_run(sweep_run, tmp_path / "newer",
                      edit_manifest=lambda d: d.update(schema_version=99))
    r = _report_cli(newer)
    assert r.exit_code == 2 and "newer" in r.output
    newer_row = _copy_run(sweep_run, tmp_path / "newer_row",
                          edit_rows=lambda row: row.update(schema_version=2))
    with pytest.raises(UsageError, match="newer"):
        load_run(newer_row)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "manifest.json").write_text(json.dumps({"schema_version": 1, "run_id": "x",
                                                    "backend": "interpreter"}))
    r = _report_cli(bare)
    assert r.exit_code == 2 and "nothing to report" in r.output
    assert _report_cli().exit_code == 2


def test_default_out_dir(sweep_run, tmp_path):
    run = _copy_run(sweep_run, tmp_path / "one")
    r = CliRunner().invoke(cli, ["report", str(run)])
    assert r.exit_code == 0, r.output
    assert (run / "report" / "index.html").is_file()
    assert str(run / "report" / "index.html") in r.stdout
    assert report.default_out_dir([run, tmp_path / "two"]) == tmp_path / "report-one-vs-two"


def _md_anchors(md: str) -> set[str]:
    """The anchors GitHub gives the Markdown headings (a repeated one gets -1, -2)."""
    seen: dict[str, int] = {}
    out = set()
    for line in md.splitlines():
        if line.startswith("#"):
            base = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_report_opens_on_the_summary(sweep_run, tmp_path):
    """Summary first (verdict, headline figures, regimes, links), contents whose links all
    land, environment last and folded, in both the page and the Markdown."""
    contrast = _contrast_dir(tmp_path)
    paths = report.write_report([sweep_run, contrast], tmp_path / "rep")
    checker = _check_html(paths.html)
    text = paths.html.read_text()
    body = text.split("<body>", 1)[1].lstrip()
    assert body.startswith('<div id="summary">')
    summary = body[:body.index('<h2 id="contents">')]
    assert "verdict" in checker.ids and "summary" in checker.ids["verdict"]
    verdict = summary.split('<div id="verdict">')[1].split('<div id="headline">')[0]
    assert "Training vs inference: training pushes harder (decided by power)" in verdict
    assert ("power: training harder, 600 W in training (train/triton/b1) vs 250 W in "
            "inference (infer/triton/b1).") in verdict
    assert "heat: not compared (temp_rise_c not measured" in verdict
    assert "Measured on NVIDIA H100 80GB HBM3 (backend cuda, NVML counters)" in verdict
    assert "geomean x" in summary and "95% interval" in summary  # the headline table
    assert "H100" in summary and "backend interpreter" in summary
    # Every section is linked from the summary and the contents, and every link lands.
    for anchor in ("contents", "contrast", "results", "op-matmul", "correctness",
                   "environment"):
        assert f'href="#{anchor}"' in text and anchor in checker.ids
    assert f'href="#{"contrast"}"' in summary
    # Per-op sections lead with the reading and the figure, then the table.
    op = text.split('<h3 id="op-matmul">')[1]
    assert op.index("torch geomean over") < op.index("<img") < op.index("<table")
    # Environment: the key fields in view, the rest folded, and nothing after it.
    headings = [t for t in checker.order if t not in ("summary", "verdict", "headline",
                                                      "at-a-glance")]
    assert headings[-2:] == ["environment", "details"]
    env = text.split('<h2 id="environment">')[1]
    assert env.index("git sha") < env.index("<details>") < env.index("schema_version")

    md = paths.markdown.read_text()
    assert md.startswith("# tritonlab report\n")
    head = md[:md.index("## Contents")]
    assert "training pushes harder (decided by power)" in head
    assert "power: training harder" in head and "geomean x" in head
    assert "<" not in md.replace("<details>", "").replace("</details>", "").replace(
        "<summary>", "").replace("</summary>", "")  # GitHub renders it without raw HTML
    anchors = _md_anchors(md)
    links = re.findall(r"\]\(#([^)]+)\)", md)
    assert links and set(links) <= anchors, set(links) - anchors
    last = md.split("\n## ")[-1]
    assert last.startswith("Environment") and "<details>" in last


def test_interpreter_verdict_is_labelled(sweep_run, tmp_path):
    contrast = _contrast_dir(tmp_path, backend="interpreter")
    md = report.write_report([contrast], tmp_path / "rep").markdown.read_text()
    head = md[:md.index("## Contents")]
    assert "NOT GPU performance" in head and "training pushes harder" in head
    assert "No Triton point with a baseline" in head


def test_a_section_is_one_entry(sweep_run, tmp_path):
    """A Section added to the list gets its heading, anchor, contents line and summary link."""
    from tritonlab.report import outline
    from tritonlab.report.document import Para, render_html

    extra = outline.Section("extra", "Extra facts", lambda ctx: [Para(f"{len(ctx.runs)} run")])
    empty = outline.Section("never", "Never shown", lambda ctx: [])
    run, peaks = report.load_annotated(sweep_run)
    blocks = outline.build_blocks([run], [peaks], tmp_path,
                                  [*outline.SECTIONS[:2], extra, empty])
    page = render_html(blocks, "t")
    assert '<h2 id="extra">Extra facts</h2>' in page and page.count('href="#extra"') == 2
    assert "Never shown" not in page


def test_geomean_interval():
    from tritonlab.report.summary import Point, geomean_ci

    def point(speed, spread):
        base = [speed * 10 * (1 + spread * k) for k in (-1, 0, 1)]
        return Point("x", "1x1x1", "fwd", "torch", speed, [10.0, 10.0, 10.0], base)

    lo, hi = geomean_ci([point(2.0, 0.01), point(0.5, 0.01)])
    assert lo <= 1.0 <= hi and hi / lo < 1.05  # the geomean of 2 and 0.5 is 1
    assert geomean_ci([Point("x", "s", "fwd", "torch", 1.0, [1.0], [1.0, 1.0])]) is None


H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"


def two_model_run(src, dst, a100_factor=2.0):
    """``src`` as a cluster sweep over an H100 and an A100 writes it: every point once per
    model (the A100's ``a100_factor`` times slower), each model's ceilings in the manifest."""
    shutil.copytree(src, dst)
    rows = [json.loads(line) for line in (dst / "results.jsonl").read_text().splitlines()]
    out = []
    for model, factor in ((H100, 1.0), (A100, a100_factor)):
        for r in rows:
            r = {**r, "device": model, "gpu_name": model, "gpu_uuid": f"GPU-{model[7:11]}",
                 "node": f"node-{model[7:11]}"}
            for key in ("pct_roofline", "roofline_tflops", "roofline_bound",
                        "pct_roofline_measured", "roofline_tflops_measured",
                        "roofline_bound_measured"):
                r.pop(key, None)
            if r.get("ms"):
                r["ms"] *= factor
                r["ms_ci"] = [v * factor for v in r["ms_ci"]]
                r["samples_ms"] = [v * factor for v in r["samples_ms"]]
                r["tflops"] /= factor
                r["gbps"] /= factor
            out.append(r)
    (dst / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
    doc = json.loads((dst / "manifest.json").read_text())
    peaks = {m: devices.peaks_for({"name": m, "kind": "cuda"}).to_dict() for m in (H100, A100)}
    doc.update(device={"name": f"{H100} + {A100}", "kind": "cuda", "models": [H100, A100]},
               peaks=None, peaks_by_device=peaks,
               cluster={"address": "127.0.0.1:6379", "models": [H100, A100], "workers": []})
    (dst / "manifest.json").write_text(json.dumps(doc))
    return dst


def test_a_run_over_two_gpu_models_is_reported_per_device(sweep_run, tmp_path):
    run = two_model_run(sweep_run, tmp_path / "cluster")
    assert load_run(run).warnings == []  # each point once per model is no repeat
    paths = report.write_report([run], tmp_path / "report")
    _check_html(paths.html)
    md = paths.markdown.read_text()
    # A roofline per GPU model, each against its own ceilings.
    rooflines = [p for p in paths.figures if p.name.startswith("roofline")]
    assert len(rooflines) == 2
    ceilings = md.split("## Ceilings")[1].split("\n## ")[0]
    assert f"[{H100}]" in ceilings and f"[{A100}]" in ceilings
    # The side-by-side table: every point on both, the A100 at half the H100's TFLOP/s.
    section = md.split("## Runs side by side")[1].split("\n## ")[0]
    assert "TFLOP/s sweep-" in section and f"[{A100}]" in section
    lines = [c for c in _md_cells(section) if c[0] == "matmul"]
    assert lines and all(c[-1] == "0.5" for c in lines)
