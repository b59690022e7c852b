"""The package's shape: rooms import only downward, no import circles, small modules, a light start."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cell2net_attr"
BASE = {"errors", "_compat", "_lists", "_version"}
#: What each room may import (besides itself). Lower layers never see higher ones.
ALLOWED = {
    "errors": set(), "_version": set(), "_compat": set(), "_lists": {"errors"},
    "data": BASE, "model": BASE, "io": BASE,
    "engines": BASE | {"model"},
    "pipeline": BASE | {"data", "model", "engines", "io", "downstream"},  # a job's summary is summarize's
    "downstream": BASE | {"data", "io"},
    "synthetic": BASE | {"model"},
    "api": BASE | {"data", "engines", "pipeline"},
    "cli": BASE | {"data", "engines", "io", "pipeline", "downstream"},
    "__init__": BASE | {"api", "downstream"},  # the facade: the notebook API and its tables
    "__main__": {"cli"},
}
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports anywhere (module level, inside functions, under
    ``TYPE_CHECKING``), relative imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("cell2net_attr"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names)  # `from . import x` names a module
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("cell2net_attr"))
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    return {m for m in found if m in modules} - {name}


def _room(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


FILES = sorted(PACKAGE.rglob("*.py"))


def test_rooms_import_only_downward():
    wrong = []
    for path in FILES:
        room = _room(_module_name(path))
        for target in _imports(path):
            other = _room(target)
            if other != room and other not in ALLOWED[room]:
                wrong.append(f"{_module_name(path)} -> {target}")
    assert not wrong, wrong


def _cycles(files: list[Path]) -> list[list[str]]:
    """Import circles among every import of ``files`` (a lazy import inside a function closes a circle too)."""
    graph = {_module_name(p): _imports(p) for p in files}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own submodules
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    return cycles


def test_no_import_circles():
    assert not _cycles(FILES)


@pytest.mark.parametrize("hidden", ["from .a import x\n",
                                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n",
                                    "def f():\n    from .a import x\n"])
def test_the_walker_sees_a_circle(tmp_path, monkeypatch, hidden):
    """The circle test can fail: two modules importing each other are found, also when one import hides under
    TYPE_CHECKING or inside a function."""
    pkg = tmp_path / "cell2net_attr"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text(hidden)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    assert _cycles(sorted(pkg.glob("*.py"))) == [["cell2net_attr.a", "cell2net_attr.b", "cell2net_attr.a"]]


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_small(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


_PROBE = """
import atexit, sys
heavy = ("torch", "captum", "matplotlib")
atexit.register(lambda: print("LOADED:" + ",".join(m for m in heavy if m in sys.modules), file=sys.stderr))
sys.argv = ["cell2net-attr", *sys.argv[1:]]
from cell2net_attr.cli import main
main()
"""


def _loaded(*args: str, cwd: Path | None = None) -> set[str]:
    """Which of torch, captum and matplotlib the command ``args`` imported."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, cwd=cwd)
    found = [line for line in proc.stderr.splitlines() if line.startswith("LOADED:")]
    assert found, proc.stderr
    return set(filter(None, found[-1][len("LOADED:"):].split(",")))


def _loads_torch(*args: str, cwd: Path | None = None) -> bool:
    return "torch" in _loaded(*args, cwd=cwd)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"], ["summarize", "--help"],
                                  ["activity", "--help"], ["plot", "--help"], ["plan", "--help"]])
@pytest.mark.slow
def test_light_commands_do_not_import_torch(args):
    assert not _loads_torch(*args)


@pytest.mark.slow
def test_downstream_commands_do_not_import_torch(demo_atlas, tmp_path):
    data, cks = demo_atlas
    out = tmp_path / "GA.h5"
    # the fast engine integrates with its own copy of captum's nodes: a run does not import captum (1-2 s)
    assert _loaded("run", str(cks[0]), str(data), "--covariates", "cov0,cov1", "-o", str(out), "-q") == {"torch"}
    table = tmp_path / "s.tsv"
    assert not _loads_torch("summarize", str(out), "--data", str(data), "--groupby", "celltype", "-o", str(table))
    assert not _loads_torch("activity", str(table), "-o", str(tmp_path / "a.tsv"))
    assert not _loads_torch("plot", str(table), "-o", str(tmp_path / "p.png"))
    assert table.is_file() and (tmp_path / "p.png").is_file()
