"""The MiniCanvas judge: one small CNN with a style head and an object head.

It plays the part of UnlearnCanvas's fine-tuned ViT-L. Trained only on renders, it must still
judge generated images, so training adds what generation adds: noise, blur, colour shifts and
small shifts of position.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import nn

from saeuron.config import Config
from saeuron.minicanvas.data import ALL_STYLES, RenderBank
from saeuron.minicanvas.render import OBJECTS
from storage.checkpoint import default_permissions


class Judge(nn.Module):
    """Predicts (style logits over ALL_STYLES, object logits over OBJECTS) for images in [0, 1]."""

    style_labels: tuple[str, ...] = ALL_STYLES
    object_labels: tuple[str, ...] = OBJECTS

    def __init__(self, width: int = 32, styles: int = len(ALL_STYLES), objects: int = len(OBJECTS)):
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

        self.config = {"width": width, "styles": styles, "objects": objects}
        self.features = nn.Sequential(block(3, width), nn.MaxPool2d(2), block(width, 2 * width),
                                      nn.MaxPool2d(2), block(2 * width, 4 * width),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.style_head = nn.Linear(4 * width, styles)
        self.object_head = nn.Linear(4 * width, objects)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(images * 2 - 1)
        return self.style_head(h), self.object_head(h)

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(style index, object index) per uint8 image of shape (N, H, W, 3)."""
        features = torch.from_numpy(self.embed(images, batch_size))
        return (self.style_head(features).argmax(1).numpy(),
                self.object_head(features).argmax(1).numpy())

    @torch.no_grad()
    def embed(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """float (N, 4 * width): the pooled features both heads read, per uint8 image."""
        self.eval()
        out = [np.zeros((0, self.style_head.in_features), np.float32)]
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).float() / 255
            out.append(self.features(x * 2 - 1).numpy())
        return np.concatenate(out)

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  folder / "judge.safetensors")
        default_permissions(folder / "judge.safetensors")
        labels = {"styles": list(ALL_STYLES), "objects": list(OBJECTS)}
        (folder / "config.json").write_text(json.dumps({**self.config, **labels}, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> "Judge":
        folder = Path(folder)
        cfg_file, weights = folder / "config.json", folder / "judge.safetensors"
        for f in (cfg_file, weights):
            if not f.is_file():
                raise FileNotFoundError(f"classifier folder {str(folder)!r} lacks {f.name}")
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("styles") != list(ALL_STYLES) or cfg.get("objects") != list(OBJECTS):
            raise ValueError(f"classifier at {folder} was trained for other labels: "
                             f"{cfg.get('styles')} / {cfg.get('objects')}")
        judge = cls(width=cfg["width"], styles=len(ALL_STYLES), objects=len(OBJECTS))
        try:
            judge.load_state_dict(load_file(weights))
        except Exception as err:
            raise ValueError(f"cannot load classifier weights {weights}: {err}") from err
        return judge.eval()


class JudgeTrainConfig(Config):
    steps: int = Field(2500, ge=1, description="Optimiser steps.")
    batch_size: int = Field(128, ge=8, le=4096, description="Images per step.")
    lr: float = Field(2e-3, gt=0, le=1, description="Peak learning rate (one-cycle schedule).")
    seeds: int = Field(100, ge=1, description="Training seeds per (object, style) cell.")
    width: int = Field(32, ge=8, le=256, description="Channels of the first conv block.")
    seed: int = Field(0, description="Seed of initialisation, batches and augmentation.")


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Generation-like corruption of images in [0, 1]: shift, blur, colour shift, noise."""
    b = len(x)
    shift = torch.randint(-2, 3, (2,), generator=g).tolist()
    x = torch.roll(x, shifts=shift, dims=(2, 3))
    blur = torch.rand(b, 1, 1, 1, generator=g) < 0.5
    x = torch.where(blur, F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1), x)
    gain = 1 + 0.15 * (torch.rand(b, 3, 1, 1, generator=g) - 0.5)
    bias = 0.12 * (torch.rand(b, 3, 1, 1, generator=g) - 0.5)
    noise = torch.randn(x.shape, generator=g) * 0.08 * torch.rand(b, 1, 1, 1, generator=g)
    return (x * gain + bias + noise).clamp(0, 1)


def train_judge(cfg: JudgeTrainConfig, log: Callable[[str], None] = print) -> Judge:
    """Train the judge on renders (seeds below data.EVAL_SEED_BASE)."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    bank = RenderBank(cfg.seeds)
    judge = Judge(width=cfg.width)
    opt = torch.optim.AdamW(judge.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    start = time.time()
    judge.train()
    for step in range(1, cfg.steps + 1):
        index = torch.randint(len(bank), (cfg.batch_size,), generator=g)
        images, objects, styles = bank.batch(index)
        s, o = judge(augment(images / 2 + 0.5, g))
        loss = F.cross_entropy(s, styles) + F.cross_entropy(o, objects)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == cfg.steps:
            log(f"judge step {step}/{cfg.steps} loss {loss.item():.4f} "
                f"({time.time() - start:.0f} s)")
    return judge.eval()
