"""The worlds a run can be about, by name. A world supplies its text-to-image model, its concept
grid, the judge that names the concepts in a picture, the blocks whose SAEs remove each domain,
and (where it has a renderer) pictures of what each cell should look like. The core reaches a
world only through `world(name)`, which imports the world's module when first asked for it, so
that no core module depends on a particular world (tests/test_layers.py checks it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from saeuron.grid import ConceptGrid, unlearncanvas_grid

if TYPE_CHECKING:
    from saeuron.judging import GridJudge

DEFAULT = "minicanvas"
"""The embedded world: what every configuration's defaults are tuned for."""
WORLDS = {"minicanvas": "saeuron.minicanvas.world"}
"""World name -> the module whose WORLD it is."""


@dataclass(frozen=True)
class World:
    name: str
    model_dir: Path
    """Its shipped text-to-image pipeline, in diffusers' folder layout."""
    hooks: dict[str, str]
    """Domain ('style', 'object') -> the block whose SAE removes it."""
    grid: Callable[[], ConceptGrid]
    judge: Callable[[], "GridJudge"]
    render: Callable[[list[str], list[str], list[int]], np.ndarray] | None = None
    """uint8 pictures of aligned (object, style, seed) cells as they should look, the reference
    of the Frechet distances; None: the world has no renderer."""


def world(name: str = DEFAULT) -> World:
    """The registered world `name`."""
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; registered worlds: {', '.join(WORLDS)}")
    return importlib.import_module(WORLDS[name]).WORLD


def get_grid(name: str, **options: object) -> ConceptGrid:
    """A world's grid by name, or the UnlearnCanvas grid (`options`: unlearncanvas_grid's)."""
    if name == "unlearncanvas":
        return unlearncanvas_grid(**options)
    if name not in WORLDS:
        raise ValueError(f"unknown grid {name!r}; built-in grids: "
                         f"{', '.join([*WORLDS, 'unlearncanvas'])}")
    return world(name).grid()
