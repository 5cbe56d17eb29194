"""Scoring task: SAE features per concept, from a held-out activation store, into a feature store."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue

import numpy as np
from prefect import get_run_logger, task

from saeuron.intervention import Edit
from saeuron.minicanvas import JUDGE_DIR
from saeuron.minicanvas.classifier import Judge
from saeuron.pipeline import load_pipeline
from saeuron.sae import SparseAutoencoder
from saeuron.sweep import sweep_concept
from saeuron.threads import torch_threads
from saeuron.scoring import ConceptMeans, ScoreConfig, concept_means, select_features
from storage.activations import ActivationStore
from storage.features import DomainFeatures, sae_fingerprint, write_features


@task(name="score-features", task_run_name="score-{config.hook}")
def score_features(store_url: str, sae_dir: str, out_url: str, config: ScoreConfig,
                   dask_address: str | None = None, model: str | None = None) -> dict:
    """Encode the held-out store with the SAE (Dask), score, select (and sweep, sampling
    `model`), write the feature store; returns the summary."""
    logger = get_run_logger()
    folder = Path(sae_dir) / config.hook
    sae = SparseAutoencoder.load(folder)
    store = ActivationStore.open(store_url)
    logger.info(f"encoding {store.n_samples} samples of {store_url} with the SAE of {config.hook}")
    means = concept_means(store, config.hook, sae, scheduler=dask_address)
    mean_all = next(iter(means.values())).mean_all
    domains = {name: select(m, config) for name, m in means.items()}
    sweep_rows: list[dict] = []
    if config.sweep is not None:
        sweep_rows = run_sweep(means, domains, mean_all, sae, config, model)
    write_features(out_url, hook=config.hook, sae_fp=sae_fingerprint(folder), mean_all=mean_all,
                   domains=domains, attrs={"config": config.model_dump(mode="json"),
                                           "sweep": sweep_rows})
    summary = {"hook": config.hook, "samples": store.n_samples}
    for name, d in domains.items():
        summary[f"{name}_concepts"] = len(d.concepts)
        summary[f"{name}_features_per_step"] = round(float(d.selected.sum(-1).mean()), 2)
    logger.info(f"feature store written to {out_url}: {summary}")
    return summary


def select(m: ConceptMeans, config: ScoreConfig, top_n: int | None = None) -> DomainFeatures:
    scores = m.scores()
    selected = select_features(scores, percentile=None if top_n else config.percentile,
                               top_n=top_n or config.top_n,
                               eligible=m.exclusive() if config.exclusive else None)
    return DomainFeatures(concepts=m.concepts, timesteps=m.timesteps, mean=m.means, count=m.counts,
                          score=scores, selected=selected,
                          multiplier=np.full(len(m.concepts), config.multiplier))


def run_sweep(means: dict[str, ConceptMeans], domains: dict[str, DomainFeatures],
              mean_all: np.ndarray, sae: SparseAutoencoder, config: ScoreConfig,
              model: str | None) -> list[dict]:
    """Choose (top_n, multiplier) per concept of the swept domains, in place; the sweep's rows.
    Concepts are swept in parallel threads, each with its own copy of the model."""
    logger = get_run_logger()
    if model is None:
        raise ValueError("the sweep samples the model: give the model path")
    cfg, judge = config.sweep, Judge.load(JUDGE_DIR)
    pipes: Queue = Queue()
    for _ in range(cfg.workers):
        pipes.put(load_pipeline(model))
    jobs = []
    for name in cfg.domains:
        d, m = domains[name], means[name]
        candidates = {n: select(m, config, top_n=n).selected for n in cfg.top_n}
        jobs += [(name, c, candidates) for c, concept in enumerate(d.concepts) if concept != "none"]

    def sweep_one(job: tuple) -> tuple[int, float, list[dict]]:
        name, c, candidates = job
        d = domains[name]

        def edit(n: int, gamma: float) -> Edit:
            return Edit.for_concepts(d.timesteps, candidates[n][[c]], d.mean[[c]], [gamma], mean_all)

        pipe = pipes.get()
        try:
            return sweep_concept(pipe, judge, sae, config.hook, name, d.concepts[c], edit, cfg)
        finally:
            pipes.put(pipe)

    rows = []
    with torch_threads(1), ThreadPoolExecutor(cfg.workers) as pool:
        for (name, c, candidates), (n, gamma, mine) in zip(jobs, pool.map(sweep_one, jobs)):
            d = domains[name]
            d.selected[c], d.multiplier[c] = candidates[n][c], gamma
            rows += mine
            logger.info(f"sweep {name} {d.concepts[c]}: top_n {n}, multiplier {gamma} "
                        f"({max(r['objective'] for r in mine):.3f})")
    return rows
