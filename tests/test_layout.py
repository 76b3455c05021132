"""The house stays straight: imports run one way, modules stay small.

Modules are read as they install (the pyproject's package-dir mapping: `exporter/` is
`modelkiln.exporter`), every import counts, also those inside functions or under
TYPE_CHECKING (an import hidden in a function to dodge a circle is still a circle).
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_LINES = 500


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # file:line of the import


def modules() -> dict[str, Path]:
    """Every installed module of the project and its file, from pyproject's mapping."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = config["package-dir"]
    found: dict[str, Path] = {}
    for package in config["packages"]:
        prefix = max((p for p in mapping if package == p or package.startswith(p + ".")), key=len)
        folder = REPO / mapping[prefix] / Path(*package[len(prefix) :].split(".")[1:])
        for path in sorted(folder.glob("*.py")):
            name = package if path.name == "__init__.py" else f"{package}.{path.stem}"
            found[name] = path
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def edges(known: dict[str, Path]) -> Iterator[Edge]:
    for module, path in known.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = _resolve(name, known) if name.startswith("modelkiln") else None
                if target is not None and target != module:
                    yield Edge(module, target, f"{path.relative_to(REPO)}:{node.lineno}")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def layout() -> tuple[dict[str, Path], list[Edge]]:
    known = modules()
    return known, list(edges(known))


def _graph(known: dict[str, Path], found: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in known}
    for edge in found:
        graph[edge.source].add(edge.target)
    return graph


def test_the_layout_is_read_as_installed(layout) -> None:
    known, found = layout
    for name in (
        "modelkiln.cli",
        "modelkiln.exporter.trace",
        "modelkiln.backends.base",
        "modelkiln.backends.openvino.backend",
        "modelkiln.targets.shapes",
        "modelkiln.precision.search",
    ):
        assert name in known, name
    assert len(found) > 100


def test_no_import_cycles(layout) -> None:
    known, found = layout
    loops = cycles(_graph(known, found))
    detail = []
    for loop in loops:
        members = set(loop)
        detail += [f"{e.where}: {e.source} -> {e.target}" for e in found
                   if e.source in members and e.target in members]  # fmt: skip
    assert not loops, "import cycles:\n" + "\n".join(dict.fromkeys(detail))


def test_cycle_detection_sees_imports_inside_functions() -> None:
    """The checker itself: a circle closed by a function-level import is a circle."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    source = "def f():\n    from modelkiln.x import y\n"
    imports = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)]
    assert [n.module for n in imports] == ["modelkiln.x"]


def test_no_core_module_over_the_size_limit(layout) -> None:
    known, _ = layout
    sizes = {name: len(path.read_text().splitlines()) for name, path in known.items()}
    big = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by concern): {big}"


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, pending = set(), [start]
    while pending:
        for nxt in graph[pending.pop()] - seen:
            seen.add(nxt)
            pending.append(nxt)
    return seen


def test_exporter_and_backends_do_not_import_each_other(layout) -> None:
    _, found = layout

    def part(module: str) -> str:
        return (module.split(".") + [""])[1]

    crossing = [
        f"{e.where}: {e.source} -> {e.target}"
        for e in found
        if {part(e.source), part(e.target)} == {"exporter", "backends"}
    ]
    assert not crossing, crossing


def test_the_runtime_never_reaches_the_exporter(layout) -> None:
    """`modelkiln.load` and the package import stay torch-free by construction: nothing
    they import, even lazily, leads to tracing, the export driver or the benchmark."""
    known, found = layout
    graph = _graph(known, found)
    for start in ("modelkiln.runtime", "modelkiln.backends.onnxruntime", "modelkiln.manifest"):
        heavy = sorted(
            m
            for m in _reachable(graph, start)
            if m.startswith(("modelkiln.exporter", "modelkiln.benchmark", "modelkiln.cli"))
            or m in ("modelkiln.pipeline", "modelkiln.prepare", "modelkiln.precision.search")
        )
        assert not heavy, f"{start} reaches {heavy}"
