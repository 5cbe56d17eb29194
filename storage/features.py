"""The feature store: per-concept mean SAE activations, scores and selected features, as data.

Layout (Zarr v3; each domain group opens with `xarray.open_zarr(url, group=domain)`):

    mean_all                      (timestep, feature)   mean over every scored sample
    <domain>/timestep, concept    coordinates           the domains this hook removes
    <domain>/mean                 (concept, timestep, feature)
    <domain>/count                (concept,)
    <domain>/score                (concept, timestep, feature)
    <domain>/selected             (concept, timestep, feature) bool
    <domain>/multiplier           (concept,)            gamma of the intervention
    <domain>/gate                 (concept,)            where its edit applies (stores
                                                        without it: the score config's gate)
    <domain>/detect_at, detect_start  (concept,)        when the 'detect' gate sees the concept
                                                        in a picture (stores without them: the
                                                        intervention's defaults)
    attrs: sae_fingerprint, hook, selection options

The SAE fingerprint (hash of its weights file) ties the store to the SAE it was scored with:
using it with another SAE is refused. Every array carries a checksum (storage.arrays): a damaged
or missing one is a StoreCorruptError naming it, never other numbers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from storage.arrays import read_whole, write_array

DOMAINS = ("style", "object")


def sae_fingerprint(sae_folder: str | Path) -> str:
    return hashlib.sha256((Path(sae_folder) / "sae.safetensors").read_bytes()).hexdigest()


@dataclass
class DomainFeatures:
    concepts: list[str]
    timesteps: list[int]
    mean: np.ndarray
    count: np.ndarray
    score: np.ndarray
    selected: np.ndarray
    multiplier: np.ndarray
    gate: list[str]
    """Per concept, where its edit applies (saeuron.intervention.Gate)."""
    detect_at: np.ndarray | None = None
    """Per concept, the 'detect' gate's cutoff (saeuron.intervention.Detector; None: default)."""
    detect_start: np.ndarray | None = None
    """Per concept, the timestep from which the 'detect' gate checks pictures (None: default)."""

    def index(self, concept: str) -> int:
        if concept not in self.concepts:
            raise ValueError(f"unknown concept {concept!r}; known: {', '.join(self.concepts)}")
        return self.concepts.index(concept)


def write_features(url: str, *, hook: str, sae_fp: str, mean_all: np.ndarray,
                   domains: dict[str, DomainFeatures], attrs: dict[str, Any]) -> None:
    group = zarr.open_group(url, mode="w", zarr_format=3)
    write_array(group, "mean_all", mean_all, ("timestep", "feature"))
    for name, d in domains.items():
        sub = group.create_group(name)
        write_array(sub, "timestep", np.asarray(d.timesteps, np.int64), ("timestep",))
        write_array(sub, "concept", np.asarray(d.concepts, dtype=object), ("concept",))
        dims = ("concept", "timestep", "feature")
        write_array(sub, "mean", d.mean.astype(np.float32), dims)
        write_array(sub, "score", d.score.astype(np.float32), dims)
        write_array(sub, "selected", d.selected.astype(bool), dims)
        write_array(sub, "count", d.count.astype(np.int64), ("concept",))
        write_array(sub, "multiplier", d.multiplier.astype(np.float32), ("concept",))
        write_array(sub, "gate", np.asarray(d.gate, dtype=object), ("concept",))
        if d.detect_at is not None:
            write_array(sub, "detect_at", np.asarray(d.detect_at, np.float32), ("concept",))
        if d.detect_start is not None:
            write_array(sub, "detect_start", np.asarray(d.detect_start, np.int64), ("concept",))
    group.attrs.update({**attrs, "hook": hook})
    group.attrs["sae_fingerprint"] = sae_fp


def read_features(url: str, sae_fp: str | None = None) -> tuple[dict[str, Any], np.ndarray,
                                                                  dict[str, DomainFeatures]]:
    """(attrs, mean_all, {domain: features}); refuses a store scored with another SAE."""
    try:
        group = zarr.open_group(url, mode="r", zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise FileNotFoundError(f"no feature store at {url}") from err
    attrs = group.attrs.asdict()
    if "sae_fingerprint" not in attrs:
        raise ValueError(f"{url} is not a complete feature store")
    if sae_fp is not None and attrs["sae_fingerprint"] != sae_fp:
        raise ValueError(f"the feature store {url} was scored with another SAE (fingerprint "
                         f"{attrs['sae_fingerprint'][:12]}, this SAE is {sae_fp[:12]}); score again")
    way_out = "run the score stage again (the pipeline, or python -m flows.score --force)"

    def read(sub: zarr.Group, name: str) -> np.ndarray | None:
        return read_whole(sub[name], url, way_out) if name in sub else None

    domains = {}
    for name in (d for d in DOMAINS if d in group):
        sub = group[name]
        concepts = [str(c) for c in read(sub, "concept")]
        gate = read(sub, "gate")
        domains[name] = DomainFeatures(
            concepts=concepts, timesteps=[int(t) for t in read(sub, "timestep")],
            mean=read(sub, "mean"), count=read(sub, "count"), score=read(sub, "score"),
            selected=read(sub, "selected"), multiplier=read(sub, "multiplier"),
            gate=([str(g) for g in gate] if gate is not None else
                  [attrs.get("config", {}).get("gate", "mean")] * len(concepts)),
            detect_at=read(sub, "detect_at"), detect_start=read(sub, "detect_start"))
    return attrs, read(group, "mean_all"), domains


def scored_domains(urls: dict[str, str]) -> tuple[dict[str, DomainFeatures], dict[str, str]]:
    """({domain: its features}, {domain: the block that removes it}) of the feature stores of
    each domain (`urls`, as the score stage's outputs name them)."""
    stores = {d: read_features(url) for d, url in urls.items()}
    return {d: stores[d][2][d] for d in urls}, {d: stores[d][0]["hook"] for d in urls}
