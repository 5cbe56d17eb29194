"""The MiniCanvas model's report card: its objects x styles grid sampled and judged."""

from __future__ import annotations

from typing import Callable

from saeuron.grid import ConceptGrid
from saeuron.judging import GridJudge, GridResult, grid_table, judge_grid
from saeuron.minicanvas.world import minicanvas_grid
from saeuron.minicanvas.data import EVAL_SEED_BASE
from saeuron.diffusion import Pipeline
from saeuron.sampling import Precision, sample

DEFAULT_STEPS = 20
"""DDIM steps of the documented default sampler."""
DEFAULT_GUIDANCE = 4.0
"""Classifier-free guidance scale of the documented default sampler."""
EVAL_SEEDS: tuple[int, ...] = tuple(EVAL_SEED_BASE + i for i in range(4))


def sample_grid(pipe: Pipeline, judge: GridJudge, seeds: tuple[int, ...] = EVAL_SEEDS, *,
                num_steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
                batch_size: int = 128, grid: ConceptGrid | None = None,
                precision: Precision = "auto",
                progress: Callable[[int, int], None] | None = None) -> GridResult:
    """Sample every (object, style) cell of `grid` (default MiniCanvas's) once per seed, with its
    first template, and judge each picture."""
    grid, table = grid_table(judge, seeds, grid or minicanvas_grid())
    images = sample(pipe, list(table.prompt), list(table.seed), num_steps=num_steps,
                    guidance=guidance, batch_size=batch_size, precision=precision,
                    progress=progress)
    return judge_grid(judge, images, table, grid, len(seeds))


