"""The worlds a run can be about, by name. A world supplies its text-to-image model, its concept
grid, the judge that names the concepts in a picture, the blocks whose SAEs remove each domain,
and (where it has a renderer) pictures of what each cell should look like. The core reaches a
world only through `world(name)`, which imports the world's module when first asked for it, so
that no core module depends on a particular world (tests/test_layers.py checks it). A name
ending in .yaml or .yml is a user's world file (saeuron.world_file).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable

import numpy as np
from pydantic import AfterValidator

from saeuron.grid import ConceptGrid, unlearncanvas_grid
from saeuron.world_file import is_world_file, read_world_file

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
    judge: Callable[[str], "GridJudge"]
    """The judge, loaded on a torch device."""
    render: Callable[[list[str], list[str], list[int]], np.ndarray] | None = None
    """uint8 pictures of aligned (object, style, seed) cells as they should look, the reference
    of the Frechet distances; None: the world has no renderer."""
    defaults: dict = field(default_factory=dict)
    """Pipeline options a run of this world starts from (saeuron.run.PipelineConfig)."""


def is_world(name: str) -> bool:
    """`name` is a registered world or names a world file."""
    return name in WORLDS or is_world_file(name)


def file_world(path: str | Path) -> World:
    """The world a user's world file describes (saeuron.world_file)."""
    from saeuron.judges import load_judge  # torch and transformers, only when judging

    spec = read_world_file(path)
    grid = spec.grid()
    return World(name=grid.name, model_dir=Path(spec.model), hooks=spec.hooks.model_dump(),
                 grid=lambda: grid, judge=partial(load_judge, spec.judge, grid.styles, grid.objects),
                 defaults=spec.defaults)


def world(name: str = DEFAULT) -> World:
    """The registered world `name`, or the world of the world file at path `name`."""
    if is_world_file(name):
        return file_world(name)
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; registered worlds: {', '.join(WORLDS)}, or "
                         "the path of a world file (.yaml)")
    return importlib.import_module(WORLDS[name]).WORLD


def get_grid(name: str, **options: object) -> ConceptGrid:
    """A world's grid by name, or the UnlearnCanvas grid (`options`: unlearncanvas_grid's)."""
    if name == "unlearncanvas":
        return unlearncanvas_grid(**options)
    if not is_world(name):
        raise ValueError(f"unknown grid {name!r}; built-in grids: "
                         f"{', '.join([*WORLDS, 'unlearncanvas'])}, or a world file (.yaml)")
    return world(name).grid()


def _known_world(name: str) -> str:
    world(name)  # an unknown name, or a world file that is missing or wrong, raises here
    return name


def _known_grid(name: str) -> str:
    if name != "unlearncanvas" and not is_world(name):
        raise ValueError(f"unknown grid {name!r}; use {', '.join(WORLDS)}, unlearncanvas, or the "
                         "path of a world file (.yaml)")
    return name if name == "unlearncanvas" else _known_world(name)


GridName = Annotated[str, AfterValidator(_known_grid)]
"""A configuration's grid: a registered world, 'unlearncanvas', or a world file's path."""
WorldName = Annotated[str, AfterValidator(_known_world)]
"""A registered world, or a world file's path (the file is read and checked)."""
