"""The floors (docs/extending.md): every module imports only floors below it, checked by import-linter
against the contracts in pyproject.toml, and no import cycle is left in the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "ftbench", tmp_path / "ftbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_every_contract_is_kept() -> None:
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_an_import_that_climbs_a_floor_is_named(tmp_path: Path) -> None:
    """A planted upward import (the training loop importing the runner above it) breaks the build,
    and the report names the importing module, the line and the floor it climbed to."""
    root = _copy(tmp_path)
    loop = root / "ftbench" / "train" / "loop.py"
    text = loop.read_text()
    loop.write_text(text.replace("\nimport torch\n", "\nimport torch\n\nfrom ftbench.execution.runner import execute\n", 1))
    r = _lint(root)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ftbench.train is not allowed to import ftbench.execution" in r.stdout
    assert "ftbench.train.loop -> ftbench.execution.runner" in r.stdout


def _cycles(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v) & modules:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for m in sorted(modules):
        if m not in index:
            visit(m)
    return out


def test_no_import_cycle_is_left() -> None:
    """Lazy (function-level) and type-checking imports count: grimp reads every import statement."""
    graph = grimp.build_graph("ftbench", cache_dir=None)
    modules = {m for m in graph.modules if m.startswith("ftbench")}
    assert len(modules) > 60  # the whole package was read
    assert _cycles(graph, modules) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    """The check above can fail: a planted cycle of three modules is found."""
    pkg = tmp_path / "knot"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from knot import b\n")
    (pkg / "b.py").write_text("def f():\n    from knot import c\n")
    (pkg / "c.py").write_text("import knot.a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        graph = grimp.build_graph("knot", cache_dir=None)
    finally:
        sys.path.remove(str(tmp_path))
    assert _cycles(graph, set(graph.modules) - {"knot"}) == [["knot.a", "knot.b", "knot.c"]]
