"""``tritonlab gpu-check`` (what ``make gpu-check`` runs): everything that needs a GPU, in one
command that fits in 8 minutes on one H100/H200.

The check is the list :data:`STEPS`; each :class:`Step` is a command with a time budget.
Steps run in order as subprocesses (stdout to ``DIR/<step>.out``, stderr to
``DIR/<step>.log``); a step that fails, crashes or runs out of time is recorded and the next
one still runs. A step past its budget gets SIGINT (a sweep then keeps what it measured),
then SIGKILL. ``DIR/summary.json`` and ``DIR/summary.md`` are rewritten after every step,
so even an interrupted check leaves its record. To add a step, append a :class:`Step` to
:data:`STEPS` (and keep the budgets within :data:`TOTAL_BUDGET_S`).

The pytest steps need the repository's ``tests/``, which an installed package does not ship:
:func:`find_repo` looks for it (``--repo``, the current directory and its parents, then
beside the package), and the steps run there with the repository's own package first on
``PYTHONPATH``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tritonlab.errors import UsageError
from tritonlab.runs import store

# Eight minutes, less a margin for starting Python and writing the summary.
TOTAL_BUDGET_S = 460.0
# A step that would get less time than this is skipped.
MIN_STEP_S = 5.0
# After SIGINT, how long a step may take to save its work before SIGKILL.
GRACE_S = 15.0

Verify = Callable[[Path], tuple[bool, dict]]


@dataclass(frozen=True)
class Step:
    """One command of the check. ``argv(out_dir)`` gives the command line; ``verify(out_dir)``
    (optional) inspects what a successful command wrote and returns (ok, details)."""

    name: str
    budget_s: float
    argv: Callable[[Path], list[str]]
    description: str = ""
    verify: Verify | None = None


@dataclass
class StepResult:
    name: str
    status: str  # passed | failed | timeout | error | skipped
    budget_s: float
    seconds: float = 0.0
    rc: int | None = None
    command: list[str] = field(default_factory=list)
    stdout: str | None = None
    log: str | None = None
    note: str = ""
    details: dict = field(default_factory=dict)


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT to the step's own process (Ctrl-C: a sweep saves its state; its children, such
    as a compiler, are left to finish), then SIGKILL to its whole process group."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_step(step: Step, out: Path, budget_s: float, env: dict | None = None,
             cwd: Path | None = None) -> StepResult:
    """Run one step with ``budget_s`` seconds in ``cwd``; never raises for the step's own
    failures."""
    result = StepResult(step.name, "error", budget_s)
    stdout_path, log_path = out / f"{step.name}.out", out / f"{step.name}.log"
    result.stdout, result.log = stdout_path.name, log_path.name
    start = time.monotonic()
    try:
        result.command = [str(a) for a in step.argv(out)]
        with open(stdout_path, "wb") as so, open(log_path, "wb") as se:
            proc = subprocess.Popen(result.command, stdout=so, stderr=se, cwd=cwd, env=env,
                                    start_new_session=True)
            try:
                result.rc = proc.wait(timeout=budget_s)
            except subprocess.TimeoutExpired:
                _stop(proc)
                result.rc = proc.returncode
                result.status = "timeout"
                result.note = f"ran past its {budget_s:.0f} s budget; stopped"
            except KeyboardInterrupt:
                # The step runs in its own session, out of reach of the terminal's Ctrl-C:
                # pass the interruption on, so it saves its work, before stopping.
                _stop(proc)
                raise
    except Exception as exc:  # the command could not start (missing program, bad argv)
        result.note = f"{type(exc).__name__}: {exc}"
        result.seconds = time.monotonic() - start
        return result
    result.seconds = time.monotonic() - start
    if result.status != "timeout":
        result.status = "passed" if result.rc == 0 else "failed"
        if result.rc != 0:
            result.note = f"exit code {result.rc}"
    if step.verify is not None:
        try:
            ok, result.details = step.verify(out)
        except Exception as exc:  # a verifier's own failure is the step's failure
            ok, result.details = False, {"verify_error": f"{type(exc).__name__}: {exc}"}
        if not ok and result.status == "passed":
            result.status = "failed"
            result.note = "its outputs did not pass verification"
    return result


def step_env(repo: Path | None) -> dict:
    """The steps' environment: the repository's package (when it has one) ahead of any
    installed copy, so the tests and the commands exercise the same code."""
    env = dict(os.environ)
    first = str(repo) if repo is not None and (repo / "tritonlab").is_dir() else None
    env["PYTHONPATH"] = os.pathsep.join(p for p in (first, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_summary(out: Path, results: Sequence[StepResult], started: str, finished: bool) -> dict:
    summary = {
        "started": started,
        "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds") if finished
        else None,
        "passed": finished and all(r.status == "passed" for r in results),
        "steps": [asdict(r) for r in results],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["# GPU check", "", f"started {started}"
             + (f", finished {summary['finished']}" if finished else " (still running)"), "",
             "| step | status | seconds | budget | note |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.status} | {r.seconds:.0f} | {r.budget_s:.0f} | "
                     f"{r.note.replace('|', '/')} |")
    for r in results:
        if r.details:
            lines += ["", f"## {r.name}", "", "```", json.dumps(r.details, indent=2), "```"]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


def run_steps(steps: Sequence[Step], out: str | Path, *, total_budget_s: float = TOTAL_BUDGET_S,
              repo: Path | None = None, env: dict | None = None,
              echo: Callable[[str], None] | None = None) -> dict:
    """Run ``steps`` in order within ``total_budget_s``, in ``repo`` (where ``tests/`` is);
    each gets its budget or what is left; a step that would get less than its budget and
    under :data:`MIN_STEP_S` is skipped. Returns the summary."""
    out = Path(out).resolve()

    def clear(previous: dict | None) -> None:
        for name in RUN_DIRS:
            store.remove_previous(out / name, previous)

    # OUT must be new, empty or a previous gpu-check's; the runs that check's steps wrote
    # are replaced once proven theirs (their manifests name it as part_of).
    with store.claim_dir(out, "gpu-check", clear=clear) as claim:
        env = {**(step_env(repo) if env is None else env), **store.part_of_env(claim.mark)}
        started = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        deadline = time.monotonic() + total_budget_s
        results: list[StepResult] = []
        for step in steps:
            left = deadline - time.monotonic()
            budget = min(step.budget_s, left)
            if left < min(step.budget_s, MIN_STEP_S):
                results.append(StepResult(step.name, "skipped", step.budget_s,
                                          note=f"only {max(left, 0):.0f} s of the check's "
                                               f"{total_budget_s:.0f} s left"))
            else:
                if echo:
                    echo(f"[gpu-check] {step.name} (budget {budget:.0f} s): "
                         f"{step.description}")
                try:
                    results.append(run_step(step, out, budget, env, cwd=repo))
                except KeyboardInterrupt:  # the summary keeps the steps that finished
                    write_summary(out, results, started, finished=False)
                    raise
            if echo:
                r = results[-1]
                echo(f"[gpu-check] {step.name}: {r.status} in {r.seconds:.0f} s "
                     f"{r.note}".rstrip())
            write_summary(out, results, started, finished=False)
        return write_summary(out, results, started, finished=True)


# ------------------------------------------------------------------------- the steps

def junit_counts(path: Path) -> dict:
    """tests / failures / errors / skipped totals of a JUnit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    keys = ("tests", "failures", "errors", "skipped")
    return {k: sum(int(s.get(k, 0)) for s in suites) for k in keys}


def verify_pytest(xml_name: str) -> Verify:
    """A verifier that passes when the JUnit XML ``xml_name`` shows tests that ran (not all
    skipped) with no failure or error."""

    def verify(out: Path) -> tuple[bool, dict]:
        xml = out / xml_name
        if not xml.exists():
            return False, {"error": "pytest wrote no JUnit XML"}
        counts = junit_counts(xml)
        ran = counts["tests"] - counts["skipped"]
        counts["ran"] = ran
        return counts["failures"] == 0 and counts["errors"] == 0 and ran > 0, counts

    return verify


def _verify_sweep(out: Path, name: str = "sweep-quick") -> tuple[bool, dict]:
    run = out / name
    manifest = json.loads((run / "manifest.json").read_text())
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()
            if line.strip()]
    failed = [f"{r['op']} {r['impl']} {r['mode']} {r['dtype']} "
              f"{'x'.join(map(str, r['shape'].values()))}: {r['error']}"
              for r in rows if r.get("error")]
    details = {"device": manifest["device"].get("name"), "backend": manifest.get("backend"),
               "status": manifest.get("status"), "rows": len(rows), "failed": failed}
    ok = manifest.get("backend") == "cuda" and rows and not failed
    return bool(ok), details


def _verify_contrast(out: Path) -> tuple[bool, dict]:
    doc = json.loads((out / "contrast" / "contrast.json").read_text())
    phases = doc.get("phases") or []
    failed = [p.get("name") for p in phases if p.get("error")]
    details = {"phases": len(phases), "failed": failed, "verdict": doc.get("verdict")}
    return bool(phases) and not failed, details


def _verify_report(out: Path) -> tuple[bool, dict]:
    html = out / "report" / "index.html"
    return html.exists() and (out / "report" / "report.md").exists(), {"index": str(html)}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tritonlab.cli", "--backend", "cuda", *args]


def _pytest(out: Path, xml_name: str, *args: str, env: Sequence[str] = ()) -> list[str]:
    # The tests check correctness, not speed: one config per kernel keeps them in budget
    # (the autotune machinery has tests of its own that switch it back on).
    return ["env", "TRITONLAB_AUTOTUNE=0", *env, sys.executable, "-m", "pytest", "-q", "-rs",
            "-p", "no:cacheprovider", f"--junitxml={out / xml_name}", *args]


def _pytest_gpu_argv(out: Path) -> list[str]:
    return _pytest(out, "pytest-gpu.xml", "-m", "gpu", "tests")


# The CPU lane's matmul and linear tests (odd shapes, strides, edge cases) run on the
# interpreter everywhere else; compiled for the GPU they catch what the interpreter hides
# (alignment specialisation, int32 overflow, layout-dependent codegen).
CUDA_LANE_TESTS = ("tests/test_matmul.py", "tests/test_linear.py")


def _cuda_lane_argv(out: Path) -> list[str]:
    return _pytest(out, "pytest-cuda-lane.xml", "-m", "not gpu", *CUDA_LANE_TESTS,
                   env=("TRITONLAB_BACKEND=cuda",))


# The sweep of the check: every op family at the quick preset in bf16, the lab's kernels
# against eager torch / cuBLAS. torch.compile baselines (a compile per shape) do not fit the
# check's 8 minutes: measure them with `tritonlab sweep OP --impl torch_compile ...`.
# fp8_matmul last (its output dtype is --dtype; the operands are e4m3, timed against
# torch._scaled_mm): were the step to run out of time, the bf16 ops are measured already.
SWEEP_OPS = ("matmul", "linear", "gated_mlp", "rmsnorm_linear", "decode_matmul", "fp8_matmul")


def _sweep_argv(out: Path) -> list[str]:
    # matmul's fwd is its infer (same kernel), and linear's fwd is inside its fwd_bwd.
    return _cli("sweep", *SWEEP_OPS, "--preset", "quick", "--dtype", "bfloat16",
                "--mode", "infer", "--mode", "fwd_bwd", "--mode", "bwd",
                "--impl", "triton", "--impl", "torch", "--budget", "0.3",
                "--out", str(out / "sweep-quick"), "--json")


# Attention against SDPA's FlashAttention-2 and memory-efficient backends (the targets of
# docs/attention.md), at the quick preset's Llama-3-8B heads.
ATTENTION_OPS = ("attention", "decode_attention")


def _attention_argv(out: Path) -> list[str]:
    return _cli("sweep", *ATTENTION_OPS, "--preset", "quick", "--dtype", "bfloat16",
                "--mode", "infer", "--mode", "fwd_bwd", "--mode", "bwd",
                "--impl", "triton", "--impl", "sdpa_flash", "--impl", "sdpa_efficient",
                "--budget", "0.3", "--out", str(out / "sweep-attention"), "--json")


def _verify_attention(out: Path) -> tuple[bool, dict]:
    return _verify_sweep(out, "sweep-attention")


def _contrast_argv(out: Path) -> list[str]:
    # The decoder layer at Llama-3-8B size in its three regimes, the lab's kernels only, on a
    # grid small enough for the step's budget (first-use autotuning included).
    return _cli("contrast", "--model", "layer", "--model-size", "llama3-8b", "--impl", "triton",
                "--train-batch", "1", "--train-seq", "2048", "--prefill-batch", "1",
                "--prompt", "2048", "--decode-batch", "1", "--decode-batch", "64",
                "--context", "4096", "--duration", "2", "--warmup", "1", "--idle", "2",
                "--cooldown", "0.5", "--out", str(out / "contrast"), "--json")


def _report_argv(out: Path) -> list[str]:
    return _cli("report", str(out / "sweep-quick"), str(out / "sweep-attention"),
                str(out / "contrast"),
                "-o", str(out / "report"))


# The run directories the steps write (replaced by the next check into the same DIR).
RUN_DIRS = ("sweep-quick", "sweep-attention", "contrast", "report")

STEPS: list[Step] = [
    Step("nvidia-smi", 10, lambda out: ["nvidia-smi"], "the GPU, driver and clocks"),
    Step("pytest-gpu", 115, _pytest_gpu_argv,
         "pytest -m gpu: compiled kernels incl. bfloat16, autotune, CUDA timer, sweep on CUDA",
         verify_pytest("pytest-gpu.xml")),
    Step("pytest-cuda-lane", 60, _cuda_lane_argv, "the CPU lane's matmul and linear tests "
         "under the cuda backend", verify_pytest("pytest-cuda-lane.xml")),
    Step("sweep-quick", 115, _sweep_argv, "a quick bf16 sweep of every GEMM-family op into "
         "sweep-quick/", _verify_sweep),
    Step("sweep-attention", 70, _attention_argv, "flash and decode attention against SDPA's "
         "flash and efficient backends into sweep-attention/", _verify_attention),
    Step("contrast", 70, _contrast_argv, "a short three-regime contrast (Llama-3-8B decoder "
         "layer: training step, prefill, decode) into contrast/", _verify_contrast),
    Step("report", 20, _report_argv, "the report of the sweep and the contrast into report/",
         _verify_report),
]


def is_repo(path: Path) -> bool:
    """Whether ``path`` holds the lab's test suite (what the pytest steps run)."""
    return (path / "tests" / "conftest.py").is_file() and all(
        (path / t).is_file() for t in CUDA_LANE_TESTS)


def find_repo(explicit: str | Path | None = None, cwd: Path | None = None) -> Path:
    """The repository whose ``tests/`` the check runs: ``explicit`` when given, else the
    first of the current directory, its parents and the directory above the imported
    package that holds the tests. Raises :class:`UsageError` naming where it looked."""
    if explicit is not None:
        repo = Path(explicit).resolve()
        if not is_repo(repo):
            raise UsageError(f"--repo {explicit}: no tests/conftest.py with "
                             f"{', '.join(CUDA_LANE_TESTS)} there")
        return repo
    here = (cwd or Path.cwd()).resolve()
    package_parent = Path(__file__).resolve().parents[2]
    candidates = [here, *here.parents, package_parent]
    for path in candidates:
        if is_repo(path):
            return path
    raise UsageError(f"cannot find the lab's tests/ (looked in {here}, its parents and "
                     f"{package_parent}); run from the repository or pass --repo DIR")


def select_steps(only: Sequence[str] = ()) -> list[Step]:
    """:data:`STEPS`, or those named in ``only`` (UsageError for an unknown name)."""
    names = [s.name for s in STEPS]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise UsageError(f"unknown step {', '.join(map(repr, unknown))}; valid steps: "
                         f"{', '.join(names)}")
    return [s for s in STEPS if not only or s.name in only]


def default_out(repo: Path) -> Path:
    return repo / "reports" / f"gpu-{_dt.datetime.now():%Y%m%d-%H%M%S}"
