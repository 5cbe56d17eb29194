"""Concept grids: objects x styles x prompt templates x seeds -> a labelled prompt table.

Every row of a prompt table knows its object and style ("none" for an unstyled prompt), the
template it came from and its seed, so every stored activation and every generated image can be
traced back to the concepts it was prompted with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import pandas as pd

from saeuron.names import NO_STYLE

COLUMNS = ("prompt", "object", "style", "template", "seed")


@dataclass(frozen=True)
class ConceptGrid:
    """The concepts of a benchmark and how to prompt for each (object, style) cell."""

    name: str
    objects: tuple[str, ...]
    styles: tuple[str, ...]
    styled_templates: tuple[str, ...]
    """Templates with {object} and {style} placeholders."""
    plain_templates: tuple[str, ...]
    """Templates with an {object} placeholder only, for the unstyled cell (style 'none')."""
    anchors: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Optional anchor prompts per object: when given they replace {object} in the templates."""
    prompts: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    """Optional prompts per (object, style) cell, as written: when given they are the cell's
    prompts, templates and anchors aside (a world of labelled prompts)."""

    def check(self, objects: list[str] | None = None, styles: list[str] | None = None) -> None:
        """Raise, naming the known concepts, if a requested object or style is not in the grid."""
        for kind, asked, known in (("object", objects, self.objects),
                                   ("style", styles, self.styles + (NO_STYLE,))):
            bad = [c for c in asked or [] if c not in known]
            if bad:
                raise ValueError(f"unknown {kind}(s) {bad} for the {self.name} grid; "
                                 f"known {kind}s: {', '.join(known)}")

    def table(self, seeds: list[int], objects: list[str] | None = None,
              styles: list[str] | None = None, templates: int | None = None) -> pd.DataFrame:
        """Prompt table: one row per (seed, style, object, template); style may be 'none'.

        `templates` limits each cell to its first n templates (all by default).
        """
        self.check(objects, styles)
        objects = list(self.objects if objects is None else objects)
        styles = list(self.styles + (NO_STYLE,) if styles is None else styles)
        if not seeds or not objects or not styles:
            raise ValueError(f"empty {self.name} grid: {len(seeds)} seeds, {len(objects)} objects, "
                             f"{len(styles)} styles")
        rows = []
        for seed in seeds:
            for style in styles:
                for obj in objects:
                    for t, text in enumerate(self._prompts(obj, style)[:templates]):
                        rows.append((text, obj, style, t, int(seed)))
        return pd.DataFrame(rows, columns=list(COLUMNS))

    def prompt(self, obj: str, style: str) -> str:
        """The cell's prompt from its first template (the one the evaluation and the sweep
        sample)."""
        return self._prompts(obj, style)[0]

    def _prompts(self, obj: str, style: str) -> list[str]:
        if (obj, style) in self.prompts:
            return list(self.prompts[obj, style])
        subjects = self.anchors.get(obj)
        if style == NO_STYLE:
            if subjects:
                return list(subjects)
            return [t.format(object=obj) for t in self.plain_templates]
        if subjects:
            return [f"{s.rstrip('.')} in {self._word(style)} style." for s in subjects]
        return [t.format(object=obj, style=self._word(style)) for t in self.styled_templates]

    @staticmethod
    def _word(concept: str) -> str:
        return concept.replace("_", " ")


def unlearncanvas_grid(anchor_dir: str | Path | None = None, style_set: str = "styles_60") -> ConceptGrid:
    """The UnlearnCanvas grid (20 objects; 60 styles, or the 50 of `styles_unlearning`).

    `anchor_dir` may hold one `<Object>.txt` per object with an anchor prompt per line (the
    benchmark's 80 per class cannot be downloaded here); without it each cell uses the
    benchmark's evaluation prompt 'An {object} image in {style} style.'.
    """
    names = json.loads(resources.files("saeuron.data").joinpath("unlearncanvas.json").read_text())
    if style_set not in ("styles_60", "styles_unlearning"):
        raise ValueError(f"unknown style set {style_set!r}; use 'styles_60' or 'styles_unlearning'")
    styles = tuple(s for s in names[style_set] if s != "Seed_Images")
    anchors: dict[str, tuple[str, ...]] = {}
    if anchor_dir is not None:
        folder = Path(anchor_dir)
        if not folder.is_dir():
            raise ValueError(f"anchor prompt folder {str(folder)!r} does not exist")
        for obj in names["objects"]:
            f = folder / f"{obj}.txt"
            if f.is_file():
                anchors[obj] = tuple(line.strip() for line in f.read_text().splitlines() if line.strip())
        if not anchors:
            raise ValueError(f"{folder} holds no <Object>.txt file; expected names like "
                             f"{names['objects'][0]}.txt")
    return ConceptGrid(name="unlearncanvas", objects=tuple(names["objects"]), styles=styles,
                       styled_templates=("An {object} image in {style} style.",),
                       plain_templates=("An {object} image.",), anchors=anchors)
