"""Scoring task: SAE features per concept, from a held-out activation store, into a feature store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from saeuron.sae import SparseAutoencoder
from saeuron.scoring import ScoreConfig, concept_means, select_features
from storage.activations import ActivationStore
from storage.features import DomainFeatures, sae_fingerprint, write_features


@task(name="score-features", task_run_name="score-{config.hook}")
def score_features(store_url: str, sae_dir: str, out_url: str, config: ScoreConfig) -> dict:
    logger = get_run_logger()
    folder = Path(sae_dir) / config.hook
    sae = SparseAutoencoder.load(folder)
    store = ActivationStore.open(store_url)
    logger.info(f"encoding {store.n_samples} samples of {store_url} with the SAE of {config.hook}")
    means = concept_means(store, config.hook, sae, scheduler=config.dask_address)
    domains = {}
    for name, m in means.items():
        scores = m.scores()
        selected = select_features(scores, percentile=config.percentile, top_n=config.top_n)
        domains[name] = DomainFeatures(concepts=m.concepts, timesteps=m.timesteps, mean=m.means,
                                       count=m.counts, score=scores, selected=selected,
                                       multiplier=np.full(len(m.concepts), config.multiplier))
    mean_all = next(iter(means.values())).mean_all
    write_features(out_url, hook=config.hook, sae_fp=sae_fingerprint(folder), mean_all=mean_all,
                   domains=domains, attrs={"config": config.model_dump(mode="json")})
    summary = {"hook": config.hook, "samples": store.n_samples}
    for name, d in domains.items():
        summary[f"{name}_concepts"] = len(d.concepts)
        summary[f"{name}_features_per_step"] = round(float(d.selected.sum(-1).mean()), 2)
    logger.info(f"feature store written to {out_url}: {summary}")
    return summary
