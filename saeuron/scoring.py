"""Scoring SAE features per concept with Dask, and selecting the concept features.

The activation store is encoded chunk by chunk (dask.array over the Zarr array, one task per
chunk), averaged over positions, and reduced to sums per (concept, timestep, feature) with a
one-hot matrix of labels, so memory holds a few chunks and the (concept, timestep, feature)
sums, never the store. The SAeUron score of feature i for concept c at timestep t is

    score = mu(i,t,D_c) / sum_j mu(j,t,D_c)  -  mu(i,t,D_notc) / sum_j mu(j,t,D_notc)

With `contrast: max` (an addition to the paper) the second term is the largest share among
the other concepts, max_c' mu(i,t,D_c') / sum_j mu(j,t,D_c'): a feature active on the concept
and on one other concept then scores low, where the mean over all others hides that other
concept (BENCHMARKS.md, "Which features").
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import dask
import dask.array as da
import numpy as np
import torch
from pydantic import Field, model_validator

from saeuron.config import Config
from saeuron.intervention import DETECT_AT, DETECT_START, Gate
from saeuron.worlds import world
from saeuron.sae import SparseAutoencoder
from saeuron.sweep import SweepConfig
from storage.activations import ActivationStore
from storage.arrays import StoreCorruptError
from saeuron.names import DOMAINS

EPS = 1e-9
Contrast = Literal["mean", "max"]


@dataclass
class ConceptMeans:
    """Mean SAE activations of one label domain (style or object)."""

    concepts: list[str]
    timesteps: list[int]
    sums: np.ndarray
    """(concept, timestep, feature) sums of position-averaged latents over the concept's samples."""
    counts: np.ndarray
    """(concept,) samples per concept."""

    @property
    def means(self) -> np.ndarray:
        return self.sums / np.maximum(self.counts, 1)[:, None, None]

    @property
    def mean_all(self) -> np.ndarray:
        """(timestep, feature) mean over every sample of the domain, all concepts together."""
        return self.sums.sum(0) / max(int(self.counts.sum()), 1)

    def exclusive(self) -> np.ndarray:
        """(concept, timestep, feature) bool: the concept is where the feature is most active."""
        mu = self.means
        if len(mu) < 2:
            return np.ones_like(mu, bool)
        top2 = np.sort(mu, axis=0)[-2:]
        return (mu == top2[1][None]) & (mu > top2[0][None])

    def scores(self, contrast: Contrast = "mean") -> np.ndarray:
        """(concept, timestep, feature) SAeUron scores, against the mean of the other concepts
        (the paper) or against the most active other concept (`contrast="max"`)."""
        mu_c = self.means
        share = mu_c / (mu_c.sum(-1, keepdims=True) + EPS)
        if contrast == "max":
            if len(mu_c) < 2:
                return share
            top2 = np.sort(share, axis=0)[-2:]
            leads = share == top2[1][None]
            return share - np.where(leads, top2[0][None], top2[1][None])
        rest = (self.sums.sum(0)[None] - self.sums) / np.maximum(
            self.counts.sum() - self.counts, 1)[:, None, None]
        return share - rest / (rest.sum(-1, keepdims=True) + EPS)


def _encode_chunk(block: np.ndarray, sae: SparseAutoencoder, where: str = "") -> np.ndarray:
    """(n, T, P, F) activations -> (n, T, L) position-averaged TopK latents, float32; a chunk
    that holds NaN (a stored chunk gone: the store's fill value) is refused.

    One sample at a time, so the dense (vector, latent) intermediate is T x P x L floats, not
    n times that (at SD scale a 16-sample chunk would need 16 x 50 x 256 x 20,480 x 4 B)."""
    if np.isnan(block).any():
        raise StoreCorruptError(f"{where}: a chunk is missing or holds NaN; run the harvest "
                                "stage again: it re-harvests the damaged units only")
    n, t, p, f = block.shape
    out = np.empty((n, t, sae.cfg.n_latents), np.float32)
    with torch.no_grad():
        for i in range(n):
            x = torch.from_numpy(np.ascontiguousarray(block[i], dtype=np.float32)).reshape(-1, f)
            out[i] = sae.dense_latents(x).reshape(t, p, -1).mean(1).numpy()
    return out


def encoded_means(store: ActivationStore, hook: str, sae: SparseAutoencoder) -> da.Array:
    """Lazy (sample, timestep, latent) position-averaged latents, one task per store chunk."""
    store.require_hooks([hook])
    width = store.spec.hooks[hook][1]
    if width != sae.cfg.d_in:
        raise ValueError(f"hook {hook!r} has width {width} but the SAE takes {sae.cfg.d_in}")
    acts = da.from_zarr(store.group[hook])
    return da.map_blocks(_encode_chunk, acts, sae, f"{store.url} ({hook})", dtype=np.float32,
                         chunks=(acts.chunks[0], acts.chunks[1], (sae.cfg.n_latents,)),
                         drop_axis=[2, 3], new_axis=[2])


def concept_means(store: ActivationStore, hook: str, sae: SparseAutoencoder,
                  scheduler: str | None = None) -> dict[str, ConceptMeans]:
    """Per-domain sums and counts, computed in one Dask pass over the store.

    `scheduler`: None (threads), a dask scheduler name, or a dask.distributed address.
    """
    labels = store.labels()
    latents = encoded_means(store, hook, sae)
    onehots, concepts = {}, {}
    for domain in DOMAINS:
        names = sorted(labels[domain].unique())
        concepts[domain] = names
        onehot = (labels[domain].to_numpy()[:, None] == np.array(names)[None]).astype(np.float32)
        onehots[domain] = da.from_array(onehot, chunks=(latents.chunks[0], len(names)))
    sums = {d: da.einsum("nc,ntl->ctl", onehots[d], latents) for d in DOMAINS}
    computed = _compute(sums, scheduler)
    return {d: ConceptMeans(concepts=concepts[d], timesteps=list(store.spec.timesteps),
                            sums=computed[d],
                            counts=np.array([(labels[d] == c).sum() for c in concepts[d]]))
            for d in DOMAINS}


def _compute(graph: dict, scheduler: str | None) -> dict:
    """On the threaded scheduler by default, or on a dask.distributed cluster by its address."""
    if scheduler and "://" in scheduler:
        from distributed import Client

        with Client(scheduler) as client:
            return client.compute(graph, sync=True)
    with dask.config.set(scheduler=scheduler) if scheduler else nullcontext():
        return dask.compute(graph)[0]


def select_features(scores: np.ndarray, *, percentile: float | None = None,
                    top_n: int | None = None, eligible: np.ndarray | None = None) -> np.ndarray:
    """(concept, timestep, feature) bool: per timestep, scores above the percentile, or top n;
    with `eligible`, only among the eligible features (possibly none at a timestep)."""
    if (percentile is None) == (top_n is None):
        raise ValueError("choose exactly one of percentile or top_n")
    if eligible is not None:
        ranked = select_features(np.where(eligible, scores, -np.inf), percentile=percentile,
                                 top_n=top_n)
        return ranked & eligible
    if top_n is not None:
        if not 1 <= top_n <= scores.shape[-1]:
            raise ValueError(f"top_n must be in [1, {scores.shape[-1]}], got {top_n}")
        kth = np.sort(scores, axis=-1)[..., -top_n][..., None]
        return scores >= kth
    if not 0 <= percentile < 100:
        raise ValueError(f"percentile must be in [0, 100), got {percentile}")
    return scores > np.percentile(scores, percentile, axis=-1, keepdims=True)


class DomainHooks(Config):
    style: str = Field(world().hooks["style"], description="Block (or 'text', the prompt's "
                       "encoding) whose SAE removes styles.")
    object: str = Field(world().hooks["object"], description="Block (or 'text') whose SAE "
                        "removes objects.")

    def by_hook(self) -> dict[str, list[str]]:
        """Hook -> the domains its SAE removes, in DOMAINS order."""
        out: dict[str, list[str]] = {}
        for domain in DOMAINS:
            out.setdefault(getattr(self, domain), []).append(domain)
        return out


class DomainSweeps(Config):
    style: SweepConfig | None = Field(None, description="Sweep of the style concepts (None: "
                                      "top_n and multiplier for all).")
    object: SweepConfig | None = Field(None, description="Sweep of the object concepts.")
    workers: int = Field(2, ge=1, le=64, description="Concepts swept at once (threads, each "
                         "with its own copy of the model, one torch thread each).")

    def domains(self) -> list[str]:
        """The domains swept (whose sweep samples the model)."""
        return [d for d in DOMAINS if getattr(self, d) is not None]


def default_sweeps() -> DomainSweeps:
    """The pipeline's sweep (measured on MiniCanvas, BENCHMARKS.md): styles at the prompt's
    encoding, by setting their features to zero or reversing them mildly, with the objects of
    every validation picture in the objective (CRA_grid); objects at a UNet block need more
    features and strong multipliers, and of the edits that remove one on every validation
    picture the strongest holds on unseen seeds (the weakest sits where the object comes back)."""
    return DomainSweeps(style=SweepConfig(top_n=[3, 10, 30], multipliers=[0, -1, -3],
                                          objective=["UA", "IRA", "CRA_grid"]),
                        object=SweepConfig(top_n=[10, 20, 40], multipliers=[-5, -10, -20],
                                           prefer="stronger"))


class ScoreConfig(Config):
    hooks: DomainHooks = Field(default_factory=DomainHooks, description="Block whose SAE is "
                               "scored for, and removes, each domain's concepts (the paper "
                               "also uses one block for objects and another for styles).")
    percentile: float | None = Field(None, ge=0, lt=100, description="Select features above "
                                     "this percentile of each timestep's scores.")
    top_n: int | None = Field(3, ge=1, description="Or select the n best features per timestep.")
    multiplier: float = Field(-5.0, description="Default gamma of the intervention (negative).")
    contrast: Contrast = Field("max", description="What a concept's share of activation is "
                               "compared with: 'mean', the other concepts' mean (the paper), or "
                               "'max', the most active other concept (an addition: keeps out "
                               "features two concepts share; see BENCHMARKS.md).")
    gate: Gate = Field("detect", description="Where the edit applies, for the sweep and for "
                       "evaluation: 'detect', the paper's rule, only in pictures where the "
                       "concept's selected features are detected (an addition: spares other "
                       "concepts' pictures; saeuron.intervention.Detector, BENCHMARKS.md); "
                       "'mean', where a latent exceeds its mean over all concepts (the paper); "
                       "'others', where it exceeds the largest mean of any other concept. The "
                       "sweep may give a concept its fallback_gate instead.")
    detect_at: float = Field(DETECT_AT, gt=0, lt=1, description="'detect' gate: a picture "
                             "shows a concept once the sum of its selected features passes this "
                             "share of the way from the most active other concept's level (0) "
                             "to the concept's own (1).")
    detect_start: int = Field(DETECT_START, ge=0, le=1000, description="'detect' gate: the "
                              "timestep from which pictures are checked and edited (measured on "
                              "MiniCanvas's schedule: at the first steps the noise moves the "
                              "features as much as the prompt; BENCHMARKS.md). Not at the text "
                              "hook, which holds no noise: checked from the first step.")
    exclusive: bool = Field(True, description="Select a feature for a concept only where that "
                            "concept has its highest mean activation (an addition to the paper: "
                            "keeps features shared by all concepts out; see BENCHMARKS.md).")
    sweep: DomainSweeps = Field(default_factory=default_sweeps, description="Choose top_n and "
                                "multiplier per concept on validation prompts (samples the "
                                "model), per domain; {style: null, object: null}: no sweep, "
                                "top_n and multiplier for all.")

    @model_validator(mode="after")
    def _one_selection(self) -> "ScoreConfig":
        if (self.percentile is None) == (self.top_n is None):
            raise ValueError("set exactly one of percentile and top_n")
        return self
