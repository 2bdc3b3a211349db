"""The run directory (docs/design.md, "The run directory"): ``manifest.json``, ``results.jsonl``
(one JSON object per point, appended and flushed as each point finishes) and
``counters.csv`` (written by the counter samplers), and :func:`load_run`, which reads one
back for ``compare`` and ``report``.

Both files carry ``schema_version``; readers refuse a newer schema than they know. A
``results.jsonl`` whose last line was cut short by a crash is reported and that line skipped
(and cut off before a resumed sweep appends); a malformed line elsewhere is an error.

What a command may overwrite (docs/design.md, "The run directory"): every output directory
carries its writer's marker (``written_by``: ``tritonlab <command>``, a unique ``write_id``,
and ``part_of``, the job it was written for), in the manifest of a run directory and in
:data:`OWNER_FILE` elsewhere. A command writes only into a new or empty directory or one its
own marker names (:func:`claim_dir`, :meth:`RunDir.create`, :meth:`RunDir.open_to_resume`),
and removes a directory only when its marker proves the previous run of the job wrote it
(:func:`remove_previous`). A directory being written is locked by its writer
(:class:`DirLock`), and files are replaced through uniquely named temporary files
(:func:`atomic_write_text`), so two processes never interleave in one directory.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
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
# The writer's marker of an output directory that is not a run directory (a report, a
# demo, a gpu-check, an inspect dump), and the lock file of a directory being written.
OWNER_FILE = ".tritonlab-owner.json"
LOCK_FILE = ".tritonlab.lock"
# A job that starts tritonlab commands as subprocesses (gpu-check) names itself here, so
# that their outputs record it as ``part_of`` and the job's next run may replace them.
PART_OF_ENV = "TRITONLAB_PART_OF"

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


# Row fields that the readers compute with (speedups, geometric means, rooflines, plots):
# each is a finite number >= 0 or null. NaN and infinities are written as null, so a row
# holding one was not written by tritonlab.
_ROW_NUMBERS = ("ms", "iqr_ms", "rel_ci", "host_ms", "n_samples", "flops", "bytes",
                "intensity", "unfused_bytes", "tflops", "gbps", "max_rel_err", "rel_fro_err")
_ROW_NUMBER_LISTS = ("ms_ci", "samples_ms")


def _is_amount(value) -> bool:
    """A finite number >= 0 (bool, which JSON keeps apart, is not one)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def check_row(row: Mapping, where: str) -> None:
    """Raise :class:`UsageError` naming ``where`` (``file:line``) unless ``row`` is a
    results row the readers can use: ``op``, ``impl``, ``mode`` and ``dtype`` names, a
    ``shape`` of positive integer sizes, and every timing and rate field (:data:`_ROW_NUMBERS`,
    the lists ``ms_ci`` and ``samples_ms``, the values of ``speedup``) a finite number >= 0
    or null; ``correct`` true, false or null and ``error`` text or null. Fields a row lacks
    are fine (older rows lack later fields), except the identity."""

    def corrupt(what: str):
        return UsageError(f"{where}: {what}; the file is corrupt")

    for key in ("op", "impl", "mode", "dtype"):
        if key not in row:
            raise corrupt(f"the row has no {key!r}")
        if not isinstance(row[key], str) or not row[key]:
            raise corrupt(f"{key!r} is {row[key]!r}, not a name")
    shape = row.get("shape")
    if not (isinstance(shape, dict) and shape and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape.values())):
        raise corrupt(f"'shape' is {shape!r}, not dimension -> positive integer")
    for key in _ROW_NUMBERS:
        value = row.get(key)
        if value is not None and not _is_amount(value):
            raise corrupt(f"{key!r} is {value!r}, not a finite number >= 0 or null")
    for key in _ROW_NUMBER_LISTS:
        value = row.get(key)
        if value is not None and not (isinstance(value, list)
                                      and all(_is_amount(v) for v in value)):
            raise corrupt(f"{key!r} is {value!r}, not a list of finite numbers >= 0 or null")
    speedup = row.get("speedup")
    if speedup is not None and not (isinstance(speedup, dict) and all(
            v is None or _is_amount(v) for v in speedup.values())):
        raise corrupt(f"'speedup' is {speedup!r}, not impl -> finite number >= 0 or null")
    if row.get("correct") not in (None, True, False):
        raise corrupt(f"'correct' is {row['correct']!r}, not true, false or null")
    if not isinstance(row.get("error"), (str, type(None))):
        raise corrupt(f"'error' is {row['error']!r}, not text or null")


def read_results(path: Path, warn: Warn = info) -> list[ResultRow]:
    """The rows of a results.jsonl (empty if the file does not exist), each checked
    (:func:`check_row`).

    A last line without its newline that is not valid JSON (a crash mid-write) is reported
    through ``warn`` and skipped; any other malformed line or row, and a ``results.jsonl``
    that is not a readable file, raise :class:`UsageError` naming the file (and line).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return []
    if not path.is_file():
        raise UsageError(f"{path}: not a regular file; the run directory is corrupt")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{path}: unreadable ({exc.strerror or exc})") from None
    lines = data.split(b"\n")
    complete = data.endswith(b"\n")
    rows = []
    for i, raw in enumerate(lines):
        last = i == len(lines) - 1
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested arrays
            if last and not complete:
                warn(f"warning: {path}: last line is truncated ({len(raw)} bytes, probably "
                     f"cut off by a crash); skipped")
                continue
            raise UsageError(f"{path}:{i + 1}: not a JSON object; the file is corrupt") from None
        if not isinstance(row, dict):
            raise UsageError(f"{path}:{i + 1}: not a JSON object; the file is corrupt")
        _check_schema(row, f"{path}:{i + 1}")
        check_row(row, f"{path}:{i + 1}")
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
                   options: Mapping, timer: Mapping | None = None,
                   part_of: Mapping | None = None) -> dict:
    """A fresh manifest: run id, writer's marker (``tritonlab <kind>``, :func:`writer_mark`),
    time, command line, git state, versions, backend, and the ``device``
    (:func:`tritonlab.hw.devices.describe` plus clocks at start)."""
    argv = list(argv)
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": f"{_dt.datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
        **writer_mark(kind, part_of),
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


# ------------------------------------------------------- ownership, locks, atomic writes

def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace ``path`` by ``text`` all at once: a reader sees the old file or the new one,
    never a part. The temporary file has a unique name in the same directory, so two
    writers never share one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class DirLock:
    """An exclusive lock on a directory for one writing process: ``fcntl.flock`` on
    :data:`LOCK_FILE` in it, which holds the holder's pid. The operating system drops the
    lock when the holder dies, however it dies, so a stale lock file never blocks anyone;
    :meth:`release` removes the file."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        """Take the lock, or raise :class:`UsageError` naming the process that holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise UsageError(f"cannot lock {self.directory}: {exc.strerror or exc}"
                                 ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise UsageError(f"{self.directory} is in use by another tritonlab process "
                                 f"(pid {holder}, holding {self.path}); wait for it to "
                                 f"finish or stop it") from None
            # A holder that released between our open and flock has removed the file we
            # opened; lock the file now at that path instead.
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _is_empty(path: Path) -> bool:
    """Nothing in ``path`` but (maybe) another process's lock file."""
    return all(p.name == LOCK_FILE for p in path.iterdir())


def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot write the directory {str(path)!r}: {exc.strerror or exc}"
                         ) from None


def _env_part_of() -> dict | None:
    try:
        doc = json.loads(os.environ.get(PART_OF_ENV) or "null")
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def writer_mark(command: str, part_of: Mapping | None = None) -> dict:
    """The marker of one write by ``tritonlab <command>``: ``written_by``, a unique
    ``write_id`` and, when it is written for a larger job, ``part_of`` (that job's own
    marker; default: the one a parent process put in :data:`PART_OF_ENV`)."""
    mark: dict = {"written_by": f"tritonlab {command}", "write_id": uuid.uuid4().hex}
    parent = part_of if part_of is not None else _env_part_of()
    if parent and parent.get("written_by") and parent.get("write_id"):
        mark["part_of"] = {"written_by": parent["written_by"], "write_id": parent["write_id"]}
    return mark


def part_of_env(mark: Mapping) -> dict[str, str]:
    """The environment that makes the tritonlab commands a job starts record it as
    ``part_of``."""
    return {PART_OF_ENV: json.dumps({"written_by": mark["written_by"],
                                     "write_id": mark["write_id"]})}


def _mark_of(doc: Mapping) -> dict | None:
    if isinstance(doc.get("written_by"), str) and isinstance(doc.get("write_id"), str):
        part_of = doc.get("part_of")
        return {"written_by": doc["written_by"], "write_id": doc["write_id"],
                **({"part_of": dict(part_of)} if isinstance(part_of, Mapping) else {})}
    return None


def read_mark(path: str | Path) -> dict | None:
    """The writer's marker of an output directory: its manifest's for a run directory, else
    :data:`OWNER_FILE`'s; None where there is none (the directory is not provably
    tritonlab's)."""
    path = Path(path)
    name = MANIFEST if (path / MANIFEST).exists() else OWNER_FILE
    try:
        doc = json.loads((path / name).read_text())
    except (OSError, ValueError):
        return None
    return _mark_of(doc) if isinstance(doc, dict) else None


@dataclass
class Claim:
    """An output directory that ``tritonlab <command>`` may write (see :func:`claim_dir`):
    its new marker, the marker its previous writer left (None for a new or empty
    directory), and the lock held until :meth:`release`."""

    path: Path
    mark: dict
    previous: dict | None
    lock: DirLock

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_dir(path: str | Path, command: str, *, part_of: Mapping | None = None,
              clear: Callable[[dict | None], None] | None = None) -> Claim:
    """Make ``path`` the output directory of ``tritonlab <command>``, which may then write
    and overwrite files in it.

    Accepted: a missing directory (it is made), an empty one, and one whose
    :data:`OWNER_FILE` says ``tritonlab <command>`` wrote it. Anything else (a file, a
    directory holding someone's files, a run directory, another command's output) raises
    :class:`UsageError` and nothing is touched; so does a directory another process is
    writing. Under the lock, ``clear(previous_marker)`` removes what the previous run left
    (:func:`remove_previous`) before the new marker is written, so that an interrupted
    clean-up can be redone. The lock is held until the claim is released.
    """
    path = Path(path)
    me = f"tritonlab {command}"

    def check() -> dict | None:
        if path.exists() and not path.is_dir():
            raise UsageError(f"{path} is a file, not a directory; choose another directory")
        if not path.is_dir() or _is_empty(path):
            return None
        mark = read_mark(path)
        if mark is None or mark["written_by"] != me:
            who = (f"holds the output of {mark['written_by']}" if mark else
                   "holds files tritonlab did not write")
            raise UsageError(f"{path} is not empty and {who}; {me} replaces only its own "
                             f"output: choose a new or empty directory")
        return mark

    check()
    _make_dir(path)
    lock = DirLock(path).acquire()
    try:
        previous = check()
        if clear is not None:
            clear(previous)
        mark = writer_mark(command, part_of)
        atomic_write_text(path / OWNER_FILE, dumps({**mark, "time": now_iso()}) + "\n")
    except BaseException:
        lock.release()
        raise
    return Claim(path, mark, previous, lock)


def remove_previous(path: str | Path, previous: Mapping | None) -> None:
    """Remove the directory ``path`` that the previous run of a job left, after proving it:
    its marker must name that run (``previous``, the job's old marker) as ``part_of``. A
    missing ``path`` is fine; anything else raises :class:`UsageError` and stays."""
    path = Path(path)
    if not path.exists():
        return
    mark = read_mark(path) if path.is_dir() else None
    job = previous["written_by"] if previous else "this command"
    if not (previous and mark and (mark.get("part_of") or {}).get("write_id")
            == previous["write_id"]):
        raise UsageError(f"{path} was not written by the previous {job} here and would be "
                         f"replaced; move it away or choose another directory")
    with DirLock(path):  # refuses while another process writes it
        shutil.rmtree(path)


class RunDir:
    """One run directory. Use :meth:`create` for a new run, :meth:`open_to_resume` to write
    more into an existing one (both lock it until :meth:`release`, or the end of a ``with``
    block), :meth:`open` to read one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock: DirLock | None = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        """Unlock the directory (nothing when this process does not hold it)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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
        """Make the directory, lock it and write its manifest; refuses a directory that
        already holds a run (resume it instead), holds other files, or is locked by another
        process."""
        run = cls(path)

        def refuse_if_in_use() -> None:
            if run.manifest_path.exists():
                raise UsageError(f"{run.path} already holds a run; pass --resume to continue "
                                 f"it or choose another --out")
            if run.path.exists() and (not run.path.is_dir() or not _is_empty(run.path)):
                raise UsageError(f"{run.path} exists and is not an empty directory; choose "
                                 f"another --out")

        if run.manifest_path.exists():  # a run another process is writing: name it
            DirLock(run.path).acquire().release()
        refuse_if_in_use()
        _make_dir(run.path)
        run._lock = DirLock(run.path).acquire()
        try:
            refuse_if_in_use()  # again, now that no other process can start a run here
            run.write_manifest(manifest)
        except BaseException:
            run.release()
            raise
        return run

    @classmethod
    def open_to_resume(cls, path: str | Path, kind: str) -> RunDir:
        """An existing run of ``kind`` to write more into, locked; :class:`UsageError` if it
        is not one, is locked by another process, or its manifest does not prove that
        ``tritonlab <kind>`` wrote it."""
        run = cls.open(path)
        run._lock = DirLock(run.path).acquire()
        try:
            manifest = run.manifest()
            mark = _mark_of(manifest)
            if manifest.get("kind") != kind or mark is None or \
                    mark["written_by"] != f"tritonlab {kind}":
                who = f"written by {mark['written_by']}" if mark else "not written by tritonlab " \
                    f"{kind} (its manifest has no written_by marker)"
                raise UsageError(f"cannot resume {run.path}: it is a {manifest.get('kind')} run "
                                 f"{who}; tritonlab {kind} resumes only its own runs")
        except BaseException:
            run.release()
            raise
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
        atomic_write_text(self.manifest_path, dumps(manifest) + "\n")

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
    rows by :class:`PointKey`, the last winning where a point repeats; a run measured on
    several device models, a cluster run, has one set per model: see :meth:`by_device`),
    the contrast when there is one, and the warnings met while reading. ``model``: set on
    the views :meth:`by_device` makes, the device model they hold."""

    path: Path
    manifest: dict
    rows: list[ResultRow]
    points: dict[PointKey, ResultRow]
    contrast: dict | None = None
    counters_csv: Path | None = None
    timeline_png: Path | None = None
    warnings: list[str] = field(default_factory=list)
    model: str | None = None

    @property
    def label(self) -> str:
        """The run's name in tables and figures: its kind and id (``sweep-20261127-...``),
        and the device model for one model's view of a cluster run."""
        run_id = str(self.manifest.get("run_id") or self.path.name)
        kind = self.manifest.get("kind")
        name = f"{kind}-{run_id}" if kind and not run_id.startswith(str(kind)) else run_id
        return f"{name} [{self.model}]" if self.model else name

    @property
    def models(self) -> list[str]:
        """The device models its rows were measured on, in order of first appearance."""
        return list(dict.fromkeys(str(r.get("device") or self.device) for r in self.rows))

    def by_device(self) -> list[Run]:
        """One view of the run per device model (the run itself when it has one): the rows,
        points and ceilings (the manifest's ``peaks_by_device``) of that model, its name as
        the manifest's device, so that reports and comparisons take each GPU model as a run
        of its own. The warnings stay with the first view."""
        models = self.models
        if len(models) <= 1:
            return [self]
        device = self.manifest.get("device") or {}
        peaks = self.manifest.get("peaks_by_device") or {}
        views = []
        for i, model in enumerate(models):
            rows = [r for r in self.rows if str(r.get("device") or self.device) == model]
            manifest = {**self.manifest, "peaks": peaks.get(model),
                        "device": {"name": model, "kind": device.get("kind")}}
            views.append(Run(path=self.path, manifest=manifest, rows=rows,
                             points={point_key(r): r for r in rows}, contrast=self.contrast,
                             warnings=self.warnings if i == 0 else [], model=model))
        return views

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


def _checked_manifest(doc: dict, path: Path) -> dict:
    """A run's manifest as the readers take it: the fields they read as objects (``device``,
    ``timer``, ``options``, ``peaks``) are objects or null, else :class:`UsageError`; a
    ``device`` that is a name (manifests before it was an object) becomes ``{"name": ...}``."""
    if isinstance(doc.get("device"), str):
        doc = {**doc, "device": {"name": doc["device"]}}
    for key in ("device", "timer", "options", "peaks"):
        if not isinstance(doc.get(key), (dict, type(None))):
            raise UsageError(f"{path}: {key!r} is {doc[key]!r}, not an object or null; the "
                             f"file is corrupt")
    return doc


def load_run(path: str | Path, warn: Warn | None = info) -> Run:
    """Read and validate a run directory.

    :class:`UsageError` naming the file (and line) for a missing directory, one without
    ``manifest.json``, an unreadable or corrupt file, a row the readers cannot use
    (:func:`check_row`), or a ``schema_version`` newer than this tritonlab reads (manifest,
    rows or contrast). A
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
    manifest = _checked_manifest(run_dir.manifest(), run_dir.manifest_path)
    rows = run_dir.rows(note)
    points: dict[PointKey, ResultRow] = {}
    seen: set[tuple] = set()
    for row in rows:  # each checked by read_results, so each has its key
        key = point_key(row)
        # A cluster run measures each point once per device model.
        if (row.get("device"), key) in seen:
            note(f"{run_dir.results_path}: {key} appears twice; using the last")
        seen.add((row.get("device"), key))
        points[key] = row
    contrast_path = run_dir.path / CONTRAST
    contrast = _read_contrast(contrast_path, note) if contrast_path.is_file() else None
    timeline = run_dir.path / TIMELINE
    run = Run(path=run_dir.path, manifest=manifest, rows=rows, points=points,
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
