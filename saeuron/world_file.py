"""A user's own world as one YAML file: the model, the objects and styles with their prompt
templates, the blocks whose SAEs remove each domain, and the judge (saeuron.judges).

    model: models/my-sd              # a diffusers folder; relative paths are from this file
    objects: [apple, pear, plum]
    styles: [watercolor, pixel_art]  # underscores read as spaces in prompts
    # prompts from templates (styled_templates, plain_templates), or labelled prompts:
    # prompts: [{prompt: "a red apple, watercolor", object: apple, style: watercolor}, ...]
    hooks: {style: up_blocks.1.attentions.2, object: up_blocks.1.attentions.1}
    judge: {kind: clip, path: models/clip}   # or transformers / timm classifiers
    defaults: {sampling: {num_steps: 30}}    # options of the pipeline this world is run with

A benchmark's world names the benchmark instead of its concepts (`benchmark: unlearncanvas`:
its objects, its styles as its style classifier names them, its prompts, or its anchor prompts
from `anchor_dir`; `objects` and `styles` then choose a part of it), with its classifiers as
the judge (`judge: {kind: unlearncanvas, style: ..., object: ...}`); configs/worlds/ holds one.

A configuration names the file as its `world` (saeuron.run.PipelineConfig); the file is read
where the run is configured, so a world file never needs registering.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from saeuron.config import Config, load_yaml
from saeuron.grid import ConceptGrid, unlearncanvas_grid
from saeuron.judges import JudgeSpec, ViTJudgeConfig
from saeuron.names import NO_STYLE

SUFFIXES = (".yaml", ".yml")


class LabelledPrompt(Config):
    prompt: str = Field(..., min_length=1, description="The prompt, as sampled.")
    object: str = Field(..., description="The object it shows.")
    style: str = Field(NO_STYLE, description="The style it shows ('none': unstyled).")


class WorldHooks(Config):
    style: str = Field(..., description="Block (or 'text') whose SAE removes styles.")
    object: str = Field(..., description="Block (or 'text') whose SAE removes objects.")


class WorldFile(Config):
    name: str | None = Field(None, description="The world's name in reports (default: the "
                             "file's name without its suffix).")
    model: str = Field(..., description="Folder of the diffusers text-to-image pipeline.")
    benchmark: Literal["unlearncanvas"] | None = Field(
        None, description="A benchmark whose concepts and prompts the world takes (objects and "
        "styles then choose a part of them); None: the world's own, below.")
    anchor_dir: str | None = Field(None, description="UnlearnCanvas: folder of <Object>.txt "
                                   "anchor prompts (else its evaluation prompt per cell).")
    objects: list[str] | None = Field(None, min_length=2, description="Object concepts "
                                      "(required without a benchmark).")
    styles: list[str] | None = Field(None, min_length=1, description="Style concepts ('none', "
                                     "the unstyled row, is added; required without a "
                                     "benchmark).")
    styled_templates: list[str] = Field(["a {object} in {style} style."], min_length=1,
                                        description="Prompts of a styled cell.")
    plain_templates: list[str] = Field(["a {object}."], min_length=1, description="Prompts "
                                       "of an unstyled cell.")
    prompts: list[LabelledPrompt] | None = Field(None, description="Or the prompts themselves, "
                                                 "each labelled with its object and style, at "
                                                 "least one per cell (every object, unstyled "
                                                 "and in every style); the first of a cell is "
                                                 "the one the sweep and the evaluation sample.")
    hooks: WorldHooks = Field(..., description="The blocks (or 'text', the prompt's "
                               "encoding) whose SAEs edit each domain.")
    judge: JudgeSpec = Field(..., description="The classifier that names a picture's concepts.")
    defaults: dict = Field({}, description="Pipeline options this world runs with, as in a "
                           "configuration file; the configuration's own options override them.")

    @field_validator("objects", "styles")
    @classmethod
    def _names(cls, names: list[str] | None) -> list[str] | None:
        if names is None:
            return names
        if len(set(names)) < len(names) or NO_STYLE in names or not all(n.strip() for n in names):
            raise ValueError(f"concept names must be distinct, non-empty and not "
                             f"{NO_STYLE!r}, got {names}")
        return names

    @model_validator(mode="after")
    def _templates(self) -> "WorldFile":
        if self.benchmark is None and (self.objects is None or self.styles is None):
            raise ValueError("name the world's objects and styles (or a benchmark)")
        if self.benchmark is None and self.anchor_dir is not None:
            raise ValueError("anchor_dir belongs to a benchmark's world (benchmark: unlearncanvas)")
        if self.benchmark is not None and self.prompts is not None:
            raise ValueError(f"a {self.benchmark} world takes the benchmark's prompts; drop "
                             "prompts")
        for field, needed in (("styled_templates", ("{object}", "{style}")),
                              ("plain_templates", ("{object}",))):
            for template in getattr(self, field):
                missing = [p for p in needed if p not in template]
                if missing or ("{style}" in template and field == "plain_templates"):
                    raise ValueError(f"{field}: {template!r} must hold {' and '.join(needed)}"
                                     + (" and no {style}" if field == "plain_templates" else ""))
        if self.prompts is not None:
            styles = [*self.styles, NO_STYLE]
            for p in self.prompts:
                if p.object not in self.objects or p.style not in styles:
                    raise ValueError(f"prompts: {p.prompt!r} is labelled ({p.object}, {p.style}); "
                                     f"objects are {self.objects}, styles {styles}")
            labelled = {(p.object, p.style) for p in self.prompts}
            empty = [(o, s) for s in styles for o in self.objects if (o, s) not in labelled]
            if empty:
                raise ValueError(f"prompts: no prompt for the cell(s) {empty[:5]}"
                                 + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
                                 + "; every object needs one unstyled and one in each style")
        return self

    def grid(self) -> ConceptGrid:
        """The world's concept grid (a benchmark's: its style list as its style classifier names
        it, read from the checkpoint's head)."""
        if self.benchmark == "unlearncanvas":
            style_set = (self.judge.style_set() if isinstance(self.judge, ViTJudgeConfig)
                         else "styles_60")
            full = unlearncanvas_grid(self.anchor_dir, style_set)
            full.check(self.objects, self.styles)
            return replace(full, objects=tuple(self.objects or full.objects),
                           styles=tuple(self.styles or full.styles))
        cells: dict[tuple[str, str], tuple[str, ...]] = {}
        for p in self.prompts or []:
            cells[p.object, p.style] = cells.get((p.object, p.style), ()) + (p.prompt,)
        return ConceptGrid(name=self.name or "world", objects=tuple(self.objects),
                           styles=tuple(self.styles), styled_templates=tuple(self.styled_templates),
                           plain_templates=tuple(self.plain_templates), prompts=cells)


def judged_by(spec: WorldFile) -> list[str]:
    """The files a world file's judging depends on besides itself: its judge's weights and its
    anchor prompts (the model is the harvest's, digested there)."""
    named = [getattr(spec.judge, k) for k in ("style", "object", "path") if hasattr(spec.judge, k)]
    return named + ([spec.anchor_dir] if spec.anchor_dir else [])


def is_world_file(name: str) -> bool:
    return name.endswith(SUFFIXES)


def read_world_file(path: str | Path) -> WorldFile:
    """The checked world file at `path`, its relative paths resolved from its folder."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"world file {str(path)!r} does not exist")
    try:
        spec = WorldFile.model_validate(load_yaml(path))
    except ValueError as err:
        raise ValueError(f"world file {path}: {err}") from None
    here = path.resolve().parent
    resolve = lambda p: str(p if Path(p).is_absolute() else here / p)  # noqa: E731
    paths = {k: resolve(getattr(spec.judge, k)) for k in ("style", "object", "path")
             if hasattr(spec.judge, k)}
    return spec.model_copy(update={"name": spec.name or path.stem, "model": resolve(spec.model),
                                   "judge": spec.judge.model_copy(update=paths),
                                   "anchor_dir": spec.anchor_dir and resolve(spec.anchor_dir)})
