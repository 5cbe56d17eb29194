"""Unlearning metrics of the UnlearnCanvas protocol: UA, IRA and CRA.

For target concept(s) C of one domain (style or object), over a grid of images prompted with
every (object, style) cell and judged by a classifier:

- UA, unlearning accuracy: over images prompted with a concept of C, the share NOT classified
  as the concept they were prompted with;
- IRA, in-domain retain accuracy: over images prompted with the domain's other concepts, the
  share classified correctly in that domain;
- CRA, cross-domain retain accuracy: over all images, the share classified correctly in the
  other domain.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from saeuron.config import Config
from saeuron.intervention import Edit, Unlearn
from saeuron.minicanvas.classifier import Judge
from saeuron.harvest import SPLIT_SEED_BASE
from saeuron.minicanvas.data import ALL_STYLES
from saeuron.minicanvas.evaluate import GridResult, sample_grid
from saeuron.minicanvas.render import NO_STYLE, OBJECTS
from saeuron.pipeline import Pipeline
from saeuron.sae import SparseAutoencoder
from storage.features import DomainFeatures

DOMAIN_LABELS = {"style": ALL_STYLES, "object": OBJECTS}


def unlearning_metrics(result: GridResult, domain: str, concepts: list[str]) -> dict[str, float]:
    """UA, IRA and CRA (in [0, 1]) of a judged MiniCanvas grid for targets of one domain."""
    if domain not in DOMAIN_LABELS:
        raise ValueError(f"unknown domain {domain!r}; use 'style' or 'object'")
    labels = DOMAIN_LABELS[domain]
    unknown = [c for c in concepts if c not in labels]
    if unknown or not concepts:
        raise ValueError(f"unknown {domain} target(s) {unknown or concepts}; known: "
                         f"{', '.join(labels)}")
    seeds, n_styles, n_objects = result.style_pred.shape
    true_style = np.broadcast_to(np.arange(n_styles)[None, :, None], result.style_pred.shape)
    true_object = np.broadcast_to(np.arange(n_objects)[None, None, :], result.object_pred.shape)
    truth = {"style": true_style, "object": true_object}
    pred = {"style": result.style_pred, "object": result.object_pred}
    other = "object" if domain == "style" else "style"
    target = np.isin(truth[domain], [labels.index(c) for c in concepts])
    correct = pred[domain] == truth[domain]
    return {"UA": float((~correct[target]).mean()),
            "IRA": float(correct[~target].mean()),
            "CRA": float((pred[other] == truth[other]).mean())}


def concept_edit(mean_all: np.ndarray, domains: dict[str, DomainFeatures], domain: str,
                 concepts: list[str], multiplier: float | None = None) -> Edit:
    """The edit that removes `concepts` of `domain`, from a feature store's contents."""
    d = domains[domain]
    rows = [d.index(c) for c in concepts]
    gammas = [float(d.multiplier[r]) if multiplier is None else multiplier for r in rows]
    return Edit.for_concepts(d.timesteps, d.selected[rows], d.mean[rows], gammas, mean_all)


def unlearned_grid(pipe: Pipeline, judge: Judge, sae: SparseAutoencoder, block: str,
                   edit: Edit | None, seeds: tuple[int, ...], *, num_steps: int,
                   guidance: float, error_sign: int = 1) -> GridResult:
    """Sample and judge the whole objects x styles grid with the edit applied."""
    with Unlearn(pipe.unet, block, sae, edit, error_sign=error_sign):
        return sample_grid(pipe, judge, seeds, num_steps=num_steps, guidance=guidance)


class EvaluateConfig(Config):
    model: str = Field("minicanvas", description="Pipeline folder, or 'minicanvas'.")
    hook: str = Field("up_blocks.1.attentions.1", description="Block edited by the SAE.")
    styles: list[str] | None = Field(None, description="Style targets, one at a time "
                                     "(default: every named style).")
    objects: list[str] | None = Field(None, description="Object targets, one at a time "
                                      "(default: every object).")
    style_sets: list[list[str]] = Field(
        [["sunset", "ocean", "forest", "neon", "pastel"]],
        description="Sets of styles removed together (default: half of MiniCanvas's styles).")
    n_seeds: int = Field(1, ge=1, le=100, description="Evaluation seeds per grid cell.")
    num_steps: int = Field(20, ge=1, le=1000, description="DDIM steps.")
    guidance: float = Field(4.0, ge=1, le=50, description="Classifier-free guidance scale.")
    error_sign: Literal[1, -1] = Field(1, description="1: x + decode(z') - decode(z) (correct); "
                                       "-1: the public reference code's sign.")
    workers: int = Field(2, ge=1, le=64, description="Targets sampled at once (threads, each "
                         "with its own copy of the model).")
    threads: int = Field(1, ge=1, le=256, description="torch threads of the stage, shared by "
                         "its workers (results depend on it slightly; fixed for reproducibility).")

    def targets(self, domains: dict[str, DomainFeatures]) -> list[tuple[str, list[str], str]]:
        """(domain, concepts, name) per target, checked against the feature store's concepts."""
        styles = [s for s in domains["style"].concepts if s != NO_STYLE]
        chosen = [("style", [s], s) for s in (styles if self.styles is None else self.styles)]
        chosen += [("object", [o], o) for o in
                   (domains["object"].concepts if self.objects is None else self.objects)]
        chosen += [("style", list(group), "+".join(group)) for group in self.style_sets]
        for domain, concepts, _ in chosen:
            for concept in concepts:
                domains[domain].index(concept)
        return chosen

    def seeds(self) -> list[int]:
        return [SPLIT_SEED_BASE["eval"] + i for i in range(self.n_seeds)]
