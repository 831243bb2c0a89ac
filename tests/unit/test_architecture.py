"""The package's shape (issue 11): one-way imports, small modules, a map that knows no technique by name.

The import graph is read from the source (AST), module-level AND function-level imports, so a lazy
import that climbs back up counts as much as a top-level one.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import medinterp

ROOT = Path(medinterp.__file__).parent
SHIPPED_TECHNIQUES = ("geometry", "saliency", "lesion", "patching")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        rel = f.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The medinterp module an import name refers to (a module, or the package a name comes from)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` inside medinterp (every import statement, any nesting).

    ``medinterp/__init__.py`` is left out: its lazy API map imports the public modules on first
    attribute access (the top floor importing downwards) and is not a static import.
    """
    graph: dict[str, set[str]] = {}
    for mod, path in MODULES.items():
        if mod == "medinterp":
            continue
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        pkg = pkg.rpartition(".")[0]
                    base = f"{pkg}.{base}" if base else pkg
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for n in names:
                if not n.startswith("medinterp"):
                    continue
                target = _resolve(n)
                if target and target not in ("medinterp", mod):
                    deps.add(target)
        # "from pkg import sub" resolves to pkg.sub; "from pkg import name" to pkg: drop the package
        # edge when the submodule edge is there for the same statement would need statement-level
        # bookkeeping; both are real imports, so keep both.
        graph[mod] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_medinterp():
    graph = import_graph()
    assert "medinterp.maps.run" in graph and graph["medinterp.maps.run"]  # the graph was read
    # a technique package's __init__ importing its own modules is not a cycle unless they import it back
    assert _cycles(graph) == []


def test_no_module_over_600_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_nothing_below_viz_imports_viz():
    graph = import_graph()
    bad = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                 if d.startswith("medinterp.viz") and not m.startswith(("medinterp.viz", "medinterp.cli")))
    assert bad == []


def test_maps_contain_no_technique_name():
    from medinterp.techniques import REGISTRY

    names = sorted(set(SHIPPED_TECHNIQUES) | {n for n in REGISTRY if not n.startswith(("toy", "test"))})
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b", re.I)
    hits = [f"{p.name}:{i}: {line.strip()}" for p in sorted((ROOT / "maps").glob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert hits == []


@pytest.mark.parametrize("low", ["medinterp.results", "medinterp.store", "medinterp.readout", "medinterp.errors"])
def test_low_floors_import_nothing_above_them(low):
    above = ("medinterp.techniques", "medinterp.maps", "medinterp.viz", "medinterp.cli")
    assert sorted(d for d in import_graph().get(low, ()) if d.startswith(above)) == []
