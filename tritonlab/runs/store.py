"""The run directory (DESIGN.md "Run directory"): ``manifest.json``, ``results.jsonl``
(one JSON object per point, appended and flushed as each point finishes) and
``counters.csv`` (written by the counter samplers).

Both files carry ``schema_version``; readers refuse a newer schema than they know. A
``results.jsonl`` whose last line was cut short by a crash is reported and that line skipped
(and cut off before a resumed sweep appends); a malformed line elsewhere is an error.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from tritonlab.errors import UsageError
from tritonlab.output import dumps, info

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
RESULTS = "results.jsonl"
COUNTERS = "counters.csv"

Warn = Callable[[str], None]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def shape_str(shape: Mapping[str, int]) -> str:
    return "x".join(str(v) for v in shape.values())


def point_key(row: Mapping) -> tuple:
    """What identifies a point across runs: (op, impl, mode, dtype, shape)."""
    return (row["op"], row["impl"], row["mode"], row["dtype"],
            tuple((k, int(v)) for k, v in row["shape"].items()))


def format_key(key: tuple) -> str:
    op, impl, mode, dtype, shape = key
    return f"{op} {impl} {mode} {dtype} {'x'.join(str(v) for _, v in shape)}"


def _check_schema(doc: Mapping, where: str) -> None:
    version = doc.get("schema_version")
    if not isinstance(version, int):
        raise UsageError(f"{where}: no integer schema_version; not written by tritonlab")
    if version > SCHEMA_VERSION:
        raise UsageError(f"{where}: schema_version {version} is newer than this tritonlab "
                         f"reads ({SCHEMA_VERSION}); upgrade tritonlab")


def read_results(path: Path, warn: Warn = info) -> list[dict]:
    """The rows of a results.jsonl (empty if the file does not exist).

    A last line without its newline that is not valid JSON (a crash mid-write) is reported
    through ``warn`` and skipped; any other malformed line raises :class:`UsageError`.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    complete = data.endswith(b"\n")
    rows = []
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            if last and not complete:
                warn(f"warning: {path}: last line is truncated ({len(raw)} bytes, probably "
                     f"cut off by a crash); skipped")
                continue
            raise UsageError(f"{path}:{i + 1}: not a JSON object; the file is corrupt") from None
        if not isinstance(row, dict):
            raise UsageError(f"{path}:{i + 1}: not a JSON object; the file is corrupt")
        _check_schema(row, f"{path}:{i + 1}")
        rows.append(row)
    return rows


def _git_state() -> dict:
    repo = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha or None, "dirty": bool(dirty)}


def _versions() -> dict:
    import numpy
    import torch
    import triton

    try:
        from importlib.metadata import version

        tritonlab_version = version("tritonlab")
    except Exception:  # running from a source tree that is not installed
        tritonlab_version = None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__, "numpy": numpy.__version__,
            "tritonlab": tritonlab_version, "cuda": torch.version.cuda}


def build_manifest(*, kind: str, backend, device: dict, argv: Iterable[str],
                   options: Mapping, timer: Mapping | None = None) -> dict:
    """A fresh manifest: run id, time, command line, git state, versions, backend, and the
    ``device`` (:func:`tritonlab.hw.devices.describe` plus clocks at start)."""
    argv = list(argv)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
        "kind": kind,
        "status": "running",
        "start_time": now_iso(),
        "end_time": None,
        "command": argv,
        "command_line": shlex.join(argv),
        "cwd": os.getcwd(),
        "host": platform.node(),
        "git": _git_state(),
        "versions": {**_versions(), "driver": device.get("driver")},
        "backend": backend.name,
        "backend_reason": backend.reason,
        "device": device,
        "options": dict(options),
        "timer": dict(timer) if timer else None,
        "resumed": [],
    }


def new_run_dir(root: str | Path = "runs") -> Path:
    """A new directory name under ``root`` named by the local date and time."""
    base = Path(root) / f"{_dt.datetime.now():%Y%m%d-%H%M%S}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


class RunDir:
    """One run directory. Use :meth:`create` for a new run, :meth:`open` for an existing one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS

    @property
    def counters_path(self) -> Path:
        return self.path / COUNTERS

    @classmethod
    def create(cls, path: str | Path, manifest: Mapping) -> RunDir:
        """Make the directory and write its manifest; refuses a directory that already holds
        a run (resume it instead) or other files."""
        run = cls(path)
        if run.manifest_path.exists():
            raise UsageError(f"{run.path} already holds a run; pass --resume to continue it "
                             f"or choose another --out")
        if run.path.exists() and (not run.path.is_dir() or any(run.path.iterdir())):
            raise UsageError(f"{run.path} exists and is not an empty directory; choose "
                             f"another --out")
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_manifest(manifest)
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run; :class:`UsageError` if ``path`` is not one."""
        run = cls(path)
        if not run.path.is_dir():
            raise UsageError(f"{run.path} is not a run directory (no such directory)")
        if not run.manifest_path.is_file():
            raise UsageError(f"{run.path} is not a run directory (no {MANIFEST})")
        run.manifest()
        return run

    def manifest(self) -> dict:
        try:
            doc = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"{self.manifest_path}: unreadable manifest ({exc})") from None
        if not isinstance(doc, dict):
            raise UsageError(f"{self.manifest_path}: not a JSON object")
        _check_schema(doc, str(self.manifest_path))
        return doc

    def write_manifest(self, manifest: Mapping) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(dumps(manifest) + "\n")
        os.replace(tmp, self.manifest_path)

    def update_manifest(self, **fields) -> dict:
        doc = {**self.manifest(), **fields}
        self.write_manifest(doc)
        return doc

    def rows(self, warn: Warn = info) -> list[dict]:
        return read_results(self.results_path, warn)

    def repair(self, warn: Warn = info) -> None:
        """Cut a truncated last line off results.jsonl (after a crash), so appended rows
        start on a line of their own."""
        path = self.results_path
        if not path.exists():
            return
        data = path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            json.loads(tail)
        except ValueError:
            warn(f"warning: {path}: removing a truncated last line ({len(tail)} bytes)")
            with open(path, "r+b") as f:
                f.truncate(cut)
            return
        with open(path, "ab") as f:
            f.write(b"\n")

    def append(self, rows: Iterable[Mapping]) -> None:
        """Append rows and flush them to disk before returning."""
        # dumps() turns NaN/Inf into null (strict JSON); re-encoding puts each row on a line.
        text = "".join(json.dumps(json.loads(dumps(r))) + "\n" for r in rows)
        if not text:
            return
        with open(self.results_path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def command_argv() -> list[str]:
    """The command line of this process, as a user would type it."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "tritonlab"
    return [prog, *sys.argv[1:]]
