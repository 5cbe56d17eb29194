"""Scoring task: SAE features per concept, from a held-out activation store, into a feature store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import get_run_logger, task

from saeuron.diffusion import load_pipeline
from saeuron.sae import SparseAutoencoder
from saeuron.sampling import SamplingConfig
from saeuron.scoring import ConceptMeans, ScoreConfig, concept_means
from saeuron.selection import select, sweep_domains
from saeuron.worlds import DEFAULT, world
from storage.activations import ActivationStore
from storage.features import DomainFeatures, sae_fingerprint, write_features


@task(name="score-features", task_run_name="score-{hook}")
def score_features(store_url: str, sae_dir: str, out_url: str, config: ScoreConfig, hook: str,
                   domains: list[str], dask_address: str | None = None,
                   model: str | None = None, sampling: SamplingConfig = SamplingConfig(),
                   grid: str = DEFAULT) -> dict:
    """Encode the held-out store with the SAE of `hook` (Dask), score and select the concepts of
    `domains` (sweeping those configured: sampling `model` as `sampling` says, on world `grid`'s
    grid, judged by its judge), write the feature store; returns the summary."""
    logger = get_run_logger()
    folder = Path(sae_dir) / hook
    sae = SparseAutoencoder.load(folder)
    store = ActivationStore.open(store_url)
    logger.info(f"encoding {store.n_samples} samples of {store_url} with the SAE of {hook}")
    means = {d: m for d, m in concept_means(store, hook, sae, scheduler=dask_address).items()
             if d in domains}
    mean_all = next(iter(means.values())).mean_all
    selected = {name: select(m, config, hook) for name, m in means.items()}
    swept = [d for d in config.sweep.domains() if d in domains]
    sweep_rows = (run_sweep(means, selected, swept, mean_all, sae, hook, config, model,
                            sampling, grid) if swept else [])
    write_features(out_url, hook=hook, sae_fp=sae_fingerprint(folder), mean_all=mean_all,
                   domains=selected, attrs={"config": config.model_dump(mode="json"),
                                            "sweep": sweep_rows})
    summary = {"hook": hook, "samples": store.n_samples}
    for name, d in selected.items():
        summary[f"{name}_concepts"] = len(d.concepts)
        summary[f"{name}_features_per_step"] = round(float(d.selected.sum(-1).mean()), 2)
    logger.info(f"feature store written to {out_url}: {summary}")
    return summary


def run_sweep(means: dict[str, ConceptMeans], domains: dict[str, DomainFeatures],
              swept: list[str], mean_all: np.ndarray, sae: SparseAutoencoder, hook: str,
              config: ScoreConfig, model: str | None, sampling: SamplingConfig,
              grid: str) -> list[dict]:
    """The sweep of the swept domains (saeuron.selection.sweep_domains) on world `grid`'s grid,
    judged by its judge, with one copy of the model per sweep worker."""
    if model is None:
        raise ValueError("the sweep samples the model: give the model path")
    return sweep_domains(means, domains, swept, mean_all, sae, hook, config, sampling,
                         [load_pipeline(model, device=sampling.device)
                          for _ in range(config.sweep.workers)],
                         world(grid).judge(sampling.device), world(grid).grid(),
                         log=get_run_logger().info)
