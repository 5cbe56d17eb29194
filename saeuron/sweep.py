"""Per-concept choice of (features per timestep, multiplier) on validation prompts.

As the paper does for objects: for each target concept, every candidate selection size n and
multiplier gamma is tried on a validation set of grid cells (the concept's own cells, and a
fixed sample of the domain's other cells), sampled with seeds of the validation split, and the
pair maximising (UA + IRA) / 2 is kept (ties: the smaller n, then the weaker multiplier, or
with `prefer: stronger` the reverse).
The choice sits on a steep edge (a weak edit leaves the concept, a strong one erases the
picture), and a dozen validation pictures place it roughly, so the best `finalists` candidates
are judged again on `finalist_seeds` further validation seeds and chosen on every picture they
were judged on (successive halving; an addition to the paper). Candidates are judged in order
of preference, and the sweep stops once its choice is known (`stop_at_perfect`): at the first
that gets every picture right, finalist seeds included, or once `finalists` candidates got every
picture of their first judgement right (they are the finalists); the choice is the full sweep's.
`objective: ua_ira_cra` adds CRA, (UA + IRA + CRA) / 3, for edits that must spare the other
domain too (an addition to the paper). Where no candidate removes the concept under the
configured gate, the candidates are judged under `fallback_gate` too, and the concept keeps the
gate of its best candidate (with 'detect': concepts set at the first steps, before pictures
can be checked). A set of concepts removed at once gets its own, smaller
sweep: one scale of all its concepts' multipliers (`sweep_set`), since the union of edits
chosen one concept at a time is far stronger than each (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from pydantic import Field, field_validator

from saeuron.config import Config
from saeuron.edited import Unedited, sample_edited_each, sample_unedited
from saeuron.grid import ConceptGrid
from saeuron.intervention import Edit, Gate
from saeuron.judging import GridJudge, predict_in
from saeuron.metrics import METRICS, Judged, counts, pooled, rates
from saeuron.names import NO_STYLE, SPLIT_SEED_BASE
from saeuron.diffusion import Pipeline
from saeuron.sae import SparseAutoencoder
from saeuron.sampling import SamplingConfig

Metric = Literal["UA", "IRA", "CRA", "kept", "CRA_grid"]
"""A name of saeuron.metrics.METRICS."""
VAL_SEED_BASE = SPLIT_SEED_BASE["val"]
"""First seed of the validation split (saeuron.names)."""


class ValidationConfig(Config):
    """Which validation pictures judge an edit, and how a choice is made from them."""

    n_seeds: int = Field(1, ge=1, le=100, description="Validation seeds per cell.")
    own: int = Field(6, ge=1, le=11, description="Cells of the concept judged per seed, for UA.")
    others: int = Field(6, ge=1, le=110, description="Cells of the domain's other concepts "
                        "judged per seed, for IRA.")
    objective: list[Metric] = Field(
        ["UA", "IRA"], min_length=1, description="The metrics (saeuron.metrics) whose mean is "
        "maximised: UA and IRA as the paper; add CRA_grid (the other domain on every picture) "
        "or kept (the other domain on the target's own pictures) for edits that must spare the "
        "other domain.")
    finalists: int = Field(3, ge=0, le=100, description="Best candidates judged again on "
                           "finalist_seeds more validation seeds, then chosen on all their "
                           "pictures (0: choose on the first judgement).")
    finalist_seeds: int = Field(1, ge=1, le=100, description="Validation seeds of the finalists' "
                                "second judgement (after the first n_seeds).")

    @field_validator("objective")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        return [m for m in METRICS if m in values]


class SweepConfig(ValidationConfig):
    """A domain's per-concept sweep: the candidates, and the order and stop of their judging."""

    top_n: list[int] = Field([1, 3, 10], min_length=1, description="Candidate features per "
                             "timestep.")
    multipliers: list[float] = Field([-3.0, -10.0, -30.0], min_length=1,
                                     description="Candidate gammas (negative; 0: set the features to zero).")
    prefer: Literal["weaker", "stronger"] = Field(
        "weaker", description="Which of two candidates with the same objective is kept: the "
        "'weaker' (smaller n, then weaker multiplier; the edit that changes least) or the "
        "'stronger' (larger n, then stronger multiplier; the edit farthest from the edge where "
        "the concept comes back on unseen seeds).")
    stop_at_perfect: bool = Field(True, description="Judge candidates in order of preference "
                                  "(`prefer`) and stop once the choice "
                                  "is known: at one that gets every validation picture right, "
                                  "its finalist judgement included, or once `finalists` "
                                  "candidates got every first-judgement picture right. The "
                                  "choice is the full sweep's; only time is saved. False: judge "
                                  "every candidate (the sweep's rows then map the whole grid).")
    fallback_gate: Gate | None = Field(
        "mean", description="Gate whose candidates are judged too when none under score.gate "
        "reaches fallback_below validation UA (a concept that gate cannot remove: with "
        "'detect', one already set at the first, noisiest steps); the best of both is kept, "
        "and the concept's gate is stored with its selection. None: never.")
    fallback_below: float = Field(0.75, ge=0, le=1, description="Validation UA below which the "
                                  "fallback gate is tried.")

    def preference(self, n: int, gamma: float) -> tuple:
        """Ranks candidates of equal objective (higher: preferred)."""
        return (-n, gamma) if self.prefer == "weaker" else (n, -gamma)

    def candidates(self) -> list[tuple[int, float]]:
        """(n, gamma) of every candidate, the preferred first."""
        pairs = [(n, g) for n in self.top_n for g in self.multipliers]
        return sorted(pairs, key=lambda p: self.preference(*p), reverse=True)

    @field_validator("top_n")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if min(values) < 1:
            raise ValueError(f"top_n candidates must be >= 1, got {values}")
        return sorted(set(values))

    @field_validator("multipliers")
    @classmethod
    def _negative(cls, values: list[float]) -> list[float]:
        if max(values) > 0:
            raise ValueError(f"multipliers must be negative, or 0 to set the features to zero "
                             f"(they remove a concept), got {values}")
        return sorted(set(values), reverse=True)


@dataclass
class ValidationCells:
    grid: ConceptGrid
    prompts: list[str]
    seeds: list[int]
    styles: np.ndarray
    """Index of the prompted style in the grid's styles ('none' last), per image."""
    objects: np.ndarray
    """Index of the prompted object in the grid's objects, per image."""


def validation_cells(grid: ConceptGrid, domain: str, concepts: list[str], cfg: ValidationConfig,
                     finalists: bool = False) -> ValidationCells:
    """Fixed samples of the concepts' cells of `grid` and of the other concepts' cells, per
    validation seed (the first n_seeds, or with `finalists` the finalist_seeds after them)."""
    styles = grid.styles + (NO_STYLE,)
    labels = styles if domain == "style" else grid.objects
    position = 1 if domain == "style" else 0
    every = [(o, s) for s in styles for o in grid.objects]
    grid.check(**{f"{domain}s": concepts})
    mine = [c for c in every if c[position] in concepts]
    rest = [c for c in every if c[position] not in concepts]
    rng = np.random.default_rng([VAL_SEED_BASE, *(labels.index(c) for c in concepts)])
    own = [mine[i] for i in sorted(rng.choice(len(mine), min(cfg.own, len(mine)), replace=False))]
    chosen = [rest[i] for i in sorted(rng.choice(len(rest), min(cfg.others, len(rest)), replace=False))]
    first = VAL_SEED_BASE + (cfg.n_seeds if finalists else 0)
    pictures = [(obj, style, seed)
                for seed in range(first, first + (cfg.finalist_seeds if finalists else cfg.n_seeds))
                for obj, style in own + chosen]
    return ValidationCells(grid, [grid.prompt(o, s) for o, s, _ in pictures],
                           [p[2] for p in pictures],
                           np.array([styles.index(s) for _, s, _ in pictures]),
                           np.array([grid.objects.index(o) for o, _, _ in pictures]))


def judge_candidates(pipe: Pipeline, judge: GridJudge, sae: SparseAutoencoder, hook: str,
                     domain: str, concepts: list[str], edits: list[Edit], val: ValidationCells,
                     cfg: ValidationConfig, sampling: SamplingConfig,
                     unedited: Unedited | None = None) -> list[dict]:
    """The metrics (saeuron.metrics), the objective and the number of pictures of each edit on
    validation cells, their pictures sampled together (given the cells' `unedited` run, only
    the pictures each edit touches)."""
    return [judged_metrics(judge, images, val, domain, concepts, cfg)
            for images in sample_edited_each(pipe, hook, sae, edits, val.prompts, val.seeds,
                                             unedited=unedited, **sampling.options())]


def judged_metrics(judge: GridJudge, images: np.ndarray, val: ValidationCells, domain: str,
                   concepts: list[str], cfg: ValidationConfig) -> dict:
    """The metrics and objective of the validation cells' pictures `images` (in their order)."""
    style, obj = predict_in(judge, images, val.grid)
    judged = Judged(val.styles, val.objects, style, obj, val.grid.styles + (NO_STYLE,),
                    val.grid.objects)
    return _metrics(counts(judged, domain, concepts), cfg)


def _metrics(counted: dict[str, list[int]], cfg: ValidationConfig) -> dict:
    """A row's metrics from its counts (kept in the row, so that two judgements can be pooled);
    the objective averages the terms its cells count (the sweep's few cells of other concepts
    may hold no unstyled picture, which CRA of a style counts)."""
    shares = rates(counted)
    terms = [shares[m] for m in cfg.objective if counted[m][1]]
    return {**{m: round(v, 4) if counted[m][1] else None for m, v in shares.items()},
            "objective": round(float(np.mean(terms)), 4),
            "images": counted["CRA_grid"][1], "counts": counted}


def _pooled(row: dict, more: dict, cfg: ValidationConfig) -> dict:
    """A row's metrics over its first judgement and a second one (`more`)."""
    return _metrics(pooled(row["counts"], more["counts"]), cfg)


def _perfect(metrics: dict, cfg: ValidationConfig) -> bool:
    """Every picture right, for what the objective counts: nothing can score higher."""
    return all(metrics["counts"][m][0] == metrics["counts"][m][1] for m in cfg.objective)


def _finals(rows: list[dict], judge_again: Callable[[list[dict], ValidationCells], list[dict]],
            rank: Callable[[dict], tuple], grid: ConceptGrid, domain: str, concepts: list[str],
            cfg: ValidationConfig) -> dict:
    """The best row, after the `finalists` best are judged again on further seeds and their
    judgements pooled (in place: those rows then hold the pooled metrics, `finalist: True`)."""
    if cfg.finalists:
        val = validation_cells(grid, domain, concepts, cfg, finalists=True)
        finals = sorted(rows, key=rank, reverse=True)[:cfg.finalists]
        for row, more in zip(finals, judge_again(finals, val)):
            row.update(_pooled(row, more, cfg), finalist=True)
        rows = finals
    return max(rows, key=rank)


def sweep_concept(pipe: Pipeline, judge: GridJudge, grid: ConceptGrid, sae: SparseAutoencoder,
                  hook: str, domain: str, concept: str, edits: Callable[[int, float, Gate], Edit],
                  cfg: SweepConfig, sampling: SamplingConfig,
                  gate: Gate = "mean") -> tuple[int, float, Gate, list[dict]]:
    """(best n, best multiplier, its gate, one row per candidate judged) for one concept of
    `grid`, judged by `judge`;
    `edits(n, gamma, gate)` gives the edit of the candidate. The candidates are judged under
    `gate` in order of preference (with cfg.stop_at_perfect, until one is perfect), and also
    under cfg.fallback_gate if none of them reaches cfg.fallback_below UA."""
    val = validation_cells(grid, domain, [concept], cfg)
    finalist_cells = validation_cells(grid, domain, [concept], cfg, finalists=True)
    again: dict[tuple, dict] = {}
    unedited: dict[tuple, Unedited] = {}

    def judged_on(candidates: list[Edit], cells: ValidationCells) -> list[dict]:
        """The candidates' judgements, their pictures sampled together; detecting edits' from
        the cells' unedited run (sampled once), sampling only the pictures they touch."""
        if not sampling.reuse_unedited or all(e.detector is None for e in candidates):
            return judge_candidates(pipe, judge, sae, hook, domain, [concept], candidates,
                                    cells, cfg, sampling)
        key = tuple(zip(cells.prompts, cells.seeds))
        if key not in unedited:
            unedited[key] = sample_unedited(pipe, {hook: sae}, cells.prompts, cells.seeds,
                                            **sampling.options())
        return judge_candidates(pipe, judge, sae, hook, domain, [concept], candidates, cells,
                                cfg, sampling, unedited[key])

    def judge_again(rows: list[dict], cells: ValidationCells) -> list[dict]:
        keys = [(r["top_n"], r["multiplier"], r["gate"]) for r in rows]
        new = [k for k in dict.fromkeys(keys) if k not in again]
        if new:
            again.update(zip(new, judged_on([edits(*k) for k in new], cells)))
        return [again[k] for k in keys]

    def confirmed(row: dict) -> bool:
        """Perfect on the finalist seeds too (then pooled into the row, as a finalist)."""
        if not cfg.finalists:
            return True
        pooled = _pooled(row, judge_again([row], finalist_cells)[0], cfg)
        perfect = _perfect(pooled, cfg)
        if perfect:
            row.update(pooled, finalist=True)
        return perfect

    def judged(g: Gate) -> tuple[list[dict], dict | None]:
        """The rows of the candidates judged under `g`, and the perfect one that ended them.
        Candidates perfect on their first judgement outrank all others, in this order, so the
        first `finalists` of them are the full sweep's finalists: one that stays perfect on
        the finalist seeds is its choice, and once there are `finalists` of them no later
        candidate can be a finalist. They are sampled in chunks of 1, 2, 4, ... candidates
        (all at once without stop_at_perfect) and read in order, so the rows and the choice
        are those of judging one at a time; a chunk's candidates after the stop are unused."""
        rows, perfect_first, todo, size = [], 0, cfg.candidates(), 1
        while todo:
            chunk, todo = (todo[:size], todo[size:]) if cfg.stop_at_perfect else (todo, [])
            size *= 2
            for (n, gamma), metrics in zip(chunk, judged_on([edits(n, gamma, g)
                                                             for n, gamma in chunk], val)):
                row = {"domain": domain, "concept": concept, "gate": g, "top_n": n,
                       "multiplier": gamma, **metrics}
                rows.append(row)
                if cfg.stop_at_perfect and _perfect(row, cfg):
                    perfect_first += 1
                    if confirmed(row):
                        return rows, row
                    if perfect_first == cfg.finalists:
                        return rows, None
        return rows, None

    rows, perfect = judged(gate)
    if (perfect is None and cfg.fallback_gate not in (None, gate)
            and max(r["UA"] for r in rows) < cfg.fallback_below):
        fallback, perfect = judged(cfg.fallback_gate)
        rows += fallback
    if perfect is not None:
        for row in rows:  # candidates that were perfect until their finalist judgement
            key = (row["top_n"], row["multiplier"], row["gate"])
            if key in again and not row.get("finalist"):
                row.update(_pooled(row, again[key], cfg), finalist=True)
        return perfect["top_n"], perfect["multiplier"], perfect["gate"], rows
    best = _finals(rows, judge_again,
                   lambda r: (r["objective"], r["gate"] == gate,
                              *cfg.preference(r["top_n"], r["multiplier"])),
                   grid, domain, [concept], cfg)
    return best["top_n"], best["multiplier"], best["gate"], rows


def choose(values: list[float], judged: Callable[[list[float], ValidationCells], list[dict]],
           grid: ConceptGrid, domain: str, concepts: list[str],
           cfg: ValidationConfig) -> tuple[float, list[dict]]:
    """(best value, one row per value) of a one-parameter choice on validation cells:
    `judged(values, cells)` gives each value's metrics (judged_metrics); the best `finalists`
    are judged again on further seeds before the choice. Ties: the earlier value."""
    rows = [{"value": v, **m}
            for v, m in zip(values, judged(values, validation_cells(grid, domain, concepts, cfg)))]
    best = _finals(rows, lambda finals, cells: judged([r["value"] for r in finals], cells),
                   lambda r: (r["objective"], -values.index(r["value"])), grid, domain, concepts,
                   cfg)
    return best["value"], rows


def sweep_set(pipe: Pipeline, judge: GridJudge, grid: ConceptGrid, sae: SparseAutoencoder,
              hook: str, domain: str, concepts: list[str], edits: Callable[[float], Edit],
              scales: list[float], cfg: ValidationConfig,
              sampling: SamplingConfig) -> tuple[float, list[dict]]:
    """(best scale, one row per scale) for a set removed at once; `edits(scale)` is the set's
    edit with every multiplier scaled. Ties: the larger scale (the concepts' own choice)."""
    scales = sorted(scales, reverse=True)
    best, rows = choose(scales, lambda values, cells: judge_candidates(
        pipe, judge, sae, hook, domain, concepts, [edits(v) for v in values], cells, cfg,
        sampling), grid, domain, concepts, cfg)
    return best, [{"domain": domain, "concepts": "+".join(concepts), "scale": r.pop("value"), **r}
                  for r in rows]
