"""Scoring task: SAE features per concept, from a held-out activation store, into a feature store."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from queue import Queue

import numpy as np
from prefect import get_run_logger, task

from saeuron.intervention import Edit, Gate
from saeuron.minicanvas import JUDGE_DIR
from saeuron.minicanvas.classifier import Judge
from saeuron.pipeline import load_pipeline
from saeuron.sae import SparseAutoencoder
from saeuron.sweep import sweep_concept
from saeuron.threads import torch_threads
from saeuron.scoring import ConceptMeans, ScoreConfig, concept_means, select_features
from saeuron.unlearning import concept_edit
from storage.activations import ActivationStore
from storage.features import DomainFeatures, sae_fingerprint, write_features


@task(name="score-features", task_run_name="score-{hook}")
def score_features(store_url: str, sae_dir: str, out_url: str, config: ScoreConfig, hook: str,
                   domains: list[str], dask_address: str | None = None,
                   model: str | None = None) -> dict:
    """Encode the held-out store with the SAE of `hook` (Dask), score and select the concepts of
    `domains` (sweeping those configured, sampling `model`), write the feature store; returns the
    summary."""
    logger = get_run_logger()
    folder = Path(sae_dir) / hook
    sae = SparseAutoencoder.load(folder)
    store = ActivationStore.open(store_url)
    logger.info(f"encoding {store.n_samples} samples of {store_url} with the SAE of {hook}")
    means = {d: m for d, m in concept_means(store, hook, sae, scheduler=dask_address).items()
             if d in domains}
    mean_all = next(iter(means.values())).mean_all
    selected = {name: select(m, config) for name, m in means.items()}
    swept = [d for d in domains if getattr(config.sweep, d) is not None]
    sweep_rows = run_sweep(means, selected, swept, mean_all, sae, hook, config, model) if swept else []
    write_features(out_url, hook=hook, sae_fp=sae_fingerprint(folder), mean_all=mean_all,
                   domains=selected, attrs={"config": config.model_dump(mode="json"),
                                            "sweep": sweep_rows})
    summary = {"hook": hook, "samples": store.n_samples}
    for name, d in selected.items():
        summary[f"{name}_concepts"] = len(d.concepts)
        summary[f"{name}_features_per_step"] = round(float(d.selected.sum(-1).mean()), 2)
    logger.info(f"feature store written to {out_url}: {summary}")
    return summary


def select(m: ConceptMeans, config: ScoreConfig, top_n: int | None = None) -> DomainFeatures:
    scores = m.scores(config.contrast)
    selected = select_features(scores, percentile=None if top_n else config.percentile,
                               top_n=top_n or config.top_n,
                               eligible=m.exclusive() if config.exclusive else None)
    return DomainFeatures(concepts=m.concepts, timesteps=m.timesteps, mean=m.means, count=m.counts,
                          score=scores, selected=selected,
                          multiplier=np.full(len(m.concepts), config.multiplier),
                          gate=[config.gate] * len(m.concepts),
                          detect_at=np.full(len(m.concepts), config.detect_at),
                          detect_start=np.full(len(m.concepts), config.detect_start))


def run_sweep(means: dict[str, ConceptMeans], domains: dict[str, DomainFeatures],
              swept: list[str], mean_all: np.ndarray, sae: SparseAutoencoder, hook: str,
              config: ScoreConfig, model: str | None) -> list[dict]:
    """Choose (top_n, multiplier) per concept of the swept domains, in place; the sweep's rows.
    Concepts are swept in parallel threads, each with its own copy of the model."""
    logger = get_run_logger()
    if model is None:
        raise ValueError("the sweep samples the model: give the model path")
    judge = Judge.load(JUDGE_DIR)
    workers = max(getattr(config.sweep, name).workers for name in swept)
    pipes: Queue = Queue()
    for _ in range(workers):
        pipes.put(load_pipeline(model))
    jobs = []
    for name in swept:
        d, m = domains[name], means[name]
        candidates = {n: select(m, config, top_n=n).selected
                      for n in getattr(config.sweep, name).top_n}
        jobs += [(name, c, candidates) for c, concept in enumerate(d.concepts) if concept != "none"]

    def sweep_one(job: tuple) -> tuple[int, float, Gate, list[dict]]:
        name, c, candidates = job
        d = domains[name]

        def edit(n: int, gamma: float, gate: Gate) -> Edit:
            return concept_edit(mean_all, domains, name, [d.concepts[c]], multiplier=gamma,
                                gate=gate, selected=candidates[n][[c]])

        pipe = pipes.get()
        try:
            return sweep_concept(pipe, judge, sae, hook, name, d.concepts[c], edit,
                                 getattr(config.sweep, name), config.gate)
        finally:
            pipes.put(pipe)

    rows = []
    with torch_threads(1), ThreadPoolExecutor(workers) as pool:
        for (name, c, candidates), (n, gamma, gate, mine) in zip(jobs, pool.map(sweep_one, jobs)):
            d = domains[name]
            d.selected[c], d.multiplier[c], d.gate[c] = candidates[n][c], gamma, gate
            rows += mine
            logger.info(f"sweep {name} {d.concepts[c]}: top_n {n}, multiplier {gamma}, gate "
                        f"{gate} ({max(r['objective'] for r in mine):.3f})")
    return rows
