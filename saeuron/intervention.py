"""Unlearning by editing SAE features inside a UNet block, at inference.

At each sampling step the block's output x is encoded, z = encode(x); for every feature i
selected for the target concept(s) at this timestep, wherever z_i > mu(i, t, D) (its mean over
all concepts) it is set to gamma * mu(i, t, D_c) * z_i (gamma < 0; gamma 0 sets it to zero);
the block then returns

    x + decode(z_edited) - decode(z)

so that editing nothing returns x exactly. (The public reference code adds the error with the
opposite sign, which makes a no-op edit return 2 decode(z) - x; `error_sign=-1` reproduces
it, to measure the difference.) Both halves of the CFG batch are edited. At the `text` hook
(saeuron.capture.TEXT_HOOK) x is the prompt's encoding the UNet receives, one vector per token,
edited before any block reads it. Scores are keyed by
timestep value; a sampling timestep that was not scored uses the nearest scored one.

Where a latent is edited is the gate (`gate_thresholds`, an addition to the paper beyond
"mean"): "mean" is the paper's rule above; "others" edits only where z_i exceeds the largest
mean of any concept not targeted; "detect" keeps the paper's rule but edits a target concept's
features only in the pictures where that concept is detected (`Detector`), so features that
also fire, more weakly, on other concepts' pictures are left alone there (BENCHMARKS.md).

Under "detect" most pictures of a grid are never edited, and a picture that is never edited is
sampled exactly as without the edit. So an unedited run can record what its pictures' latents
were (`Unlearn(..., record=True)`), and `touched_pictures` tells from that record, without
sampling, which pictures an edit would change: only those need sampling again, and the
touched pictures of several edits can share one batch (`Edits`: one edit per group of pictures).

Which pictures are detected is state of one sampling batch: the sampling loop says when a batch
starts (saeuron.sampling.sampling_batch), and the state starts afresh there.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from saeuron.capture import (feature_map, resolve_blocks, unet_context, unet_timestep,
                             with_feature_map, with_unet_context)
from saeuron.sae import SparseAutoencoder
from saeuron.sampling import sampling_batch


Gate = Literal["mean", "others", "detect"]

DETECT_AT = 0.5
"""Default of where a detector's cutoff lies between the most active rival concept (0) and the
concept itself (1) (ScoreConfig.detect_at)."""
DETECT_START = 900
"""Default timestep from which pictures are checked, and edited (ScoreConfig.detect_start),
measured on MiniCanvas's 20-step schedule: at the first steps a picture is
still mostly its noise, which moves the features' sums as much as the prompt does
(BENCHMARKS.md). A concept already set at those steps (MiniCanvas's blueprint) cannot be
removed this way; the sweep then falls back to another gate (SweepConfig.fallback_gate)."""


def gate_thresholds(gate: Gate, mean_all: np.ndarray, concept_means: np.ndarray,
                    targets: list[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """(threshold, rivals) of an Edit removing the `targets` rows of `concept_means`
    ((concept, timestep, feature)), with `mean_all` the (timestep, feature) mean of all;
    `rivals` ("detect" only): per target, the largest mean of any other concept."""
    if gate not in ("mean", "others", "detect"):
        raise ValueError(f"unknown gate {gate!r}; use 'mean', 'others' or 'detect'")
    if gate == "mean":
        return mean_all, None
    if gate == "others":
        others = np.delete(concept_means, targets, axis=0)
        return (others.max(0) if len(others) else np.zeros_like(mean_all)), None
    rivals = [np.delete(concept_means, [t], axis=0) for t in targets]
    return mean_all, np.stack([r.max(0) if len(r) else np.zeros_like(mean_all) for r in rivals])


@dataclass
class Detector:
    """Per target concept, at each timestep: a picture shows the concept when the sum of its
    selected features' position-averaged latents, as a share of the concept's own mean sum,
    passes DETECT_AT of the way from the most active rival concept's share to 1. A picture
    stays detected for the rest of its sampling run (once the edit fades the concept, its
    features would fall below the cutoff and the edit would stop), and only the concepts
    detected in a picture are edited there. Each batch row is checked on its own, so the
    unconditional half of a CFG batch is edited only once it shows the concept itself, and the
    guidance keeps pushing the picture away from the concept meanwhile."""

    selected: np.ndarray
    """(concept, timestep, feature) bool."""
    factor: np.ndarray
    """(concept, timestep, feature): the concept's factor where selected (read nowhere else)."""
    weight: np.ndarray
    """(concept, timestep, feature): selected / the concept's mean sum over them."""
    cutoff: np.ndarray
    """(concept, timestep): the score a picture must pass to show the concept, where checked."""
    checked: np.ndarray
    """(concept, timestep) bool: pictures are checked for the concept at this step (from its
    detect start on); before, it is never detected."""
    everywhere: np.ndarray
    """(concept,) bool: edited in every picture at every step instead, and never latched (a
    concept whose own gate is not 'detect', removed in a set with ones whose gate is)."""

    def detects(self, means: torch.Tensor, row: int) -> torch.Tensor:
        """(picture, concept) bool: the concept shows in the picture at scored timestep `row`
        (never where not checked; always for the `everywhere` concepts), from the pictures'
        position-averaged latents `means` ((picture, latent), see `picture_means`)."""
        score = means @ torch.from_numpy(self.weight[:, row]).float().to(means.device).T
        passed = score > torch.from_numpy(self.cutoff[:, row]).float().to(means.device)
        checked = torch.from_numpy(self.checked[:, row]).to(means.device)
        return passed & checked | torch.from_numpy(self.everywhere).to(means.device)

    @classmethod
    def build(cls, timesteps: list[int], selected: np.ndarray, factor: np.ndarray,
              concept_mean: np.ndarray, rivals: np.ndarray,
              at: float | np.ndarray = DETECT_AT, start: int | np.ndarray = DETECT_START,
              everywhere: list[bool] | None = None) -> "Detector":
        """`at`, `start`: DETECT_AT and DETECT_START, for all concepts or per concept;
        `everywhere`: per concept, edit it in every picture at every step instead."""
        own = (concept_mean * selected).sum(-1)
        weight = selected / np.maximum(own, 1e-12)[..., None]
        rival = (rivals * weight).sum(-1)
        n = len(selected)
        at = np.broadcast_to(np.asarray(at, np.float64), (n,))[:, None]
        start = np.broadcast_to(np.asarray(start), (n,))[:, None]
        return cls(selected, factor.astype(np.float32), weight.astype(np.float32),
                   (rival + at * (1 - rival)).astype(np.float32),
                   checked=np.asarray(timesteps)[None] <= start,
                   everywhere=np.zeros(n, bool) if everywhere is None
                   else np.asarray(everywhere, bool))


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
    detector: Detector | None = None
    """If set, each concept's features are edited only in pictures where it is detected."""

    def row(self, t: int) -> int:
        """Index of the scored timestep nearest to t (by value, never by step number)."""
        return int(np.argmin(np.abs(np.asarray(self.timesteps) - t)))

    @classmethod
    def for_concepts(cls, timesteps: list[int], selected: np.ndarray, concept_mean: np.ndarray,
                     multipliers: list[float], threshold: np.ndarray,
                     rivals: np.ndarray | None = None,
                     everywhere: list[bool] | None = None,
                     detect_at: float | np.ndarray = DETECT_AT,
                     detect_start: int | np.ndarray = DETECT_START) -> "Edit":
        """Union over concepts: `selected` and `concept_mean` are (concept, timestep, feature);
        `threshold` and `rivals` as `gate_thresholds` returns them (rivals: with a detector,
        which edits the `everywhere` concepts in every picture and detects the others as
        `detect_at` and `detect_start` say, for all or per concept: Detector.build).

        Where several concepts select the same feature, the strongest (most negative) factor wins.
        """
        for m in multipliers:
            if m > 0:
                warnings.warn(f"multiplier {m} is positive: the selected features will be "
                              "kept or amplified instead of removed", stacklevel=2)
        gammas = np.asarray(multipliers, np.float32)[:, None, None]
        factors = np.where(selected, gammas * concept_mean, np.inf)
        detector = (None if rivals is None else
                    Detector.build(timesteps, selected, factors, concept_mean, rivals,
                                   detect_at, detect_start, everywhere))
        return cls(timesteps=list(timesteps), selected=selected.any(0),
                   factor=np.where(selected.any(0), factors.min(0), 1.0).astype(np.float32),
                   threshold=threshold.astype(np.float32), detector=detector)


@dataclass
class Edits:
    """Several edits in one sampling batch: `edits[g]` acts on the `sizes[g]` pictures after those
    of the groups before it. The sweep judges dozens of candidates on a few touched pictures
    each; sampled together, the small UNet runs at the throughput of a larger batch."""

    edits: list[Edit | None]
    sizes: list[int]

    def __post_init__(self) -> None:
        if len(self.edits) != len(self.sizes) or min(self.sizes, default=1) < 1:
            raise ValueError(f"Edits needs one positive group size per edit, got "
                             f"{len(self.edits)} edits and sizes {self.sizes}")

    def groups(self, rows: int) -> list[tuple[Edit | None, torch.Tensor]]:
        """Each edit with its rows of a CFG batch of `rows` ([unconditional, conditional] halves,
        a picture's two rows `pictures` apart)."""
        pictures = sum(self.sizes)
        if rows != 2 * pictures:
            raise ValueError(f"a batch of {rows} rows, but the edits' groups hold {pictures} "
                             "pictures: sample all of them in one batch")
        starts = np.cumsum([0, *self.sizes])
        return [(edit, torch.cat([torch.arange(a, b), torch.arange(a, b) + pictures]))
                for edit, a, b in zip(self.edits, starts[:-1], starts[1:])]


def picture_means(acts: torch.Tensor, idx: torch.Tensor, pictures: int,
                  n_latents: int) -> torch.Tensor:
    """(picture, latent) position-averaged latents of a block's TopK codes (acts and idx of
    shape (picture * position, k), pictures in order), summed in a (picture, latent) table,
    never a (vector, latent) one."""
    picture = torch.arange(pictures, device=idx.device).repeat_interleave(len(acts) // pictures)
    means = torch.zeros(pictures * n_latents, device=acts.device).index_add_(
        0, (picture[:, None] * n_latents + idx).flatten(), acts.flatten()).view(pictures, -1)
    return means / (len(acts) // pictures)


@dataclass(frozen=True)
class Recorded:
    """One UNet call of an unedited run, as `touched_pictures` reads it."""

    batch: int | None
    """The sampling batch of the call (saeuron.sampling.sampling_batch)."""
    t: int
    means: torch.Tensor
    """(row, latent) position-averaged latents of the call's CFG rows (picture_means)."""


class Unlearn:
    """Context manager that edits a block's output with an SAE during sampling (or, at
    saeuron.capture.TEXT_HOOK, the prompt's encoding each UNet call receives, one vector per
    token).

    With a detector, which pictures (batch rows) are detected is kept across the UNet calls of
    one sampling batch and starts afresh with the next (saeuron.sampling.sampling_batch; outside
    `sample`, for as long as the context lasts). With `record`, each call is kept in
    `recorded`, for `touched_pictures`."""

    def __init__(self, unet: nn.Module, block: str, sae: SparseAutoencoder,
                 edit: Edit | Edits | None, error_sign: int = 1, record: bool = False):
        if error_sign not in (1, 0, -1):
            raise ValueError(f"error_sign must be 1, 0 or -1, got {error_sign}")
        self.unet, self.sae, self.edit, self.error_sign = unet, sae, edit, error_sign
        self.module = resolve_blocks(unet, [block])[block]
        self.record = record
        self.recorded: list[Recorded] = []
        """Per UNet call (with `record`)."""
        self._t: int | None = None
        self._batch: int | None = None
        self._seen: dict[int, torch.Tensor] = {}
        """Per group of pictures (Edits; 0 for a single edit), its rows detected so far."""
        self._handles: list = []
        self.edited_fraction: list[float] = []
        """Per UNet call, the share of (position, selected feature) pairs that were edited."""

    def __enter__(self) -> "Unlearn":
        self._handles = [self.unet.register_forward_pre_hook(self._on_unet, with_kwargs=True)]
        if self.module is not None:
            self._handles.append(self.module.register_forward_hook(self._on_block))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _on_unet(self, _m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if (batch := sampling_batch()) != self._batch:
            self._seen, self._batch = {}, batch
        self._t = unet_timestep(args, kwargs)
        if self.module is not None:
            return None
        tokens = unet_context(args, kwargs)  # (B, tokens, width): a (B, width, tokens, 1) map
        with torch.no_grad(), torch.autocast(tokens.device.type, enabled=False):
            edited = self._edited(tokens.transpose(1, 2)[..., None])[..., 0].transpose(1, 2)
        return with_unet_context(args, kwargs, edited.contiguous())

    @torch.no_grad()
    def _on_block(self, _m: nn.Module, _args: tuple, output: object) -> object:
        x = feature_map(output)
        with torch.autocast(x.device.type, enabled=False):  # the SAE edits in float32
            return with_feature_map(output, self._edited(x))

    def _edited(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        vectors = x.permute(0, 2, 3, 1).reshape(-1, c).float()
        acts, idx = self.sae.encode(vectors)
        n_latents = self.sae.cfg.n_latents
        groups = (self.edit.groups(b) if isinstance(self.edit, Edits)
                  else [(self.edit, torch.arange(b))] if self.edit is not None else [])
        detecting = any(e is not None and e.detector is not None for e, _ in groups)
        means = (picture_means(acts, idx, b, n_latents) if self.record or detecting else None)
        if self.record:
            self.recorded.append(Recorded(self._batch, self._t, means.cpu()))
        edited = acts
        if groups and self._t is not None:
            edited, hits, selected = acts.clone(), 0, 0
            for g, (edit, rows) in enumerate(groups):
                if edit is None:
                    continue
                rows = rows.to(x.device)
                at = (rows[:, None] * (h * w) + torch.arange(h * w, device=x.device)).flatten()
                hit, factor = self._hits(edit, g, acts[at], idx[at],
                                         None if means is None else means[rows], h * w)
                edited[at] = torch.where(hit, factor * acts[at], acts[at])
                hits += int(hit.sum())
                selected += int(edit.selected[edit.row(self._t)].sum()) * len(hit)
            self.edited_fraction.append(hits / max(1, selected))
        recon = self.sae.decode(acts, idx)
        new = self.sae.decode(edited, idx)
        if self.error_sign == 1:
            out = vectors + (new - recon)  # exactly x when nothing is edited (new - recon == 0)
        elif self.error_sign == 0:
            out = new  # the SAE's error term dropped: the block outputs decode(z') alone
        else:
            out = new + (recon - vectors)
        return out.to(x.dtype).reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()

    def _hits(self, edit: Edit, group: int, acts: torch.Tensor, idx: torch.Tensor,
              means: torch.Tensor | None, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(hit, factor) per TopK code of one group's rows: which codes `edit` scales, by what."""
        row = edit.row(self._t)
        threshold = torch.from_numpy(edit.threshold[row]).float().to(acts.device)
        if edit.detector is None:
            selected = torch.from_numpy(edit.selected[row]).to(acts.device)
            factor = torch.from_numpy(edit.factor[row]).to(acts.device)
            return selected[idx] & (acts > threshold[idx]), factor[idx]
        picture = torch.arange(len(means), device=idx.device).repeat_interleave(positions)[:, None]
        edited, factor = self._detected(edit.detector, group, means, row)
        return edited[picture, idx] & (acts > threshold[idx]), factor[picture, idx]

    def _detected(self, det: Detector, group: int, means: torch.Tensor,
                  row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(edited, factor), each (picture, latent): whether a concept detected in the picture
        of `group` so far (or edited everywhere) selects the latent at this step, and the
        strongest factor of those that do (read only where edited)."""
        now = det.detects(means, row)
        detected = self._seen.get(group)
        if detected is None or detected.shape != now.shape:  # outside `sample`: other pictures
            detected = self._seen[group] = torch.zeros_like(now)
        detected |= now & ~torch.from_numpy(det.everywhere).to(means.device)  # never latched
        factor = torch.from_numpy(det.factor[:, row]).float().to(means.device)
        selected = torch.from_numpy(det.selected[:, row]).to(means.device)
        edited = (detected | now)[:, :, None] & selected[None]
        return edited.any(1), torch.where(edited, factor[None], torch.inf).amin(1)


def touched_pictures(edit: Edit | None, recorded: list[Recorded]) -> np.ndarray:
    """bool per picture of an unedited sampling run that recorded `recorded` (Unlearn with
    `record`; CFG batches of [unconditional, conditional] rows, one batch after another): the
    pictures `edit` would change. A picture none of whose rows a detector ever detects is never
    edited, so its sampling run is the unedited one, step for step; every other picture, and
    every picture under an edit without a detector, counts as touched."""
    out = []
    for _, calls in itertools.groupby(recorded, key=lambda call: call.batch):
        calls = list(calls)
        rows = len(calls[0].means)
        if edit is None:
            out.append(np.zeros(rows // 2, bool))
            continue
        if edit.detector is None:
            out.append(np.ones(rows // 2, bool))
            continue
        hit = torch.zeros(rows, dtype=torch.bool)
        for call in calls:
            hit |= edit.detector.detects(call.means, edit.row(call.t)).any(1)
        out.append((hit[:rows // 2] | hit[rows // 2:]).numpy())
    return np.concatenate(out) if out else np.zeros(0, bool)
