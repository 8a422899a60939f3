"""The import graph points one way: library -> deployments -> CLI.

Every module of ``routenlp_ray`` and ``deployments`` is parsed with ``ast`` (nothing is
imported), and every ``import`` statement counts: at module level, inside a function, or
under ``TYPE_CHECKING``. A lazy import still ties two modules together. Importing ``a.b.c``
also runs the ``__init__`` of ``a`` and ``a.b``, so those packages count as imported too,
except the importer's own enclosing packages, which are already running by then.

- No module-level import cycles, anywhere.
- No library module imports ``deployments``, except the CLI: it is the top layer, and it
  hands the app builders down to the serving benchmarks.
- No cycles between the library's packages either (``conformal`` -> ``recording`` ->
  ``conformal`` would be one), apart from those listed in ``KNOWN_PACKAGE_CYCLES``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "routenlp_ray"
DEPLOYMENTS = "deployments"
# The one library module allowed to import ``deployments``: the CLI's hand-down of the app builders.
TOP_LAYER = {"routenlp_ray.cli.bench._apps"}
# Package cycles not yet broken, each with why. The test fails when one goes away too, so the
# list only ever shrinks.
KNOWN_PACKAGE_CYCLES: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    paths = [p for top in (PACKAGE, DEPLOYMENTS) for p in sorted((ROOT / top).rglob("*.py"))]
    return {_module_name(p): p for p in paths}


def _imported_names(path: Path, module: str) -> set[str]:
    """Dotted names that ``module`` imports, relative imports resolved."""
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            # ``from pkg import name`` imports the submodule pkg.name when there is one.
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of ``routenlp_ray`` and ``deployments`` it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        if path.name == "__init__.py":
            own_packages.add(module)
        edges: set[str] = set()
        for name in _imported_names(path, module):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in modules and target not in own_packages and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def _package_of(module: str) -> str:
    """``routenlp_ray.conformal.scores`` -> ``routenlp_ray.conformal``; a top-level module is its own."""
    return ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The library's module graph with each first-level package collapsed into one node."""
    out: dict[str, set[str]] = {}
    for module, edges in graph.items():
        if module.split(".")[0] != PACKAGE or module == PACKAGE:
            continue
        source = _package_of(module)
        out.setdefault(source, set()).update(
            _package_of(e) for e in edges if e.split(".")[0] == PACKAGE and e != PACKAGE and _package_of(e) != source
        )
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_within(graph, set(c)) for c in components]


def _cycle_within(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A concrete cycle through the component's first module, for the failure message."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & component):
            if nxt == start:
                return paths[node] + [start]
            if nxt not in paths:
                paths[nxt] = paths[node] + [nxt]
                queue.append(nxt)
    return sorted(component)


def test_the_walk_sees_the_package() -> None:
    graph = import_graph()
    assert "routenlp_ray.cascade" in graph and "deployments.router" in graph
    assert "routenlp_ray.cascade" in graph["routenlp_ray.conformal.calibrator"]
    # A function-level import counts, and so does the package whose __init__ it runs.
    assert {"routenlp_ray.models", "routenlp_ray.models.encoder"} <= graph["routenlp_ray.conformal.answer_scorer"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_library_does_not_import_deployments() -> None:
    upward = {
        module: sorted(e for e in edges if e.split(".")[0] == DEPLOYMENTS)
        for module, edges in import_graph().items()
        if module.split(".")[0] == PACKAGE and module not in TOP_LAYER
    }
    upward = {m: names for m, names in upward.items() if names}
    assert not upward, f"library modules importing {DEPLOYMENTS}: {upward}"


def test_no_cycles_between_packages_but_the_known_ones() -> None:
    cycles = find_cycles(package_graph(import_graph()))
    found = {tuple(sorted(set(c))) for c in cycles}
    assert found == KNOWN_PACKAGE_CYCLES, "package cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
