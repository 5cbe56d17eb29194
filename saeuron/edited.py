"""Sampling with an SAE edit, sampling again only the pictures the edit changes.

Under the "detect" gate an edit acts only in the pictures where its concept shows, and a picture
it never acts on is sampled exactly as without it: the same trajectory, step for step. So the
unedited pictures are sampled once (`sample_unedited`), with each hooked block recording its
pictures' position-averaged latents; an edit then samples only the pictures whose record it
would detect (`sample_edited`; `saeuron.intervention.touched_pictures`) and takes the others
from the unedited run. The sweep judges dozens of candidate edits and the evaluation a dozen
targets on the same pictures, most of which no edit touches (BENCHMARKS.md); the pictures that
several edits touch are sampled together, each with its own edit (`sample_edited_each`), since
the small UNet runs faster in larger batches.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from saeuron.intervention import Edit, Edits, Recorded, Unlearn, touched_pictures
from saeuron.diffusion import Pipeline
from saeuron.sae import SparseAutoencoder
from saeuron.sampling import sample

RECORD_BUDGET = 256 << 20
"""Bytes of latent records kept per unedited run; a larger run (a Stable Diffusion grid:
20,480 latents per picture and step) keeps none, and its edits sample every picture."""


@dataclass
class Unedited:
    """Pictures sampled without an edit, in sampling order, and per hooked block the record of
    its SAE's latents (Unlearn's `recorded`); a block without a record reuses nothing."""

    images: np.ndarray
    """uint8 (N, H, W, 3)."""
    recorded: dict[str, list[Recorded]] = field(default_factory=dict)

    @classmethod
    def concat(cls, parts: list["Unedited"]) -> "Unedited":
        """Runs of consecutive prompt ranges, as one (their records are separate batches)."""
        blocks = set.intersection(*(set(p.recorded) for p in parts))
        return cls(np.concatenate([p.images for p in parts]),
                   {b: [call for p in parts for call in p.recorded[b]] for b in blocks})

    def save(self, path: str | Path) -> Path:
        """One .npz: the pictures, and each block's per-call batches, timesteps and latents."""
        arrays = {"images": self.images}
        for b, (block, calls) in enumerate(self.recorded.items()):
            arrays[f"block{b}"] = np.array(block)
            arrays[f"block{b}_t"] = np.array([c.t for c in calls])
            arrays[f"block{b}_batch"] = np.array([c.batch for c in calls])
            arrays.update({f"block{b}_{i}": c.means.numpy() for i, c in enumerate(calls)})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Unedited":
        with np.load(path) as data:
            recorded = {}
            b = 0
            while f"block{b}" in data:
                recorded[str(data[f"block{b}"])] = [
                    Recorded(int(batch), int(t), torch.from_numpy(data[f"block{b}_{i}"]))
                    for i, (batch, t) in enumerate(zip(data[f"block{b}_batch"],
                                                       data[f"block{b}_t"]))]
                b += 1
            return cls(images=data["images"], recorded=recorded)


def sample_unedited(pipe: Pipeline, saes: dict[str, SparseAutoencoder], prompts: list[str],
                    seeds: list[int], *, num_steps: int, **sampling) -> Unedited:
    """The pictures without edit, with each block of `saes` recording its latents (within
    RECORD_BUDGET)."""
    pictures = len(prompts)
    recorders = {block: Unlearn(pipe.unet, block, sae, None, record=(
        2 * pictures * num_steps * sae.cfg.n_latents * 4 <= RECORD_BUDGET))
        for block, sae in saes.items()}
    with ExitStack() as stack:
        for recorder in recorders.values():
            stack.enter_context(recorder)
        images = sample(pipe, prompts, seeds, num_steps=num_steps, **sampling)
    return Unedited(images, {b: r.recorded for b, r in recorders.items() if r.record})


def sample_edited(pipe: Pipeline, block: str, sae: SparseAutoencoder, edit: Edit | None,
                  prompts: list[str], seeds: list[int], *, unedited: Unedited | None = None,
                  error_sign: int = 1, **sampling) -> np.ndarray:
    """The pictures with `edit` at `block` (uint8 (N, H, W, 3)). Given `unedited` (the same
    prompts and seeds, sampled by sample_unedited with the same options), only the pictures
    the edit touches are sampled, in one batch of their own; the others are the unedited ones."""
    return sample_edited_each(pipe, block, sae, [edit], prompts, seeds, unedited=unedited,
                              error_sign=error_sign, **sampling)[0]


def sample_edited_each(pipe: Pipeline, block: str, sae: SparseAutoencoder,
                       edits: list[Edit | None], prompts: list[str], seeds: list[int], *,
                       unedited: Unedited | None = None, error_sign: int = 1,
                       batch_size: int = 128, **sampling) -> list[np.ndarray]:
    """sample_edited for each of `edits` on the same pictures: the pictures each edit changes
    (all of them, without `unedited`) sampled together, up to `batch_size` pictures per batch,
    every picture under its own edit. A picture's result depends on its batch only by float
    rounding (as sample_edited's touched batch does)."""
    reuse = (unedited is not None and block in unedited.recorded and error_sign == 1
             and len(unedited.images) == len(prompts))
    if reuse:
        touched = [np.flatnonzero(touched_pictures(e, unedited.recorded[block])) for e in edits]
        results = [unedited.images.copy() for _ in edits]
    else:
        touched = [np.arange(len(prompts)) for _ in edits]
        results = [None] * len(edits)  # each filled by its sampled pictures
    packs: list[list[int]] = [[]]
    size = 0  # pictures in the last pack
    for e, picked in enumerate(touched):
        if not len(picked):
            continue
        if packs[-1] and size + len(picked) > batch_size:
            packs.append([])
            size = 0
        packs[-1].append(e)
        size += len(picked)
    for pack in filter(None, packs):
        picked = np.concatenate([touched[e] for e in pack])
        edit = edits[pack[0]] if len(pack) == 1 else Edits([edits[e] for e in pack],
                                                            [len(touched[e]) for e in pack])
        with Unlearn(pipe.unet, block, sae, edit, error_sign=error_sign):
            images = sample(pipe, [prompts[i] for i in picked], [seeds[i] for i in picked],
                            batch_size=batch_size if len(pack) == 1 else len(picked), **sampling)
        for e, part in zip(pack, np.split(images, np.cumsum([len(touched[e]) for e in pack])[:-1])):
            if reuse:
                results[e][touched[e]] = part
            else:
                results[e] = part
    return results
