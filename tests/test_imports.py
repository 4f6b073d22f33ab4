"""The `llm` import graph, read from the source: no cycles, and `llm/data/` stands alone.

Every import of an `llm` module counts, at module level or inside a function, except under
`if TYPE_CHECKING:`. `from llm.x import y` is an edge to `llm.x.y` when that is a module,
else to `llm.x` (a package's `__init__`).
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# module -> {imported module: "file:line" of the first such import}
Graph = dict[str, dict[str, str]]


def modules(package_dir: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name → file, for every .py file under a package directory."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    """True for `TYPE_CHECKING` and `typing.TYPE_CHECKING`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_names(tree: ast.AST, module: str, is_package: bool
                    ) -> list[tuple[list[str], int]]:
    """(candidate module names, most specific first; line) for each name an import binds."""
    out = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:  # only the `else:` branch runs
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.extend(([alias.name], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".")
                package = package if is_package else package[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            out.extend(([f"{base}.{alias.name}", base], node.lineno) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def import_graph(package_dir: pathlib.Path) -> Graph:
    """The graph of imports between the modules of the package at `package_dir`."""
    known = modules(package_dir)
    graph: Graph = {}
    for module, path in known.items():
        edges = graph.setdefault(module, {})
        tree = ast.parse(path.read_text(), filename=str(path))
        for candidates, line in _imported_names(tree, module, path.name == "__init__.py"):
            for name in candidates:
                # `import llm.x.y` names its longest existing prefix if y is not a module
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if name:
                    break
            where = f"{path.relative_to(package_dir.parent)}:{line}"
            if name and name != module:
                edges.setdefault(name, where)
            # `from pkg import sub` runs pkg/__init__.py first: that is an import of it too
            base = candidates[-1]
            if len(candidates) > 1 and base in known and base not in (module, name):
                edges.setdefault(base, where)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """One shortest cycle (modules in import order, first repeated last) per strongly
    connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                components.append(set(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(_shortest_cycle(graph, c, min(c)) for c in components)


def _shortest_cycle(graph: Graph, component: set[str], start: str) -> list[str]:
    """A shortest path from `start` back to itself inside its component (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        reached = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return paths[node] + [start]
                if nxt in component and nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    reached.append(nxt)
        frontier = reached
    raise AssertionError(f"{start} is not on a cycle")  # a component always has one


def describe(graph: Graph, cycle: list[str]) -> str:
    """'a -> b -> a' followed by each edge's import site."""
    edges = "\n".join(f"    {a} -> {b}  ({graph[a][b]})"
                      for a, b in zip(cycle, cycle[1:], strict=False))
    return " -> ".join(cycle) + "\n" + edges


def test_llm_has_no_import_cycles():
    graph = import_graph(ROOT / "llm")
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(graph, c) for c in found)


def test_llm_data_imports_nothing_above_itself():
    graph = import_graph(ROOT / "llm")
    inside = lambda name: name == "llm.data" or name.startswith("llm.data.")
    bad = [f"{a} -> {b}  ({site})" for a, edges in sorted(graph.items()) if inside(a)
           for b, site in sorted(edges.items()) if not inside(b)]
    assert not bad, "llm/data/ imports llm modules outside it:\n" + "\n".join(bad)


def test_the_walk_finds_cycles_and_resolves_imports(tmp_path):
    files = {
        "pkg/__init__.py": "from pkg import a\n",
        "pkg/a.py": "from pkg.sub import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "def f():\n    from pkg import c\n",
        "pkg/c.py": ("from typing import TYPE_CHECKING\nfrom pkg.sub import helper\n"
                     "if TYPE_CHECKING:\n    import pkg.a\nelse:\n    from . import d\n"),
        "pkg/d.py": "import pkg.a.missing\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path / "pkg")
    # `from pkg.sub import b` also runs pkg/sub/__init__.py: an edge to pkg.sub as well.
    assert graph == {
        "pkg": {"pkg.a": "pkg/__init__.py:1"},
        "pkg.a": {"pkg.sub.b": "pkg/a.py:1", "pkg.sub": "pkg/a.py:1"},
        "pkg.sub": {},
        "pkg.sub.b": {"pkg.c": "pkg/sub/b.py:2", "pkg": "pkg/sub/b.py:2"},
        "pkg.c": {"pkg.sub": "pkg/c.py:2", "pkg.d": "pkg/c.py:6", "pkg": "pkg/c.py:6"},
        "pkg.d": {"pkg.a": "pkg/d.py:1"},
    }
    # One component; its shortest cycle through its first module goes via pkg/__init__.py.
    assert cycles(graph) == [["pkg", "pkg.a", "pkg.sub.b", "pkg"]]
