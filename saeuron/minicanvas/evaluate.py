"""Sampling the objects x styles grid and judging it: the MiniCanvas model's report card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from saeuron.minicanvas.classifier import Judge
from saeuron.minicanvas.data import ALL_STYLES, EVAL_SEED_BASE, cells
from saeuron.minicanvas.prompts import prompt_for
from saeuron.minicanvas.render import OBJECTS
from saeuron.pipeline import Pipeline
from saeuron.sampling import sample

DEFAULT_STEPS = 20
"""DDIM steps of the documented default sampler."""
DEFAULT_GUIDANCE = 4.0
"""Classifier-free guidance scale of the documented default sampler."""
EVAL_SEEDS: tuple[int, ...] = tuple(EVAL_SEED_BASE + i for i in range(4))


@dataclass
class GridResult:
    images: np.ndarray
    """uint8 (seeds, styles, objects, H, W, 3): one picture per seed and cell."""
    style_ok: np.ndarray
    """bool (seeds, styles, objects): the judge saw the prompted style."""
    object_ok: np.ndarray
    """bool (seeds, styles, objects): the judge saw the prompted object."""
    style_pred: np.ndarray
    """int (seeds, styles, objects): the judged style, an index into ALL_STYLES."""
    object_pred: np.ndarray
    """int (seeds, styles, objects): the judged object, an index into OBJECTS."""

    @property
    def style_accuracy(self) -> float:
        return float(self.style_ok.mean())

    @property
    def object_accuracy(self) -> float:
        return float(self.object_ok.mean())

    def per_style(self) -> dict[str, tuple[float, float]]:
        """Style label -> (style accuracy, object accuracy) over its row."""
        return {s: (float(self.style_ok[:, i].mean()), float(self.object_ok[:, i].mean()))
                for i, s in enumerate(ALL_STYLES)}

    def per_object(self) -> dict[str, tuple[float, float]]:
        """Object label -> (style accuracy, object accuracy) over its column."""
        return {o: (float(self.style_ok[:, :, j].mean()), float(self.object_ok[:, :, j].mean()))
                for j, o in enumerate(OBJECTS)}

    def summary(self) -> dict[str, float | str]:
        worst_style = min(self.per_style().items(), key=lambda kv: kv[1][0])
        worst_object = min(self.per_object().items(), key=lambda kv: kv[1][1])
        return {"style_acc": round(self.style_accuracy, 4),
                "object_acc": round(self.object_accuracy, 4),
                "worst_style": f"{worst_style[0]} {worst_style[1][0]:.3f}",
                "worst_object": f"{worst_object[0]} {worst_object[1][1]:.3f}"}

    def table(self) -> str:
        lines = ["| concept | style acc | object acc |", "|---|---|---|"]
        for name, (s, o) in list(self.per_style().items()) + list(self.per_object().items()):
            lines.append(f"| {name} | {s:.3f} | {o:.3f} |")
        lines.append(f"| **all** | {self.style_accuracy:.3f} | {self.object_accuracy:.3f} |")
        return "\n".join(lines)


def sample_grid(pipe: Pipeline, judge: Judge, seeds: tuple[int, ...] = EVAL_SEEDS, *,
                num_steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE,
                batch_size: int = 128,
                progress: Callable[[int, int], None] | None = None) -> GridResult:
    """Sample every (object, style) cell once per seed and judge each picture."""
    grid = cells()
    prompts = [prompt_for(o, s) for _ in seeds for o, s in grid]
    seed_list = [seed for seed in seeds for _ in grid]
    images = sample(pipe, prompts, seed_list, num_steps=num_steps, guidance=guidance,
                    batch_size=batch_size, progress=progress)
    style_pred, object_pred = judge.predict(images)
    style_true = np.array([ALL_STYLES.index(s) for _ in seeds for _, s in grid])
    object_true = np.array([OBJECTS.index(o) for _ in seeds for o, _ in grid])
    shape = (len(seeds), len(ALL_STYLES), len(OBJECTS))
    return GridResult(images=images.reshape(shape + images.shape[1:]),
                      style_ok=(style_pred == style_true).reshape(shape),
                      object_ok=(object_pred == object_true).reshape(shape),
                      style_pred=style_pred.reshape(shape), object_pred=object_pred.reshape(shape))


def grid_picture(images: np.ndarray, path: str | Path, scale: int = 3, gap: int = 2) -> Path:
    """Write a (rows, cols, H, W, 3) image array as one PNG: rows = styles, columns = objects."""
    rows, cols, h, w, _ = images.shape
    canvas = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap, 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            y, x = gap + r * (h + gap), gap + c * (w + gap)
            canvas[y:y + h, x:x + w] = images[r, c]
    picture = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale),
                                             Image.Resampling.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
