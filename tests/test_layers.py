"""The layers of DESIGN.md, checked on the import graph of the project's own modules (every
import statement, those inside functions too): the library and the storage never import
Prefect or the layers above them, only the embedded world imports itself, and no modules import
each other in a circle.

    python -m pytest tests/test_layers.py
"""

from __future__ import annotations

import ast
from pathlib import Path

from flows.stage import _imported

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("saeuron", "storage", "tasks", "flows")
ABOVE = {"storage": ("saeuron", "tasks", "flows", "prefect"), "saeuron": ("tasks", "flows", "prefect"),
         "tasks": ("flows",)}
"""What each layer must not import."""
def _graph() -> dict[str, set[str]]:
    """Module -> every absolute name it imports."""
    graph = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            graph[name] = set(_imported(ast.parse(path.read_text())))
    return graph


def _within(names: set[str], prefix: str) -> set[str]:
    return {n for n in names if n == prefix or n.startswith(prefix + ".")}


def test_no_layer_imports_one_above_it():
    wrong = {(module, name) for module, names in _graph().items()
             for forbidden in ABOVE.get(module.split(".")[0], ()) for name in _within(names, forbidden)}
    assert not wrong, f"imports against the layers: {sorted(wrong)}"


def test_only_the_world_itself_imports_the_embedded_world():
    """The core reaches a world by name through saeuron.worlds (issue 18: worlds as plug-ins)."""
    from saeuron.worlds import WORLDS, world

    importers = {m for m, names in _graph().items()
                 if _within(names, "saeuron.minicanvas") and not m.startswith("saeuron.minicanvas")}
    assert not importers, f"modules outside saeuron/minicanvas/ importing it: {sorted(importers)}"
    assert all(world(name).name == name for name in WORLDS)


def test_no_modules_import_each_other_in_a_circle():
    graph = _graph()
    edges = {m: {n for n in names if n in graph and n != m} for m, names in graph.items()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for nxt in sorted(edges[module]):
            if state.get(nxt) == "open":
                raise AssertionError("import circle: " + " -> ".join(path[path.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
