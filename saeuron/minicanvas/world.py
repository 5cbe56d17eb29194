"""MiniCanvas as a world (saeuron.worlds): its shipped model and judge, its objects x styles
grid, the blocks its SAEs edit, and its renderer."""

from __future__ import annotations

from saeuron.grid import ConceptGrid
from saeuron.minicanvas import JUDGE_DIR, MODEL_DIR, OBJECT_HOOK, STYLE_HOOK
from saeuron.minicanvas.prompts import PLAIN_TEMPLATES, STYLED_TEMPLATES
from saeuron.minicanvas.render import OBJECTS, STYLES, render_batch
from saeuron.worlds import World


def minicanvas_grid() -> ConceptGrid:
    return ConceptGrid(name="minicanvas", objects=OBJECTS, styles=STYLES,
                       styled_templates=STYLED_TEMPLATES, plain_templates=PLAIN_TEMPLATES)


def _judge(device: str = "cpu"):
    """The shipped judge (it runs on the CPU, whatever the device of sampling)."""
    from saeuron.minicanvas.classifier import Judge  # torch, only when judging

    return Judge.load(JUDGE_DIR)


WORLD = World(name="minicanvas", model_dir=MODEL_DIR,
              hooks={"style": STYLE_HOOK, "object": OBJECT_HOOK}, grid=minicanvas_grid,
              judge=_judge, render=render_batch)
