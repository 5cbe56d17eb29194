"""Rendered MiniCanvas training data: every (object, style) cell over a range of seeds."""

from __future__ import annotations

import numpy as np
import torch

from saeuron.minicanvas.render import NO_STYLE, OBJECTS, STYLES, render
from saeuron.names import SPLIT_SEED_BASE

ALL_STYLES: tuple[str, ...] = STYLES + (NO_STYLE,)
"""Style labels in classifier order: the named styles, then the unstyled look."""

EVAL_SEED_BASE = SPLIT_SEED_BASE["eval"]
"""Seeds at or above this are never used for training the model or the classifier."""


def cells() -> list[tuple[str, str]]:
    """Every (object, style) combination of the grid, unstyled included."""
    return [(o, s) for s in ALL_STYLES for o in OBJECTS]


class RenderBank:
    """All cells rendered for seeds [first_seed, first_seed + seeds): uint8 images and labels."""

    def __init__(self, seeds: int, first_seed: int = 0):
        pairs = [(o, s, first_seed + i) for i in range(seeds) for o, s in cells()]
        self.images = torch.from_numpy(np.stack([render(o, s, seed) for o, s, seed in pairs]))
        self.objects = torch.tensor([OBJECTS.index(o) for o, _, _ in pairs])
        self.styles = torch.tensor([ALL_STYLES.index(s) for _, s, _ in pairs])

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] as (B, 3, H, W) float32, with object and style label indices."""
        images = self.images[index].permute(0, 3, 1, 2).float() / 127.5 - 1
        return images, self.objects[index], self.styles[index]
