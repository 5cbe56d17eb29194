"""Harvest: sample a prompt grid and store the chosen blocks' activations, unit by unit.

Everything that can be wrong with a configuration (unknown block, timestep not in the
schedule, unknown concept, empty grid, missing model) is checked by `prepare` before any
sampling. A write unit (one Zarr chunk of samples) is sampled as one batch, so its values do not
depend on which units ran before it or in which process: a resumed or parallel harvest writes
the same bytes as a serial one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

import saeuron
from saeuron.capture import Capture, resolve_blocks
from saeuron.config import Config
from saeuron.grid import ConceptGrid
from saeuron.world_file import is_world_file
from saeuron.worlds import DEFAULT, GridName, get_grid, is_world, world
from saeuron.diffusion import Pipeline, load_pipeline
from saeuron.sampling import (Precision, SamplingConfig, resolve_precision, sample,
                              schedule_timesteps)
from saeuron.threads import torch_threads
from storage.activations import ActivationStore, StoreSpec
from storage.layout import content_digest
from saeuron.names import SPLIT_SEED_BASE, TEXT_HOOK

"""First seed of each split: splits never share a seed (eval matches MiniCanvas's judge seeds)."""


class HarvestConfig(Config):
    model: str = Field(DEFAULT, description="Pipeline folder, or a world (its model; "
                       "'minicanvas': the shipped MiniCanvas model).")
    grid: GridName = Field(DEFAULT, description="Concept grid: a world's (a registered world, "
                           "or a world file).")
    objects: list[str] | None = Field(None, description="Objects to prompt (default: all).")
    styles: list[str] | None = Field(None, description="Styles to prompt, 'none' for unstyled "
                                     "(default: all and 'none').")
    templates: int | None = Field(None, ge=1, description="Templates per cell (default: all).")
    split: Literal["harvest", "score", "eval"] = Field("harvest", description="Seed range used.")
    n_seeds: int = Field(2, ge=1, le=100_000, description="Seeds per prompt.")
    hooks: list[str] = Field(list(world().hooks.values()), min_length=1,
                             description="UNet blocks to capture, by module path, or 'text': "
                             "the prompt's encoding the UNet reads (default: MiniCanvas's style "
                             "and object hooks).")
    capture: Literal["output", "delta"] = Field("output", description="Block output, or output "
                                                "minus input.")
    num_steps: int | None = Field(None, ge=1, le=1000, description="Sampling steps of the "
                                  "harvest (None: sampling.num_steps; the paper harvests at 50 "
                                  "and evaluates at 100).")
    timesteps: list[int] | None = Field(None, description="Timestep values to keep (default: "
                                        "every step of the schedule).")
    precision: Precision = Field("float32", description="What the UNet computes in: float32 "
                                 "(default: SAEs trained on bfloat16 activations removed styles "
                                 "less well, BENCHMARKS.md), bfloat16 (autocast), or auto.")
    samples_per_chunk: int = Field(32, ge=1, le=4096, description="Samples per chunk = per "
                                   "write unit = per sampling batch.")
    dtype: Literal["float16", "float32"] = Field("float16", description="Stored dtype.")
    codec: Literal["blosc-zstd", "blosc-zstd-bitshuffle", "blosc-lz4", "zstd", "none"] = Field(
        "blosc-zstd-bitshuffle", description="Compressor of the activation chunks "
        "(see BENCHMARKS.md).")
    threads: int = Field(1, ge=1, le=256, description="torch CPU threads per shard. Float "
                         "sums depend on it, so it is part of the configuration: a store is "
                         "bit-identical across resumes and workers at one thread count. Run "
                         "more shards to use more cores.")

    @model_validator(mode="after")
    def _text_has_no_delta(self) -> "HarvestConfig":
        if self.capture == "delta" and TEXT_HOOK in self.hooks:
            raise ValueError(f"capture 'delta' has no meaning at the {TEXT_HOOK!r} hook (the "
                             "UNet's input); capture 'output', or harvest it apart")
        return self

    def model_path(self) -> str:
        return str(world(self.model).model_dir) if is_world(self.model) else self.model

    def concept_grid(self) -> ConceptGrid:
        return get_grid(self.grid)

    def seeds(self) -> list[int]:
        return [SPLIT_SEED_BASE[self.split] + i for i in range(self.n_seeds)]

    def sampling(self, shared: SamplingConfig) -> SamplingConfig:
        """The run's sampling as the harvest does it: its own steps (if set) and precision, one
        write unit per batch."""
        return shared.model_copy(update={"num_steps": self.num_steps or shared.num_steps,
                                         "precision": self.precision,
                                         "batch_size": self.samples_per_chunk})

    def fingerprint(self, shared: SamplingConfig) -> str:
        """What the stored bytes depend on: the options, the sampling (the precision as
        resolved on the device, not the device), the code version, and the model's files
        (weights replaced in place harvest again)."""
        sampling = self.sampling(shared)
        data = self.model_dump()
        data["sampling"] = sampling.model_dump(include={"num_steps", "guidance", "scheduler"})
        data["code"] = saeuron.__version__
        data["model_files"] = content_digest(self.model_path())
        data["precision"] = resolve_precision(sampling.precision, sampling.device)
        if is_world_file(self.grid):  # its prompts, not its path
            data["grid"] = repr(self.concept_grid())
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def split_units(units: list[int], shards: int) -> list[list[int]]:
    """Contiguous, near-equal groups of write units, one per shard (none empty)."""
    return [[int(u) for u in group] for group in np.array_split(units, max(1, shards)) if len(group)]


@dataclass
class Harvest:
    """A checked harvest: the loaded model, the prompt table and the store's shape."""

    cfg: HarvestConfig
    sampling: SamplingConfig
    """The run's sampling as the harvest does it (HarvestConfig.sampling)."""
    pipe: Pipeline
    table: pd.DataFrame
    spec: StoreSpec

    def fingerprint(self) -> str:
        return self.cfg.fingerprint(self.sampling)


def prepare(cfg: HarvestConfig, shared: SamplingConfig = SamplingConfig(),
            pipe: Pipeline | None = None) -> Harvest:
    """Load the model (or take `pipe`, loaded from cfg.model) and check every option against
    it, sampling as `shared` says (with the harvest's own steps and precision); no sampling
    happens here."""
    table = cfg.concept_grid().table(cfg.seeds(), cfg.objects, cfg.styles, cfg.templates)
    sampling = cfg.sampling(shared)
    pipe = pipe or load_pipeline(cfg.model_path(), device=sampling.device)
    blocks = resolve_blocks(pipe.unet, cfg.hooks)
    schedule = schedule_timesteps(pipe, sampling.num_steps, sampling.scheduler)
    if cfg.timesteps is not None:
        bad = [t for t in cfg.timesteps if t not in schedule]
        if bad or not cfg.timesteps:
            raise ValueError(f"timestep(s) {bad or cfg.timesteps} are not in the "
                             f"{sampling.num_steps}-step schedule (scheduler "
                             f"{sampling.scheduler!r}); its timesteps are {schedule}")
    keep = [t for t in schedule if cfg.timesteps is None or t in cfg.timesteps]
    pipe.check_prompts(list(table.prompt.unique()))
    shapes = _block_shapes(pipe, blocks)
    spec = StoreSpec(hooks=shapes, timesteps=keep, samples_per_chunk=cfg.samples_per_chunk,
                     dtype=cfg.dtype)
    return Harvest(cfg=cfg, sampling=sampling, pipe=pipe, table=table, spec=spec)


def _block_shapes(pipe: Pipeline, blocks: dict) -> dict[str, tuple[int, int]]:
    """(positions, features) of each block, from one tiny UNet call."""
    with Capture(pipe.unet, list(blocks), cfg=False) as cap, torch.no_grad():
        latents = torch.zeros((1,) + pipe.latent_shape, device=pipe.device, dtype=pipe.unet.dtype)
        context = pipe.encode_prompts([""])
        pipe.unet(latents, 999, encoder_hidden_states=context)
    _, acts = cap.take()
    return {name: tuple(a.shape[2:]) for name, a in acts.items()}


def open_store(h: Harvest, url: str, force: bool = False) -> ActivationStore:
    """Create the store for this harvest, or reopen it to resume (see ActivationStore.create)."""
    return ActivationStore.create(url, h.spec, h.table, fingerprint=h.fingerprint(),
                                  config={**h.cfg.model_dump(mode="json"),
                                          "sampling": h.sampling.fingerprint()}, force=force,
                                  codec=h.cfg.codec)


def repair_stores(urls: dict[str, str], warn: Callable[[str], None]) -> dict[str, list[int]]:
    """Per split, the damaged units (ActivationStore.damaged_units) of its existing store at
    `urls[split]`, marked unwritten so that the harvest writes them again: the same samples
    give the same values, so nothing downstream changes."""
    damaged = {}
    for split, url in urls.items():
        store = ActivationStore.open_existing(url)
        if store is not None and (units := store.damaged_units()):
            warn(f"{store.url}: write units {units} are damaged (checksum, decoding or a missing "
                 "chunk); harvesting them again")
            store.mark_unwritten(units)
            damaged[split] = units
    return damaged


def harvest_unit(h: Harvest, store: ActivationStore, unit: int) -> int:
    """Sample one write unit with capture on, write it, mark it done; returns its sample count."""
    rows = h.table.iloc[store.unit_samples(unit)]
    with torch_threads(h.cfg.threads), Capture(h.pipe.unet, list(h.spec.hooks), timesteps=h.spec.timesteps,
                 mode=h.cfg.capture) as cap:
        sample(h.pipe, list(rows.prompt), list(rows.seed),
               **(h.sampling.options() | {"batch_size": len(rows)}))
    steps, acts = cap.take()
    if steps != h.spec.timesteps:
        raise RuntimeError(f"captured timesteps {steps} differ from the store's {h.spec.timesteps}")
    store.write_unit(unit, acts)
    return len(rows)


def run_units(h: Harvest, store: ActivationStore, units: list[int],
              progress: Callable[[int, int], None] | None = None) -> int:
    """Write the given units that are not done yet; returns how many were written."""
    done = store.done()
    todo = [u for u in units if not done[u]]
    for i, unit in enumerate(todo, 1):
        harvest_unit(h, store, unit)
        if progress:
            progress(i, len(todo))
    return len(todo)
