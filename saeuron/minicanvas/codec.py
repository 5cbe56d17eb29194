"""A fixed, lossless 'autoencoder' for MiniCanvas: space-to-depth.

Stable Diffusion denoises in a VAE's latent space (8x smaller per side); MiniCanvas denoises
2x2 pixel patches stacked as channels (3x32x32 pixels <-> 12x16x16 latents), which makes the UNet
four times cheaper on a CPU at no loss. It has no weights: its folder holds only config.json.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config


class SpaceToDepthCodec(ConfigMixin):
    """Maps images in [-1, 1] of shape (B, 3, H, W) to latents (B, 3 f^2, H/f, W/f) and back."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, factor: int = 2, image_channels: int = 3):
        self.factor = factor
        self.image_channels = image_channels

    @property
    def latent_channels(self) -> int:
        return self.image_channels * self.factor**2

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, self.factor)

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        self.save_config(save_directory)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, subfolder: str | None = None,
                        **_: object) -> "SpaceToDepthCodec":
        return cls.from_config(cls.load_config(path, subfolder=subfolder))
