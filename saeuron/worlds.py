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
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable

import numpy as np
from pydantic import AfterValidator

from saeuron.grid import ConceptGrid
from saeuron.world_file import is_world_file, judged_by, read_world_file

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
    """The world a world file describes (saeuron.world_file). Its grid is made when first asked
    for (a benchmark's reads its classifier's head)."""
    from saeuron.judges import load_judge  # torch and transformers, only when judging

    spec = read_world_file(path)
    grid = cache(spec.grid)
    return World(name=spec.name, model_dir=Path(spec.model), hooks=spec.hooks.model_dump(),
                 grid=grid, judge=lambda device: load_judge(spec.judge, grid().styles,
                                                            grid().objects, device),
                 defaults=spec.defaults)


def world(name: str = DEFAULT) -> World:
    """The registered world `name`, or the world of the world file at path `name`."""
    if is_world_file(name):
        return file_world(name)
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; registered worlds: {', '.join(WORLDS)}, or "
                         "the path of a world file (.yaml)")
    return importlib.import_module(WORLDS[name]).WORLD


def world_digest(name: str) -> str | None:
    """What a world's judged results depend on beyond its name: a world file's text and the
    judge and prompt files it names; None for a registered world (its files are the project's
    own code and weights, which the stages' code fingerprints cover)."""
    if not is_world_file(name):
        return None
    from storage.layout import content_digest, fingerprint

    return fingerprint([content_digest(p) for p in [name, *judged_by(read_world_file(name))]])


def get_grid(name: str) -> ConceptGrid:
    """The grid of world `name` (a registered world, or a world file's path)."""
    return world(name).grid()


def _known_world(name: str) -> str:
    world(name)  # an unknown name, or a world file that is missing or wrong, raises here
    return name


WorldName = Annotated[str, AfterValidator(_known_world)]
"""A registered world, or a world file's path (the file is read and checked)."""
GridName = WorldName
"""A configuration's grid: a world's (a registered world, or a world file's path)."""
