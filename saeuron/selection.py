"""Each domain's chosen features: the score rule's selection, then, for swept domains, the
sweep's per-concept choice of (n, multiplier, gate) on validation pictures."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from queue import Queue
from typing import Callable

import numpy as np

from saeuron.grid import ConceptGrid
from saeuron.intervention import Edit, Gate
from saeuron.judging import GridJudge
from saeuron.names import NO_STYLE, TEXT_HOOK
from saeuron.diffusion import Pipeline
from saeuron.sae import SparseAutoencoder
from saeuron.sampling import SamplingConfig
from saeuron.scoring import ConceptMeans, ScoreConfig, select_features
from saeuron.sweep import sweep_concept
from saeuron.threads import torch_threads
from saeuron.unlearning import concept_edit
from storage.features import DomainFeatures


def select(m: ConceptMeans, config: ScoreConfig, hook: str,
           top_n: int | None = None) -> DomainFeatures:
    """The features of each concept of `hook`'s SAE by the score rule (`top_n` per timestep
    instead of the configured percentile, if given), with the configured multiplier and gate for
    all. At TEXT_HOOK pictures are checked for the concept from the first step: the prompt's
    encoding holds no noise, so detect_start does not apply."""
    scores = m.scores(config.contrast)
    selected = select_features(scores, percentile=None if top_n else config.percentile,
                               top_n=top_n or config.top_n,
                               eligible=m.exclusive() if config.exclusive else None)
    return DomainFeatures(concepts=m.concepts, timesteps=m.timesteps, mean=m.means, count=m.counts,
                          score=scores, selected=selected,
                          multiplier=np.full(len(m.concepts), config.multiplier),
                          gate=[config.gate] * len(m.concepts),
                          detect_at=np.full(len(m.concepts), config.detect_at),
                          detect_start=np.full(len(m.concepts), 1000 if hook == TEXT_HOOK
                                               else config.detect_start))


def sweep_domains(means: dict[str, ConceptMeans], domains: dict[str, DomainFeatures],
                  swept: list[str], mean_all: np.ndarray, sae: SparseAutoencoder, hook: str,
                  config: ScoreConfig, sampling: SamplingConfig, pipes: list[Pipeline],
                  judge: GridJudge,
                  grid: ConceptGrid, log: Callable[[str], None] = print) -> list[dict]:
    """Choose (top_n, multiplier, gate) per concept of the `swept` domains, in place in
    `domains`; the sweep's rows, judged by `judge` on validation cells of `grid`, sampled as
    `sampling` says. Concepts
    are swept in parallel threads, one per copy of the model in `pipes` (one torch thread each)."""
    free: Queue = Queue()
    for pipe in pipes:
        free.put(pipe)
    jobs = []
    for name in swept:
        d, m = domains[name], means[name]
        candidates = {n: select(m, config, hook, top_n=n).selected
                      for n in getattr(config.sweep, name).top_n}
        jobs += [(name, c, candidates) for c, concept in enumerate(d.concepts) if concept != NO_STYLE]

    def sweep_one(job: tuple) -> tuple[int, float, Gate, list[dict]]:
        name, c, candidates = job
        d = domains[name]

        def edit(n: int, gamma: float, gate: Gate) -> Edit:
            return concept_edit(mean_all, domains, name, [d.concepts[c]], multiplier=gamma,
                                gate=gate, selected=candidates[n][[c]])

        pipe = free.get()
        try:
            return sweep_concept(pipe, judge, grid, sae, hook, name, d.concepts[c], edit,
                                 getattr(config.sweep, name), sampling, config.gate)
        finally:
            free.put(pipe)

    rows = []
    with torch_threads(1), ThreadPoolExecutor(len(pipes)) as pool:
        for (name, c, candidates), (n, gamma, gate, mine) in zip(jobs, pool.map(sweep_one, jobs)):
            d = domains[name]
            d.selected[c], d.multiplier[c], d.gate[c] = candidates[n][c], gamma, gate
            rows += mine
            log(f"sweep {name} {d.concepts[c]}: top_n {n}, multiplier {gamma}, gate {gate} "
                f"({max(r['objective'] for r in mine):.3f})")
    return rows
