"""Unlearning a target on the evaluation grid: its edit from a feature store, the judged grid
with and without it, and its row of metrics (saeuron.metrics defines them)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from saeuron.config import Config
from saeuron.edited import Unedited, sample_edited, sample_unedited
from saeuron.grid import ConceptGrid
from saeuron.names import NO_STYLE, SPLIT_SEED_BASE
from saeuron.intervention import Edit, Gate, gate_thresholds
from saeuron.judging import GridJudge, GridResult, grid_table, judge_grid
from saeuron.diffusion import Pipeline
from saeuron.sae import SparseAutoencoder
from saeuron.sweep import ValidationConfig
from saeuron.worlds import DEFAULT, WORLDS, GridName, world
from storage.features import DomainFeatures


def concept_edit(mean_all: np.ndarray, domains: dict[str, DomainFeatures], domain: str,
                 concepts: list[str], multiplier: float | None = None,
                 scale: float = 1.0, gate: Gate | None = None,
                 selected: np.ndarray | None = None) -> Edit:
    """The edit that removes `concepts` of `domain`, from a feature store's contents (each
    concept's multiplier, or `multiplier` for all, times `scale`), gated by `gate`, or with None
    by each concept's own gate (the store's, as are its detection options); concepts whose own
    gates differ are detected where theirs is 'detect' and edited everywhere by the paper's rule
    where it is not.
    `selected` ((concept, timestep, feature)) replaces the store's selection, as the sweep's
    candidates do."""
    d = domains[domain]
    rows = [d.index(c) for c in concepts]
    gammas = [scale * (float(d.multiplier[r]) if multiplier is None else multiplier)
              for r in rows]
    chosen = d.selected[rows] if selected is None else selected
    own = [d.gate[r] for r in rows]
    mixed = gate is None and len(set(own)) > 1
    gate = "detect" if mixed else (gate or own[0])
    detection = {k: v[rows] for k, v in (("detect_at", d.detect_at),
                                          ("detect_start", d.detect_start)) if v is not None}
    return Edit.for_concepts(d.timesteps, chosen, d.mean[rows], gammas,
                             *gate_thresholds(gate, mean_all, d.mean, rows),
                             everywhere=[g != "detect" for g in own] if mixed else None,
                             **detection)


def unlearned_grid(pipe: Pipeline, judge: GridJudge, sae: SparseAutoencoder, block: str,
                   edit: Edit | None, seeds: tuple[int, ...], *, grid: ConceptGrid,
                   error_sign: int = 1, unedited: Unedited | None = None,
                   **sampling) -> GridResult:
    """Sample and judge the whole objects x styles grid (default MiniCanvas's) with the edit
    applied; given the grid's `unedited` run (unedited_grid, same options), only the pictures
    the edit touches are sampled (saeuron.edited). `sampling`: SamplingConfig.options()."""
    grid, table = grid_table(judge, seeds, grid)
    images = sample_edited(pipe, block, sae, edit, list(table.prompt), list(table.seed),
                           unedited=unedited, error_sign=error_sign, **sampling)
    return judge_grid(judge, images, table, grid, len(seeds))


def unedited_grid(pipes: list[Pipeline], judge: GridJudge, saes: dict[str, SparseAutoencoder],
                  seeds: tuple[int, ...], *, grid: ConceptGrid,
                  **sampling) -> tuple[GridResult, Unedited]:
    """The judged grid without edit, and its run with the latents of each block of `saes`
    recorded, for the targets' unlearned_grid. The grid is split into one consecutive part per
    copy of the model in `pipes`, sampled in parallel threads (one torch thread each: the
    caller's setting)."""
    grid, table = grid_table(judge, seeds, grid)
    parts = np.array_split(np.arange(len(table)), len(pipes))

    def part(i: int) -> Unedited:
        rows = table.iloc[parts[i]]
        return sample_unedited(pipes[i], saes, list(rows.prompt), list(rows.seed), **sampling)

    with ThreadPoolExecutor(len(pipes)) as pool:
        unedited = Unedited.concat(list(pool.map(part, range(len(pipes)))))
    return judge_grid(judge, unedited.images, table, grid, len(seeds)), unedited


def reference_features(judge: GridJudge, grid: ConceptGrid, seeds: tuple[int, ...],
                       unedited: GridResult) -> np.ndarray:
    """The judge's features (N, d) of what the grid's cells should look like, in the grid's
    picture order: renders of the cells where the grid's world renders them (MiniCanvas), else
    the unedited grid's own pictures (their distance to themselves, 0, is then the floor)."""
    render = world(grid.name).render if grid.name in WORLDS else None
    if render is None:
        return unedited.judged().features
    _, table = grid_table(judge, seeds, grid)
    return judge.embed(render(list(table["object"]), list(table["style"]), list(table["seed"])))


class EvaluateConfig(Config):
    model: str = Field(DEFAULT, description="Pipeline folder, or a world (its model).")
    grid: GridName = Field(DEFAULT, description="World whose grid is sampled, and judged by its "
                           "judge: the harvest's.")
    styles: list[str] | None = Field(None, description="Style targets, one at a time "
                                     "(default: every named style).")
    objects: list[str] | None = Field(None, description="Object targets, one at a time "
                                      "(default: every object).")
    style_sets: list[list[str]] = Field(
        [["sunset", "ocean", "forest", "neon", "pastel"]],
        description="Sets of styles removed together (default: half of MiniCanvas's styles).")
    set_scales: list[float] = Field(
        [1.0], min_length=1, description="Scales of a set's multipliers tried on validation "
        "prompts of the evaluation's grid before the set is evaluated (the set's own sweep, "
        "(UA + IRA) / 2). [1.0]: each concept's own multiplier, as the paper.")
    set_gate: Gate | None = Field(None, description="Where a set's edit applies: None, each "
                                  "concept's own gate (the one its features were chosen with: "
                                  "score.gate or the sweep's fallback, as for single targets); "
                                  "'mean' (the paper), 'others' (where a latent exceeds the "
                                  "largest mean of the concepts outside the set), 'detect' "
                                  "(each concept only where it is detected; see score.gate).")
    set_sweep: ValidationConfig = Field(default_factory=lambda: ValidationConfig(own=10,
                                                                                 others=10),
                                        description="Validation cells of the set sweep.")
    n_seeds: int = Field(3, ge=1, le=100, description="Evaluation seeds per grid cell, from "
                         "1,000,000 (the evaluation split; MiniCanvas's judge seeds).")
    seed_list: list[int] | None = Field(None, min_length=1, description="Or exactly these "
                                        "evaluation seeds (UnlearnCanvas's protocol: [188, 288, "
                                        "588, 688, 888]); none may be a seed of the harvest or "
                                        "scoring split.")
    error_sign: Literal[1, 0, -1] = Field(1, description="1: x + decode(z') - decode(z) "
                                          "(correct); -1: the public reference code's sign; "
                                          "0: decode(z') alone, the SAE's error term dropped "
                                          "(a probe: every picture changes).")
    workers: int = Field(2, ge=1, le=64, description="Targets sampled at once (threads, each "
                         "with its own copy of the model).")
    threads: int = Field(1, ge=1, le=256, description="torch threads of the stage, shared by "
                         "its workers (results depend on it slightly; fixed for reproducibility).")

    @field_validator("set_scales")
    @classmethod
    def _scales(cls, values: list[float]) -> list[float]:
        if min(values) <= 0:
            raise ValueError(f"set_scales must be positive (they scale negative multipliers), "
                             f"got {values}")
        return sorted(set(values), reverse=True)

    @field_validator("seed_list")
    @classmethod
    def _distinct_seeds(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and (len(set(values)) < len(values) or min(values) < 0):
            raise ValueError(f"seed_list must hold distinct seeds >= 0, got {values}")
        return values

    def concept_grid(self) -> ConceptGrid:
        return world(self.grid).grid()

    def judge(self, device: str = "cpu") -> GridJudge:
        return world(self.grid).judge(device)

    def targets(self, domains: dict[str, DomainFeatures],
                grid: ConceptGrid) -> list[tuple[str, list[str], str]]:
        """(domain, concepts, name) per target, checked against the feature store's concepts and
        the evaluation grid's; by default every concept both hold."""
        judged = {"style": grid.styles, "object": grid.objects}
        styles = [s for s in domains["style"].concepts if s != NO_STYLE and s in judged["style"]]
        objects = [o for o in domains["object"].concepts if o in judged["object"]]
        chosen = [("style", [s], s) for s in (styles if self.styles is None else self.styles)]
        chosen += [("object", [o], o) for o in (objects if self.objects is None else self.objects)]
        chosen += [("style", list(group), "+".join(group)) for group in self.style_sets]
        for domain, concepts, _ in chosen:
            for concept in concepts:
                domains[domain].index(concept)
            grid.check(**{f"{domain}s": concepts})
        return chosen

    def seeds(self) -> list[int]:
        if self.seed_list is not None:
            return list(self.seed_list)
        return [SPLIT_SEED_BASE["eval"] + i for i in range(self.n_seeds)]
