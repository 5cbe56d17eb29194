"""Judging a concept grid's pictures: the judge interface every world's classifier offers, the
judged grid, and the labelled picture of a grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from saeuron.grid import ConceptGrid
from saeuron.metrics import Judged
from saeuron.names import NO_STYLE


class GridJudge(Protocol):
    """A style and object classifier (a world's judge: MiniCanvas's Judge, the UnlearnCanvas
    ViTJudge)."""

    style_labels: tuple[str, ...]
    """Style names in the order of the predicted indices ('none' for unstyled)."""
    object_labels: tuple[str, ...]

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(style index, object index) per uint8 image of shape (N, H, W, 3)."""
        ...

    def embed(self, images: np.ndarray) -> np.ndarray:
        """float (N, d): the features the classifier's heads read, per uint8 image: the fixed
        space of the Frechet distances (saeuron.metrics)."""
        ...


@dataclass
class GridResult:
    images: np.ndarray
    """uint8 (seeds, styles, objects, H, W, 3): one picture per seed and cell."""
    style_ok: np.ndarray
    """bool (seeds, styles, objects): the judge saw the prompted style."""
    object_ok: np.ndarray
    """bool (seeds, styles, objects): the judge saw the prompted object."""
    style_pred: np.ndarray
    """int (seeds, styles, objects): the judged style, an index into `styles` (-1: a style
    the classifier knows but the grid does not prompt)."""
    object_pred: np.ndarray
    """int (seeds, styles, objects): the judged object, an index into `objects` (-1 likewise)."""
    styles: tuple[str, ...]
    """The style of each row, 'none' (unstyled) last."""
    objects: tuple[str, ...]
    """The object of each column."""
    features: np.ndarray | None = None
    """float (seeds, styles, objects, d): the judge's features of each picture (embed)."""

    def judged(self) -> Judged:
        """The pictures one by one (seed, then style, then object), for saeuron.metrics."""
        shape = self.style_pred.shape
        return Judged(
            style_true=np.broadcast_to(np.arange(shape[1])[None, :, None], shape).ravel(),
            object_true=np.broadcast_to(np.arange(shape[2])[None, None, :], shape).ravel(),
            style_pred=self.style_pred.ravel(), object_pred=self.object_pred.ravel(),
            styles=tuple(self.styles), objects=tuple(self.objects),
            features=None if self.features is None else self.features.reshape(-1, self.features.shape[-1]))

    @property
    def style_accuracy(self) -> float:
        return float(self.style_ok.mean())

    @property
    def object_accuracy(self) -> float:
        return float(self.object_ok.mean())

    def per_style(self) -> dict[str, tuple[float, float]]:
        """Style label -> (style accuracy, object accuracy) over its row."""
        return {s: (float(self.style_ok[:, i].mean()), float(self.object_ok[:, i].mean()))
                for i, s in enumerate(self.styles)}

    def per_object(self) -> dict[str, tuple[float, float]]:
        """Object label -> (style accuracy, object accuracy) over its column."""
        return {o: (float(self.style_ok[:, :, j].mean()), float(self.object_ok[:, :, j].mean()))
                for j, o in enumerate(self.objects)}

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


def grid_table(judge: GridJudge, seeds: tuple[int, ...],
               grid: ConceptGrid) -> tuple[ConceptGrid, pd.DataFrame]:
    """The grid and its prompt table, one row per cell and seed (seed, then style, then object;
    first template), once the judge is known to name its concepts."""
    for kind, prompted, known in (("style", grid.styles + (NO_STYLE,), judge.style_labels),
                                  ("object", grid.objects, judge.object_labels)):
        unknown = [c for c in prompted if c not in known]
        if unknown:
            raise ValueError(f"the classifier cannot name the {grid.name} grid's {kind}(s) "
                             f"{unknown}; it knows {', '.join(known)}")
    return grid, grid.table(list(seeds), templates=1)


def predict_in(judge: GridJudge, images: np.ndarray,
               grid: ConceptGrid) -> tuple[np.ndarray, np.ndarray]:
    """(style, object) the judge sees in each picture, as indices into the grid's styles
    ('none' last) and objects (-1: a concept the judge knows but the grid does not prompt)."""
    styles, objects = grid.styles + (NO_STYLE,), grid.objects
    style_pred, object_pred = judge.predict(images)
    style_pred = np.array([styles.index(s) if s in styles else -1
                           for s in judge.style_labels])[style_pred]
    object_pred = np.array([objects.index(o) if o in objects else -1
                            for o in judge.object_labels])[object_pred]
    return style_pred, object_pred


def judge_grid(judge: GridJudge, images: np.ndarray, table: pd.DataFrame, grid: ConceptGrid,
               n_seeds: int) -> GridResult:
    """Judge the pictures of a grid's prompt table (grid_table), in its order."""
    styles, objects = grid.styles + (NO_STYLE,), grid.objects
    style_pred, object_pred = predict_in(judge, images, grid)
    style_true = np.array([styles.index(s) for s in table["style"]])
    object_true = np.array([objects.index(o) for o in table["object"]])
    shape = (n_seeds, len(styles), len(objects))
    features = judge.embed(images)
    return GridResult(images=images.reshape(shape + images.shape[1:]),
                      features=features.reshape(shape + features.shape[1:]),
                      style_ok=(style_pred == style_true).reshape(shape),
                      object_ok=(object_pred == object_true).reshape(shape),
                      style_pred=style_pred.reshape(shape), object_pred=object_pred.reshape(shape),
                      styles=styles, objects=objects)


def grid_picture(images: np.ndarray, path: str | Path, scale: int = 3, gap: int = 2,
                 thumb: int = 96, rows: tuple[str, ...] | None = None,
                 columns: tuple[str, ...] | None = None) -> Path:
    """Write a (rows, cols, H, W, 3) image array as one PNG (rows: styles, columns: objects),
    with `rows` names down the left side and `columns` names across the top when given.

    Pictures larger than `thumb` pixels are shrunk to it and not enlarged (61 x 20 Stable
    Diffusion images would make a 380-megapixel file); smaller ones are enlarged `scale` times.
    """
    n_rows, n_cols, h, w, _ = images.shape
    if max(h, w) > thumb:
        small = [np.asarray(Image.fromarray(im).resize((thumb * w // max(h, w), thumb * h // max(h, w)),
                                                      Image.Resampling.BOX))
                 for im in images.reshape((-1,) + images.shape[2:])]
        images, scale = np.stack(small).reshape((n_rows, n_cols) + small[0].shape), 1
        h, w = images.shape[2:4]
    canvas = np.full((n_rows * (h + gap) + gap, n_cols * (w + gap) + gap, 3), 255, np.uint8)
    for r in range(n_rows):
        for c in range(n_cols):
            y, x = gap + r * (h + gap), gap + c * (w + gap)
            canvas[y:y + h, x:x + w] = images[r, c]
    picture = Image.fromarray(canvas).resize((canvas.shape[1] * scale, canvas.shape[0] * scale),
                                             Image.Resampling.NEAREST)
    if rows is not None or columns is not None:
        picture = _labelled(picture, rows or (), columns or (), (h + gap) * scale,
                            (w + gap) * scale, gap * scale, text_size=11 * scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def _labelled(picture: Image.Image, rows: tuple[str, ...], columns: tuple[str, ...],
              row_step: int, col_step: int, offset: int, text_size: int) -> Image.Image:
    """The picture with row names on a margin at its left and column names above it (turned
    upright where a name is wider than its column)."""
    font = ImageFont.load_default(size=text_size)
    measure = ImageDraw.Draw(picture)
    size = lambda text: measure.textbbox((0, 0), text, font=font)[2:]  # noqa: E731
    upright = any(size(t)[0] > col_step - 2 for t in columns)
    left = max((size(t)[0] for t in rows), default=0) + text_size // 2 if rows else 0
    top = (max((size(t)[0 if upright else 1] for t in columns), default=0) + text_size // 2
           if columns else 0)
    out = Image.new("RGB", (picture.width + left, picture.height + top), "white")
    out.paste(picture, (left, top))
    draw = ImageDraw.Draw(out)
    for i, text in enumerate(rows):
        draw.text((2, top + offset + i * row_step + (row_step - size(text)[1]) // 2), text,
                  fill="black", font=font)
    for j, text in enumerate(columns):
        w, h = size(text)
        x = left + offset + j * col_step
        if upright:
            label = Image.new("RGB", (w, h + 2), "white")
            ImageDraw.Draw(label).text((0, 0), text, fill="black", font=font)
            label = label.rotate(90, expand=True)
            out.paste(label, (x + (col_step - label.width) // 2, top - label.height - 2))
        else:
            draw.text((x + (col_step - w) // 2, 2), text, fill="black", font=font)
    return out
