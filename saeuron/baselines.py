"""The unlearning methods SAeUron is compared with, each behind one interface: a method takes the
base model and a target (concepts of one domain) at a value of its one hyperparameter and gives
an `Unlearned`, something that samples the grid. The benchmark (saeuron.benchmark) chooses each
method's value per target on validation pictures, as SAeUron's sweep does, then runs every one
through the evaluation's metrics.

- negative prompt: the targets' words as the guidance's negative prompt (training-free);
- SLD: Safe Latent Diffusion's safety guidance away from the targets' words (training-free;
  saeuron.sampling.SafetyGuidance);
- UCE: Unified Concept Editing's closed-form edit of every cross-attention key and value
  projection (Gandikota et al. 2024): the targets' token embeddings project where the guide's
  (the empty prompt's) do, every other concept's where they did;
- ESD-x: the cross-attention fine-tuned against the negatively guided score of the concept's
  name (saeuron.esd), as ESD prompts with the concept alone.
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, ContextManager, Literal, Union

import numpy as np
import torch
from pydantic import Field, model_validator

from saeuron.config import Config
from saeuron.diffusion import Pipeline
from saeuron.esd import ESDConfig, apply_esd, train_esd, training_seconds
from saeuron.grid import ConceptGrid
from saeuron.names import NO_STYLE
from saeuron.sampling import SafetyGuidance, sample


@dataclass
class Unlearned:
    """A model with concepts unlearned: the pipeline it samples, the options it samples with,
    and a context around its sampling (an SAE edit's hook)."""

    pipe: Pipeline
    options: dict = field(default_factory=dict)
    """Extra keyword options of saeuron.sampling.sample (negative, safety)."""
    hooks: Callable[[], ContextManager] | None = None
    added_bytes: int = 0
    """Storage the method adds to the base model (changed weights, or an SAE and its selection)."""
    reused_seconds: float = 0.0
    """Work of an earlier run found on disk and reused (ESD-x's training): part of the time to
    unlearn, though this call did not spend it."""

    def sample(self, prompts: list[str], seeds: list[int], **sampling) -> np.ndarray:
        with self.hooks() if self.hooks else nullcontext():
            return sample(self.pipe, list(prompts), list(seeds), **sampling, **self.options)


def words(concepts: list[str]) -> str:
    """The targets' words as one text ('sketch', 'sunset, ocean'): what the prompt-level
    methods steer away from."""
    return ", ".join(c.replace("_", " ") for c in concepts)


class NegativePrompt(Config):
    kind: Literal["negative-prompt"] = Field("negative-prompt", description="The method.")

    @property
    def name(self) -> str:
        return "negative prompt"

    def choices(self) -> list[float]:
        return [0.0]

    def unlearn(self, pipe: Pipeline, grid: ConceptGrid, domain: str, concepts: list[str],
                value: float, workdir: Path) -> Unlearned:
        return Unlearned(pipe, {"negative": words(concepts)})


class SafeGuidance(Config):
    kind: Literal["sld"] = Field("sld", description="The method.")
    scales: list[float] = Field([200.0, 1000.0, 2000.0, 5000.0], min_length=1,
                                description="Safety guidance scales tried on validation "
                                "pictures (Safe Latent Diffusion's weak, medium, strong and max "
                                "settings).")
    warmup: int = Field(0, ge=0, le=1000, description="Steps before the safety term applies "
                        "(the reference's max setting: 0; medium: 10 of 50 steps).")
    threshold: float = Field(1.0, ge=-10, le=10, description="The term acts where the "
                             "prompt's prediction exceeds the concept's by less than this (the "
                             "reference's max setting: 1.0; medium 0.01, which removes no "
                             "MiniCanvas style).")
    momentum_scale: float = Field(0.5, ge=0, le=10, description="Weight of the momentum term "
                                  "(max setting 0.5, medium 0.3).")
    momentum_beta: float = Field(0.7, ge=0, le=1, description="Decay of the momentum (max "
                                 "setting 0.7, medium 0.4).")

    @property
    def name(self) -> str:
        return "SLD"

    def choices(self) -> list[float]:
        return list(self.scales)

    def unlearn(self, pipe: Pipeline, grid: ConceptGrid, domain: str, concepts: list[str],
                value: float, workdir: Path) -> Unlearned:
        return Unlearned(pipe, {"safety": SafetyGuidance(
            words(concepts), scale=value, warmup=self.warmup, threshold=self.threshold,
            momentum_scale=self.momentum_scale, momentum_beta=self.momentum_beta)})


def key_value_projections(unet: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """Every cross-attention block's key and value projection: the maps from the prompt's
    tokens into the UNet."""
    return {name: m for name, m in unet.named_modules()
            if name.endswith(("attn2.to_k", "attn2.to_v")) and isinstance(m, torch.nn.Linear)}


def concept_tokens(pipe: Pipeline, text: str) -> torch.Tensor:
    """(T, D) embeddings of `text` as the prompt encoder gives them, from its last word token
    to the end of the sequence (the word, the end token and the padding, which carry the
    prompt's context into cross-attention)."""
    emb = pipe.encode_prompts([text])[0]
    length = int(sum(pipe.tokenizer([text], padding="max_length", truncation=True,
                                    max_length=pipe.tokenizer.model_max_length)
                     .attention_mask[0]))
    return emb[max(length - 2, 0):]


class UCE(Config):
    kind: Literal["uce"] = Field("uce", description="The method.")
    preserve_scales: list[float] = Field([0.1, 1.0, 10.0], min_length=1, description="Weights "
                                         "of the preserved concepts' projections tried on "
                                         "validation pictures.")
    erase_scale: float = Field(1.0, gt=0, le=1000, description="Weight of the targets' "
                               "projections onto the guide's.")
    lamb: float = Field(0.1, gt=0, le=1000, description="Pull towards the original weights "
                        "(UCE's lambda).")
    guide: str = Field("", description="Text whose projections the targets take (the empty "
                       "prompt: nothing in their place).")

    @property
    def name(self) -> str:
        return "UCE"

    def choices(self) -> list[float]:
        return list(self.preserve_scales)

    def edit(self, unet: torch.nn.Module, erase: list[tuple[torch.Tensor, torch.Tensor]],
             preserve: torch.Tensor, preserve_scale: float) -> int:
        """UCE's closed form in place on every key and value projection W of `unet`:

            W' = (l W + e sum_i W g_i c_i^T + p sum_j W c_j c_j^T)
                 (l I + e sum_i c_i c_i^T + p sum_j c_j c_j^T)^-1

        for erased tokens c_i with guides g_i (`erase`: (tokens, guide tokens) pairs) and
        preserved tokens c_j (rows of `preserve`); returns the bytes changed."""
        changed = 0
        with torch.no_grad():
            for layer in key_value_projections(unet).values():
                w = layer.weight.double()
                lhs = self.lamb * w
                rhs = self.lamb * torch.eye(w.shape[1], dtype=w.dtype)
                for old, new in erase:
                    old, new = old.double(), new.double()
                    lhs += self.erase_scale * w @ new.T @ old
                    rhs += self.erase_scale * old.T @ old
                p = preserve.double()
                lhs += preserve_scale * w @ p.T @ p
                rhs += preserve_scale * p.T @ p
                layer.weight.copy_(torch.linalg.solve(rhs, lhs.T).T.to(layer.weight.dtype))
                changed += layer.weight.numel() * layer.weight.element_size()
        return changed

    def unlearn(self, pipe: Pipeline, grid: ConceptGrid, domain: str, concepts: list[str],
                value: float, workdir: Path) -> Unlearned:
        guide = concept_tokens(pipe, self.guide)
        erase = []
        for c in concepts:
            tokens = concept_tokens(pipe, words([c]))
            erase.append((tokens, guide[:len(tokens)]))
        kept = [c for c in grid.objects + grid.styles if c not in concepts]
        preserve = torch.cat([concept_tokens(pipe, words([c])) for c in kept])
        unet = copy.deepcopy(pipe.unet)
        changed = self.edit(unet, erase, preserve, value)
        return Unlearned(dataclasses.replace(pipe, unet=unet), added_bytes=changed)


class ESDX(Config):
    kind: Literal["esd-x"] = Field("esd-x", description="The method.")
    train: ESDConfig = Field(default_factory=ESDConfig, description="The fine-tuning.")
    checkpoints: list[int] = Field([25, 50, 100, 150], min_length=1, description="Training steps "
                                   "tried on validation pictures (snapshots of one run of "
                                   "train.steps, which must be the last).")

    @model_validator(mode="after")
    def _within_training(self) -> "ESDX":
        if max(self.checkpoints) > self.train.steps:
            raise ValueError(f"checkpoints {self.checkpoints} go beyond the {self.train.steps} "
                             "training steps (train.steps)")
        return self

    @property
    def name(self) -> str:
        return "ESD-x"

    def choices(self) -> list[float]:
        return [float(s) for s in sorted(self.checkpoints)]

    def unlearn(self, pipe: Pipeline, grid: ConceptGrid, domain: str, concepts: list[str],
                value: float, workdir: Path) -> Unlearned:
        reused = training_seconds(workdir)
        weights = train_esd(pipe, [words([c]) for c in concepts], self.train, workdir,
                            snapshots=self.checkpoints)[int(value)]
        return Unlearned(apply_esd(pipe, weights),
                         added_bytes=sum(t.numel() * t.element_size() for t in weights.values()),
                         reused_seconds=reused)


MethodSpec = Annotated[Union[NegativePrompt, SafeGuidance, UCE, ESDX], Field(discriminator="kind")]
"""One baseline's options, by `kind`."""


def default_methods() -> list:
    return [NegativePrompt(), SafeGuidance(), UCE(), ESDX()]
