"""Evaluation tasks: sample and judge the grid with one target's concepts unlearned."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from saeuron.harvest import HarvestConfig
from saeuron.minicanvas.evaluate import grid_picture
from saeuron.pipeline import load_pipeline
from saeuron.sae import SparseAutoencoder
from saeuron.sweep import sweep_set
from saeuron.unlearning import EvaluateConfig, concept_edit, unlearned_grid, unlearning_metrics
from storage.features import read_features, sae_fingerprint


@task(name="unlearn-target", task_run_name="unlearn-{domain}-{name}")
def unlearn_target(config: EvaluateConfig, sae_dir: str, features_url: str, hook: str,
                   domain: str | None, concepts: list[str], name: str, out_dir: str) -> dict:
    """Metrics of one target (domain None: the unedited baseline); writes its image grid.
    `features_url` and `hook`: the feature store and block that remove the target's domain."""
    logger = get_run_logger()
    folder = Path(sae_dir) / hook
    sae = SparseAutoencoder.load(folder, device=config.device)
    _, mean_all, domains = read_features(features_url, sae_fingerprint(folder))
    gate = config.set_gate if len(concepts) > 1 else None
    pipe = load_pipeline(HarvestConfig(model=config.model).model_path(), device=config.device)
    scale = 1.0
    if domain and len(concepts) > 1 and config.set_scales != [1.0]:
        scale, tried = sweep_set(pipe, config.judge(), sae, hook, domain, concepts,
                                 lambda s: concept_edit(mean_all, domains, domain, concepts,
                                                        scale=s, gate=gate),
                                 config.set_scales, config.set_sweep)
        logger.info(f"{name}: set sweep {tried} -> scale {scale}")
    edit = (concept_edit(mean_all, domains, domain, concepts, scale=scale, gate=gate) if domain
            else None)
    result = unlearned_grid(pipe, config.judge(), sae, hook, edit, tuple(config.seeds()),
                            num_steps=config.num_steps, guidance=config.guidance,
                            error_sign=config.error_sign, grid=config.concept_grid(),
                            batch_size=config.batch_size)
    picture = grid_picture(result.images[0], Path(out_dir) / name / "grid.png")
    row = {"target": name, "domain": domain or "-", "style_acc": result.style_accuracy,
           "object_acc": result.object_accuracy, "image": str(picture)}
    if domain:
        row.update(unlearning_metrics(result, domain, concepts))
    if len(concepts) > 1:
        row["scale"] = scale
    logger.info(f"{name}: {row}")
    return row
