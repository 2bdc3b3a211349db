"""``tritonlab new OPNAME [--like FAMILY]``: write a working op to start an experiment from.

Three files per op, from the templates under ``templates/<family>/``: the kernel
(``kernels/<op>.py``: the ``@triton.jit`` function and its launcher), the op declaration
(``ops/<op>.py``: presets, inputs, float64 reference, FLOP and byte formulas, tolerances,
baselines, compile targets) and its test (``tests/test_<op>.py``). The registry discovers
the op from its module, so ``list``, ``check``, ``sweep``, ``inspect`` and ``report`` take it
with no other edit. Nothing is ever overwritten, and nothing is written outside those three
folders.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from string import Template

from tritonlab.errors import UsageError

TEMPLATES = Path(__file__).resolve().parent / "templates"

FAMILIES = {
    "matmul": "C = A @ B: a tiled GEMM with edge masks (modes fwd, infer)",
    "linear": "y = relu(x W^T + b): a fused forward with a torch backward in an "
              "autograd.Function (modes fwd, bwd, fwd_bwd, infer)",
    "gated_mlp": "y = silu(x Wg^T) * (x Wu^T): two GEMMs and the gating in one kernel "
                 "(mode infer)",
}

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# Names longer than this overflow the tables' op column and the generated files' lines.
MAX_NAME = 32


@dataclass(frozen=True)
class Layout:
    """Where an op's three files go: the package's ``kernels/`` and ``ops/`` folders and the
    tests folder."""

    package_dir: Path
    tests_dir: Path

    def files(self, name: str) -> dict[str, Path]:
        return {"kernel": self.package_dir / "kernels" / f"{name}.py",
                "op": self.package_dir / "ops" / f"{name}.py",
                "test": self.tests_dir / f"test_{name}.py"}


def default_layout(package_dir: str | Path | None = None,
                   tests_dir: str | Path | None = None) -> Layout:
    """The imported package (or ``package_dir``) and the ``tests/`` beside it (or
    ``tests_dir``). An installed package has no tests beside it: then ``tests_dir`` must be
    given."""
    package = Path(package_dir) if package_dir else Path(__file__).resolve().parents[1]
    package = package.resolve()
    for sub in ("kernels", "ops"):
        if not (package / sub / "__init__.py").is_file():
            raise UsageError(f"{package} is not a tritonlab package (no {sub}/__init__.py)")
    if tests_dir is not None:
        tests = Path(tests_dir).resolve()
        if not tests.is_dir():
            raise UsageError(f"--tests-dir {tests_dir} is not a directory")
    else:
        tests = package.parent / "tests"
        if not (tests / "conftest.py").is_file():
            raise UsageError(f"no tests/conftest.py beside {package}; pass --tests-dir DIR")
    return Layout(package, tests)


def check_name(name: str, layout: Layout, existing_ops: Iterable[str] = ()) -> None:
    """Raise :class:`UsageError` (with the reason) unless ``name`` can name a new op: a
    lowercase Python identifier of at most :data:`MAX_NAME` characters that is no keyword,
    no existing op, no module of the package's ``kernels``/``ops`` and no importable
    top-level module (the templates import torch, triton and the standard library under
    their own names), whose files do not exist yet."""
    if not name.isidentifier():
        raise UsageError(f"{name!r} is not a Python identifier (letters, digits and _, not "
                         f"starting with a digit)")
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise UsageError(f"{name!r} is a Python keyword; choose another name")
    if not _NAME_RE.match(name):
        raise UsageError(f"{name!r}: an op name is lowercase and starts with a letter "
                         f"(modules starting with _ are not discovered), e.g. "
                         f"{name.lower().lstrip('_') or 'my_op'!r}")
    if len(name) > MAX_NAME:
        raise UsageError(f"{name!r} is {len(name)} characters long; an op name has at most "
                         f"{MAX_NAME}")
    existing = sorted(set(existing_ops))
    if name in existing:
        raise UsageError(f"op {name!r} exists already; existing ops: {', '.join(existing)}")
    for sub in ("kernels", "ops"):
        module = layout.package_dir / sub
        if (module / f"{name}.py").exists() or (module / name).is_dir():
            raise UsageError(f"tritonlab.{sub}.{name} exists already; choose another name")
    if importlib.util.find_spec(name) is not None:
        raise UsageError(f"{name!r} is the name of an importable module; choose another name")
    taken = [str(p) for p in layout.files(name).values() if p.exists()]
    if taken:
        raise UsageError(f"{', '.join(taken)} exists already; nothing was written")


def render(name: str, family: str) -> dict[str, str]:
    """The three files' text for op ``name`` from ``family``'s templates."""
    if family not in FAMILIES:
        raise UsageError(f"unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    words = {"op": name, "Op": "".join(w.capitalize() for w in name.split("_") if w)}
    return {part: Template((TEMPLATES / family / f"{part}.py.tmpl").read_text())
            .substitute(words) for part in ("kernel", "op", "test")}


def new_op(name: str, family: str = "matmul", layout: Layout | None = None,
           existing_ops: Iterable[str] = ()) -> list[Path]:
    """Write op ``name`` modelled on ``family``; returns the files written. Nothing is
    written when any check fails, and an existing file is never replaced."""
    layout = layout or default_layout()
    check_name(name, layout, existing_ops)
    texts = render(name, family)
    written: list[Path] = []
    for part, path in layout.files(name).items():
        # "x": fail rather than replace a file that appeared since the check.
        with open(path, "x", encoding="utf-8") as f:
            f.write(texts[part])
        written.append(path)
    return written
