"""The run directory (docs/design.md, "The run directory"): ``manifest.json``, ``results.jsonl``
(one JSON object per point, appended and flushed as each point finishes) and
``counters.csv`` (written by the counter samplers), and :func:`load_run`, which reads one
back for ``compare`` and ``report``.

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
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy
import torch

from tritonlab.errors import UsageError
from tritonlab.output import dumps, info
from tritonlab.runs.records import SCHEMA_VERSION, PointKey, ResultRow, point_key

MANIFEST = "manifest.json"
RESULTS = "results.jsonl"
COUNTERS = "counters.csv"
CONTRAST = "contrast.json"
TIMELINE = "timeline.png"

Warn = Callable[[str], None]


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).astimezone().isoformat(timespec="seconds")


def _check_schema(doc: Mapping, where: str) -> None:
    version = doc.get("schema_version")
    if not isinstance(version, int):
        raise UsageError(f"{where}: no integer schema_version; not written by tritonlab")
    if version > SCHEMA_VERSION:
        raise UsageError(f"{where}: schema_version {version} is newer than this tritonlab "
                         f"reads ({SCHEMA_VERSION}); upgrade tritonlab")


def read_results(path: Path, warn: Warn = info) -> list[ResultRow]:
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


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return None


def _versions() -> dict:
    # Triton's version from its metadata: importing triton here, before a kernel module has
    # chosen the backend, would set Triton up for the wrong one.
    return {"python": platform.python_version(), "torch": torch.__version__,
            "triton": _dist_version("triton"), "numpy": numpy.__version__,
            "tritonlab": _dist_version("tritonlab"), "cuda": torch.version.cuda}


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

    def rows(self, warn: Warn = info) -> list[ResultRow]:
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

    def append(self, rows: Iterable[ResultRow]) -> None:
        """Append rows and flush them to disk before returning."""
        # dumps() turns NaN/Inf into null (strict JSON); re-encoding puts each row on a line.
        text = "".join(json.dumps(json.loads(dumps(r))) + "\n" for r in rows)
        if not text:
            return
        with open(self.results_path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


@dataclass
class Run:
    """A run directory read back: its manifest, its rows in file order, its points (the
    rows by :class:`PointKey`, the last winning where a point repeats), the contrast when
    there is one, and the warnings met while reading."""

    path: Path
    manifest: dict
    rows: list[ResultRow]
    points: dict[PointKey, ResultRow]
    contrast: dict | None = None
    counters_csv: Path | None = None
    timeline_png: Path | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The run's name in tables and figures: its kind and id (``sweep-20261127-...``)."""
        run_id = str(self.manifest.get("run_id") or self.path.name)
        kind = self.manifest.get("kind")
        return f"{kind}-{run_id}" if kind and not run_id.startswith(str(kind)) else run_id

    @property
    def backend(self) -> str:
        return str(self.manifest.get("backend") or self._first("backend") or "unknown")

    @property
    def device(self) -> str:
        """The device name (manifests before ``device`` was an object held a string)."""
        dev = self.manifest.get("device")
        name = dev.get("name") if isinstance(dev, Mapping) else dev
        return str(name or self.manifest.get("device_name") or self._first("device")
                   or "unknown")

    @property
    def device_uuid(self) -> str | None:
        dev = self.manifest.get("device")
        if isinstance(dev, Mapping) and dev.get("uuid"):
            return dev["uuid"]
        return self.manifest.get("uuid") or self.manifest.get("device_uuid")

    @property
    def is_gpu(self) -> bool:
        return self.backend == "cuda"

    def _first(self, key: str):
        return next((r[key] for r in self.rows if r.get(key)), None)


def _read_contrast(path: Path, warn: Warn) -> dict | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        warn(f"{path} is not valid JSON ({exc}); its section is left out")
        return None
    if not isinstance(doc, dict):
        warn(f"{path} is not a JSON object; its section is left out")
        return None
    version = doc.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise UsageError(f"{path}: schema_version {version} is newer than this tritonlab "
                         f"reads ({SCHEMA_VERSION}); upgrade tritonlab")
    return doc


def load_run(path: str | Path, warn: Warn | None = info) -> Run:
    """Read and validate a run directory.

    :class:`UsageError` for a missing directory, one without ``manifest.json``, an
    unreadable or corrupt file, a row without op/impl/mode/dtype/shape, or a
    ``schema_version`` newer than this tritonlab reads (manifest, rows or contrast). A
    truncated last line of ``results.jsonl`` (an interrupted run), a repeated point and an
    unreadable ``contrast.json`` are warnings: each is kept in :attr:`Run.warnings` and, when
    ``warn`` is given, passed to it as ``"warning: ..."`` as it is met.
    """
    warnings: list[str] = []

    def note(message: str) -> None:
        text = message.removeprefix("warning: ")
        warnings.append(text)
        if warn is not None:
            warn(f"warning: {text}")

    run_dir = RunDir.open(path)
    rows = run_dir.rows(note)
    points: dict[PointKey, ResultRow] = {}
    for row in rows:
        try:
            key = point_key(row)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise UsageError(f"{run_dir.results_path}: a row lacks op/impl/mode/dtype/shape"
                             ) from None
        if key in points:
            note(f"{run_dir.results_path}: {key} appears twice; using the last")
        points[key] = row
    contrast_path = run_dir.path / CONTRAST
    contrast = _read_contrast(contrast_path, note) if contrast_path.is_file() else None
    timeline = run_dir.path / TIMELINE
    run = Run(path=run_dir.path, manifest=run_dir.manifest(), rows=rows, points=points,
              contrast=contrast,
              counters_csv=run_dir.counters_path if run_dir.counters_path.is_file() else None,
              timeline_png=timeline if timeline.is_file() else None, warnings=warnings)
    if not rows and contrast is None:
        note(f"{run.path}: no results rows and no contrast: nothing measured")
    return run


def command_argv() -> list[str]:
    """The command line of this process, as a user would type it."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "tritonlab"
    return [prog, *sys.argv[1:]]
