"""The package's import structure: every import of a tasknorm module, also inside functions,
goes down the layers below; none forms a cycle; no module imports another package's private
names."""

from __future__ import annotations

import ast
from pathlib import Path

import tasknorm

SOURCE = Path(tasknorm.__file__).parent
LAYERS = {"errors": 0, "io": 0, "nn": 0, "tasks": 1, "trees": 1, "models": 2, "data": 2, "train": 3,
          "curves": 3,
          "analysis": 4, "prune": 4, "fit": 5, "compare": 6, "simplify": 6, "cli": 7}
"""Each subpackage or top-level module may import only from lower layers (and itself)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from tasknorm... import name`` and ``(module, "")`` of every
    ``import tasknorm...`` anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasknorm"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names
                      if alias.name.startswith("tasknorm")]
    return found


def package(module: str) -> str:
    """``tasknorm.nn.convert`` → ``nn``; ``tasknorm.cli`` → ``cli``."""
    return module.split(".")[1]


MODULES = {module_name(path): path for path in sorted(SOURCE.rglob("*.py"))}
EDGES = {(source, target, name) for source, path in MODULES.items() if source != "tasknorm"
         for target, name in imports(path)}


def test_every_subpackage_has_a_layer():
    assert {package(m) for m in MODULES if m != "tasknorm"} == set(LAYERS)


def test_imports_go_down_the_layers():
    upward = [f"{source} imports {target}" for source, target, _ in sorted(EDGES)
              if package(source) != package(target)
              and LAYERS[package(target)] >= LAYERS[package(source)]]
    assert not upward


def test_no_private_names_from_other_packages():
    private = [f"{source} imports {target}.{name}" for source, target, name in sorted(EDGES)
               if name.startswith("_") and package(source) != package(target)]
    assert not private


def test_no_module_import_cycle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for source, target, name in EDGES:
        submodule = f"{target}.{name}"
        graph[source].add(submodule if submodule in MODULES else target)
    visiting, done = [], set()

    def visit(module: str) -> None:
        if module in visiting:
            cycle = [*visiting[visiting.index(module):], module]
            raise AssertionError("import cycle: " + " → ".join(cycle))
        if module in done:
            return
        visiting.append(module)
        for target in graph.get(module, ()):
            if not module.startswith(target + "."):  # a package's own __init__ is fine
                visit(target)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)
