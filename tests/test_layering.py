"""The package's layers import one way: kernels <- ops <- workloads <- harness rooms <- cli
(docs/design.md, "The layering rule"), and nothing imports lazily to dodge a cycle.

Each layer is imported alone, with every module under it, in a fresh interpreter, and the
tritonlab modules that got loaded are checked against the layers above it. Two AST scans
back that up where an import might not run: the kernels' import statements, and the
function-level imports of tritonlab modules anywhere in the package.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tritonlab"

HARNESS = ("measure", "runs", "hw", "contrast", "static", "report", "jobs")
CLI = ("cli", "commands")

# Layer -> the tritonlab packages it must not load, even indirectly.
FORBIDDEN = {
    "kernels": ("ops", "workloads", "reference", *HARNESS, *CLI),
    "ops": ("workloads", *HARNESS, *CLI),
    "workloads": (*HARNESS, *CLI),
    **{room: CLI for room in HARNESS},
}

# Function-level imports of tritonlab modules that are there on purpose, by file.
LAZY_IMPORTS_ALLOWED = {
    "cli.py": "the CLI imports a subcommand's layers only when that subcommand runs, after "
              "--backend has chosen the backend (Triton reads it when kernels are decorated) "
              "and so that `tritonlab --help` stays fast",
    "runs/cluster_worker.py": "a Ray worker imports this module before it runs any of it: "
                              "the worker selects the run's backend (Triton reads it when "
                              "kernels are decorated), or switches the interpreter off to "
                              "compile, before it imports the sweep or the compiler",
}

_LOAD_ALL = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("tritonlab"))))
"""


def _loaded_by(package: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _LOAD_ALL, package], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_a_layer_loads_nothing_above_it(layer):
    if not (PACKAGE / layer).is_dir():
        pytest.skip(f"tritonlab.{layer} does not exist")
    banned = tuple(f"tritonlab.{name}" for name in FORBIDDEN[layer])
    loaded = _loaded_by(f"tritonlab.{layer}")
    assert f"tritonlab.{layer}" in loaded
    wrong = [m for m in loaded if m in banned or m.startswith(tuple(b + "." for b in banned))]
    assert not wrong, f"importing tritonlab.{layer} loads {wrong}"


def _modules(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, path: Path) -> list[str]:
    """The absolute names of the modules (or module attributes) ``node`` imports."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = _module_name(path).split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        package = package[:len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    return [f"{base}.{a.name}" for a in node.names]


def test_kernels_import_only_backend_errors_and_kernels():
    allowed = ("tritonlab.backend", "tritonlab.errors")
    wrong = []
    for path in _modules(PACKAGE / "kernels"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for name in _imported(node, path):
                    if (name.split(".")[0] == "tritonlab" and name not in allowed
                            and not name.startswith(tuple(f"{a}." for a in allowed))
                            and not name.startswith("tritonlab.kernels")):
                        wrong.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {name}")
    assert not wrong, "kernels import beyond backend, errors and kernels:\n" + "\n".join(wrong)


def _function_level_imports(tree: ast.AST, path: Path):
    """(line, name) of each import of a tritonlab module inside a function body."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if in_function and isinstance(node, (ast.Import, ast.ImportFrom)):
            found.extend((node.lineno, n) for n in _imported(node, path)
                         if n.split(".")[0] == "tritonlab")
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                  ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(tree, False)
    return found


def test_no_lazy_imports_of_tritonlab_modules_outside_the_allowlist():
    wrong = []
    for path in _modules(PACKAGE):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in LAZY_IMPORTS_ALLOWED:
            continue
        for line, name in _function_level_imports(ast.parse(path.read_text(), str(path)), path):
            wrong.append(f"tritonlab/{rel}:{line} {name}")
    assert not wrong, ("function-level imports of tritonlab modules (import at the top, or "
                       "add the file to LAZY_IMPORTS_ALLOWED with the reason):\n"
                       + "\n".join(wrong))


def test_the_allowlist_names_existing_files():
    assert all((PACKAGE / rel).is_file() for rel in LAZY_IMPORTS_ALLOWED)
