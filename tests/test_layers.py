"""The layers of DESIGN.md, checked on the import graph of the project's own modules (every
import statement, those inside functions too): the library and the storage never import
Prefect or the layers above them, and no modules import each other in a circle.

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
WORLD_IMPORTERS = {"saeuron.grid", "saeuron.harvest", "saeuron.pipeline", "saeuron.sae_train",
                   "saeuron.scoring", "saeuron.sweep", "saeuron.unlearning", "tasks.evaluate",
                   "tasks.score"}
"""Modules outside the embedded world that still import it (issue 18 makes worlds plug-ins):
this set may only shrink."""


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


def test_the_core_imports_the_embedded_world_in_no_new_place():
    importers = {m for m, names in _graph().items()
                 if _within(names, "saeuron.minicanvas") and not m.startswith("saeuron.minicanvas")}
    assert importers <= WORLD_IMPORTERS, f"new imports of saeuron.minicanvas: {importers - WORLD_IMPORTERS}"
    assert importers == WORLD_IMPORTERS, f"no longer importing it (shrink the set): {WORLD_IMPORTERS - importers}"


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
