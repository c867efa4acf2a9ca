"""The package's import graph has no cycles: every module of src/modelworks, every import in it
(module level and inside functions), read with `ast`, never imported.

An import of `a.b.c` is an edge to the module `a.b.c` (or to the package `a.b` when `c` is a name
defined there); the packages Python initialises on the way are not edges of their own, as in
import-linter's graph (grimp). A string constant that names a module of the package is an edge
too: that is how `importlib.import_module` hides one (the task registry).
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

SRC = ROOT / "src"
PACKAGE = "modelworks"


def _modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """module name -> (file, is a package)"""
    out = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    modules = _modules(src)

    def owner(name: str) -> str | None:  # the module a dotted name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        deps: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                deps.update(owner(a.name) for a in node.names if a.name.startswith(PACKAGE))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                if base.split(".")[0] != PACKAGE:
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    deps.add(full if full in modules else owner(base))
            elif isinstance(node, ast.Constant) and node.value in modules and "." in node.value:
                deps.add(node.value)
        deps.discard(None)
        deps.discard(name)
        graph[name] = {d for d in deps if d is not None}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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


def test_no_import_cycles_in_the_package():
    graph = import_graph()
    assert len(graph) > 50
    found = cycles(graph)
    detail = "; ".join(
        " ".join(f"{m} -> {sorted(d for d in graph[m] if d in c)}" for m in c) for c in found
    )
    assert not found, f"import cycles: {detail}"


def test_cycle_finder_sees_function_level_and_importlib_edges(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "stage").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "core.py").write_text("def f():\n    from modelworks.stage import run\n")
    (pkg / "stage" / "__init__.py").write_text("from .helpers import x\n\ndef run():\n    pass\n")
    (pkg / "stage" / "helpers.py").write_text("import importlib\nM = 'modelworks.core'\nx = 1\n")
    graph = import_graph(tmp_path)
    assert graph["modelworks.core"] == {"modelworks.stage"}
    assert graph["modelworks.stage"] == {"modelworks.stage.helpers"}
    assert cycles(graph) == [["modelworks.core", "modelworks.stage", "modelworks.stage.helpers"]]


def test_every_error_class_lives_in_errors_py():
    from modelworks import errors

    ours = {n for n in dir(errors) if isinstance(getattr(errors, n), type)}
    elsewhere = []
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            bases = [ast.unparse(b) for b in getattr(node, "bases", [])]
            if isinstance(node, ast.ClassDef) and any(b.split(".")[-1] in ours for b in bases):
                elsewhere.append(f"{path.relative_to(SRC)}: {node.name}")
    assert "ModelworksError" in ours and not elsewhere, elsewhere
