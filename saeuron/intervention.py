"""Unlearning by editing SAE features inside a UNet block, at inference.

At each sampling step the block's output x is encoded, z = encode(x); for every feature i
selected for the target concept(s) at this timestep, wherever z_i > mu(i, t, D) (its mean over
all concepts) it is set to gamma * mu(i, t, D_c) * z_i (gamma < 0); the block then returns

    x + decode(z_edited) - decode(z)

so that editing nothing returns x exactly. (The public reference code adds the error with the
opposite sign, which makes a no-op edit return 2 decode(z) - x; `error_sign=-1` reproduces
it, to measure the difference.) Both halves of the CFG batch are edited. Scores are keyed by
timestep value; a sampling timestep that was not scored uses the nearest scored one.

Where a latent is edited is the gate (`gate_thresholds`, an addition to the paper beyond
"mean"): "mean" is the paper's rule above; "others" edits only where z_i exceeds the largest
mean of any concept not targeted; "image" keeps the paper's rule but edits a feature only in
pictures whose position-averaged z_i exceeds that largest mean, so a feature that also fires,
more weakly, on other concepts' pictures is left alone there (BENCHMARKS.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from saeuron.capture import feature_map, resolve_blocks, unet_timestep
from saeuron.sae import SparseAutoencoder


Gate = Literal["mean", "others", "image"]


def gate_thresholds(gate: Gate, mean_all: np.ndarray, concept_means: np.ndarray,
                    targets: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """(threshold, presence) of an Edit removing the `targets` rows of `concept_means`
    ((concept, timestep, feature)), with `mean_all` the (timestep, feature) mean of all."""
    if gate not in ("mean", "others", "image"):
        raise ValueError(f"unknown gate {gate!r}; use 'mean', 'others' or 'image'")
    if gate == "mean":
        return mean_all, None
    others = np.delete(concept_means, targets, axis=0)
    most = others.max(0) if len(others) else np.zeros_like(mean_all)
    return (most, None) if gate == "others" else (mean_all, most)


@dataclass
class Edit:
    """What to remove: per scored timestep, the selected features and their edit factors."""

    timesteps: list[int]
    selected: np.ndarray
    """(timestep, feature) bool: the union of the target concepts' selections."""
    factor: np.ndarray
    """(timestep, feature) gamma * mu(i, t, D_c): a hit latent z_i becomes factor_i * z_i."""
    threshold: np.ndarray
    """(timestep, feature): a latent is edited only where it exceeds this (mu(i, t, D))."""
    presence: np.ndarray | None = None
    """(timestep, feature) or None: if set, only in pictures whose position-averaged latent
    exceeds this."""

    def row(self, t: int) -> int:
        """Index of the scored timestep nearest to t (by value, never by step number)."""
        return int(np.argmin(np.abs(np.asarray(self.timesteps) - t)))

    @classmethod
    def for_concepts(cls, timesteps: list[int], selected: np.ndarray, concept_mean: np.ndarray,
                     multipliers: list[float], threshold: np.ndarray,
                     presence: np.ndarray | None = None) -> "Edit":
        """Union over concepts: `selected` and `concept_mean` are (concept, timestep, feature);
        `threshold` and `presence` as the fields (`gate_thresholds`).

        Where several concepts select the same feature, the strongest (most negative) factor wins.
        """
        for m in multipliers:
            if m >= 0:
                warnings.warn(f"multiplier {m} is not negative: the selected features will be "
                              "kept or amplified instead of removed", stacklevel=2)
        gammas = np.asarray(multipliers, np.float32)[:, None, None]
        factors = np.where(selected, gammas * concept_mean, np.inf)
        return cls(timesteps=list(timesteps), selected=selected.any(0),
                   factor=np.where(selected.any(0), factors.min(0), 1.0).astype(np.float32),
                   threshold=threshold.astype(np.float32),
                   presence=None if presence is None else presence.astype(np.float32))


class Unlearn:
    """Context manager that edits a block's output with an SAE during sampling."""

    def __init__(self, unet: nn.Module, block: str, sae: SparseAutoencoder, edit: Edit | None,
                 error_sign: int = 1):
        if error_sign not in (1, -1):
            raise ValueError(f"error_sign must be 1 or -1, got {error_sign}")
        self.unet, self.sae, self.edit, self.error_sign = unet, sae, edit, error_sign
        self.module = resolve_blocks(unet, [block])[block]
        self._t: int | None = None
        self._handles: list = []
        self.edited_fraction: list[float] = []
        """Per UNet call, the share of (position, selected feature) pairs that were edited."""

    def __enter__(self) -> "Unlearn":
        self._handles = [self.unet.register_forward_pre_hook(self._on_unet, with_kwargs=True),
                         self.module.register_forward_hook(self._on_block)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _on_unet(self, _m: nn.Module, args: tuple, kwargs: dict) -> None:
        self._t = unet_timestep(args, kwargs)

    @torch.no_grad()
    def _on_block(self, _m: nn.Module, _args: tuple, output: object) -> object:
        x = feature_map(output)
        b, c, h, w = x.shape
        vectors = x.permute(0, 2, 3, 1).reshape(-1, c).float()
        acts, idx = self.sae.encode(vectors)
        edited = acts
        if self.edit is not None and self._t is not None:
            row = self.edit.row(self._t)
            selected = torch.from_numpy(self.edit.selected[row]).to(x.device)
            threshold = torch.from_numpy(self.edit.threshold[row]).float().to(x.device)
            factor = torch.from_numpy(self.edit.factor[row]).to(x.device)
            hit = selected[idx] & (acts > threshold[idx])
            if self.edit.presence is not None:
                presence = torch.from_numpy(self.edit.presence[row]).float().to(x.device)
                hit &= _present(acts, idx, b, h * w, presence)
            edited = torch.where(hit, factor[idx] * acts, acts)
            self.edited_fraction.append(float(hit.sum()) / max(1, int(selected.sum()) * len(vectors)))
        recon = self.sae.decode(acts, idx)
        new = self.sae.decode(edited, idx)
        if self.error_sign == 1:
            out = vectors + (new - recon)  # exactly x when nothing is edited (new - recon == 0)
        else:
            out = new + (recon - vectors)
        out = out.to(x.dtype).reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()
        return _replace_feature_map(output, out)


def _present(acts: torch.Tensor, idx: torch.Tensor, pictures: int, positions: int,
             presence: torch.Tensor) -> torch.Tensor:
    """(vector, k) bool: the latent's mean over its picture's positions exceeds `presence`.
    Vectors are picture-major; sums go to a (picture, latent) table, never (vector, latent)."""
    n_latents = presence.shape[0]
    picture = torch.arange(pictures, device=idx.device).repeat_interleave(positions)[:, None]
    flat = (picture * n_latents + idx).flatten()
    sums = torch.zeros(pictures * n_latents, device=acts.device).index_add_(0, flat, acts.flatten())
    return (sums / positions > presence.repeat(pictures))[flat].view_as(idx)


def _replace_feature_map(output: object, fmap: torch.Tensor) -> object:
    if isinstance(output, torch.Tensor):
        return fmap
    if hasattr(output, "sample"):
        output.sample = fmap
        return output
    return (fmap, *output[1:])
