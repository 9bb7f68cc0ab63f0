"""The package's floors, read from its source with `ast`: nothing imports from a higher floor,
and no two modules import each other, directly or through others.

    0  rnnzoo.io, checks, dtypes, registry
    1  rnnzoo.ops
    2  rnnzoo.cells
    3  rnnzoo.layers
  3.5  rnnzoo.grid (the 2-D layers: they wrap 1-D layers, models may build on them)
    4  rnnzoo.models, rnnzoo.nn
    5  rnnzoo.tasks
    6  everything else: train, suite, bench, cli, __main__, the package's __init__

Every `import` and `from ... import` counts, at module level or inside a function, and so
does `__import__("rnnzoo....")` or `importlib.import_module("rnnzoo....")` with the name
written out; only imports under `if TYPE_CHECKING:` do not (they never run). Names built
at run time (the registry's discovery of its packages) are not read.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "rnnzoo"
FLOORS = {
    "rnnzoo.io": 0, "rnnzoo.checks": 0, "rnnzoo.dtypes": 0, "rnnzoo.registry": 0,
    "rnnzoo.ops": 1,
    "rnnzoo.cells": 2,
    "rnnzoo.layers": 3,
    "rnnzoo.grid": 3.5,
    "rnnzoo.models": 4, "rnnzoo.nn": 4,
    "rnnzoo.tasks": 5,
}
TOP = 6


def floor(module: str) -> int:
    """The floor of a dotted module name: that of its longest prefix in FLOORS, else TOP."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in FLOORS:
            return FLOORS[".".join(parts[:n])]
    return TOP


@dataclass(frozen=True)
class Edge:
    source: str  # dotted module name
    target: str
    path: Path
    line: int

    def __str__(self):
        return f"{self.path}:{self.line}: {self.source} (floor {floor(self.source)}) imports " \
               f"{self.target} (floor {floor(self.target)})"


def modules(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted name -> file, for every module of `package` under `root`."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _by_name(node: ast.AST) -> str | None:
    """The module a call `__import__("m")` / `import_module("m")` names, if written out."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    f = node.func
    called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) \
        else None
    arg = node.args[0]
    if called in ("__import__", "import_module") and isinstance(arg, ast.Constant) \
            and isinstance(arg.value, str):
        return arg.value
    return None


def _imports(tree: ast.AST):
    """Every Import / ImportFrom node and import call by a written-out name, skipping the
    bodies of `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)) or _by_name(node):
            yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
                continue
            stack.append(child)


def edges(root: Path, package: str = PACKAGE) -> list[Edge]:
    """The static imports between modules of `package` (self-imports left out)."""
    known = modules(root, package)
    out = []
    for name, path in known.items():
        is_pkg = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                targets = [_by_name(node)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                           for a in node.names]
            for target in targets:
                # `import rnnzoo.ops.scan` names the module; the closest known one otherwise
                while target and target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in known and target != name:
                    out.append(Edge(name, target, path, node.lineno))
    return sorted(set(out), key=lambda e: (str(e.path), e.line, e.target))


def upward_imports(root: Path, package: str = PACKAGE) -> list[Edge]:
    """Imports from a lower floor to a higher one."""
    return [e for e in edges(root, package) if floor(e.target) > floor(e.source)]


def cycles(root: Path, package: str = PACKAGE) -> list[list[Edge]]:
    """One cycle of imports (as its edges) for each strongly connected set of modules."""
    graph: dict[str, list[Edge]] = {}
    for e in edges(root, package):
        graph.setdefault(e.source, []).append(e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in graph.get(v, []):
            if e.target not in index:
                visit(e.target)
                low[v] = min(low[v], low[e.target])
            elif e.target in on_stack:
                low[v] = min(low[v], index[e.target])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(comp, graph) for comp in components]


def _cycle_in(comp: set[str], graph: dict[str, list[Edge]]) -> list[Edge]:
    """A shortest cycle through the first module of a strongly connected set."""
    start = min(comp)
    paths = {start: []}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for e in graph.get(v, []):
                if e.target == start:
                    return paths[v] + [e]
                if e.target in comp and e.target not in paths:
                    paths[e.target] = paths[v] + [e]
                    nxt.append(e.target)
        frontier = nxt
    raise AssertionError("not a cycle")  # unreachable for a strongly connected set


def _report(title, lines):
    return title + "\n" + "\n".join(f"  {line}" for line in lines)


# -- the package --------------------------------------------------------------------------------

def test_no_upward_import():
    found = upward_imports(SRC)
    assert not found, _report(f"{len(found)} import(s) from a lower floor to a higher one:",
                              found)


def test_no_import_cycle():
    found = cycles(SRC)
    assert not found, _report(f"{len(found)} import cycle(s):", [
        " -> ".join([c[0].source] + [e.target for e in c]) + "\n    "
        + "\n    ".join(str(e) for e in c) for c in found])


def test_every_module_is_read():
    names = modules(SRC)
    assert {"rnnzoo", "rnnzoo.registry", "rnnzoo.layers.base", "rnnzoo.cli"} <= set(names)
    assert edges(SRC), "no imports found: the parser reads nothing"


# -- the checker itself, on a made-up package --------------------------------------------------

def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def fake(tmp_path):
    return _write(tmp_path, {
        "rnnzoo/__init__.py": "",
        "rnnzoo/registry.py": "from rnnzoo.io import atomic_write_text\n",
        "rnnzoo/io.py": "",
        "rnnzoo/ops/__init__.py": "",
        "rnnzoo/ops/scan.py": "import torch\nfrom rnnzoo.registry import CELLS\n",
        "rnnzoo/cells/__init__.py": "",
        "rnnzoo/cells/gru.py": (
            "from typing import TYPE_CHECKING\n"
            "from rnnzoo.ops.scan import linear_scan\n"
            "if TYPE_CHECKING:\n"
            "    from rnnzoo.layers.base import RecurrentLayer\n"
            "\n"
            "def build():\n"
            "    from ..layers import base\n"
            "    return base\n"),
        "rnnzoo/layers/__init__.py": "",
        "rnnzoo/layers/base.py": "from rnnzoo.cells import gru\n",
        "rnnzoo/bench.py": "import rnnzoo.cli\n",
        "rnnzoo/cli.py": "def main():\n    from rnnzoo import bench\n",
    })


def test_an_upward_import_is_reported_with_file_line_and_floors(fake):
    found = upward_imports(fake)
    assert [(e.source, e.target, e.line) for e in found] == \
        [("rnnzoo.cells.gru", "rnnzoo.layers.base", 7)]  # not the TYPE_CHECKING one (line 4)
    assert str(found[0]) == (f"{fake / 'rnnzoo/cells/gru.py'}:7: rnnzoo.cells.gru (floor 2) "
                             f"imports rnnzoo.layers.base (floor 3)")
    with pytest.raises(AssertionError, match="gru.py:7: .*floor 2.*floor 3"):
        assert not found, _report("upward:", found)


def test_an_import_cycle_is_reported(fake):
    found = cycles(fake)
    as_names = sorted(sorted({e.source for e in c}) for c in found)
    assert as_names == [["rnnzoo.bench", "rnnzoo.cli"],
                        ["rnnzoo.cells.gru", "rnnzoo.layers.base"]]
    bench_cli = next(c for c in found if c[0].source in ("rnnzoo.bench", "rnnzoo.cli"))
    assert {(e.source, e.target) for e in bench_cli} == {("rnnzoo.bench", "rnnzoo.cli"),
                                                         ("rnnzoo.cli", "rnnzoo.bench")}


def test_an_import_by_a_written_out_name_counts(tmp_path):
    root = _write(tmp_path, {
        "rnnzoo/__init__.py": "",
        "rnnzoo/cells/__init__.py": "",
        "rnnzoo/cells/gru.py": ("import importlib\n"
                                "def f(name):\n"
                                "    importlib.import_module(name)\n"
                                "    return __import__('rnnzoo.models').x\n"),
        "rnnzoo/models/__init__.py": "",
    })
    assert [(e.source, e.target, e.line) for e in upward_imports(root)] == \
        [("rnnzoo.cells.gru", "rnnzoo.models", 4)]


def test_floors():
    assert [floor(m) for m in ("rnnzoo.registry", "rnnzoo.ops.chunk.delta", "rnnzoo.cells.gru",
                               "rnnzoo.layers", "rnnzoo.nn", "rnnzoo.models.stack",
                               "rnnzoo.tasks.base", "rnnzoo.train.loop", "rnnzoo",
                               "rnnzoo.__main__")] == [0, 1, 2, 3, 4, 4, 5, 6, 6, 6]
