"""Evaluation tasks: sample and judge the grid with one target's concepts unlearned."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from saeuron.minicanvas import JUDGE_DIR
from saeuron.minicanvas.classifier import Judge
from saeuron.minicanvas.evaluate import grid_picture
from saeuron.pipeline import load_pipeline
from saeuron.sae import SparseAutoencoder
from saeuron.unlearning import concept_edit, unlearned_grid, unlearning_metrics
from storage.features import read_features, sae_fingerprint


@task(name="unlearn-target", task_run_name="unlearn-{domain}-{name}")
def unlearn_target(model: str, sae_dir: str, features_url: str, hook: str, domain: str | None,
                   concepts: list[str], name: str, seeds: list[int], num_steps: int,
                   guidance: float, out_dir: str, error_sign: int = 1) -> dict:
    """Metrics of one target (domain None: the unedited baseline); writes its image grid."""
    logger = get_run_logger()
    folder = Path(sae_dir) / hook
    sae = SparseAutoencoder.load(folder)
    _, mean_all, domains = read_features(features_url, sae_fingerprint(folder))
    edit = concept_edit(mean_all, domains, domain, concepts) if domain else None
    result = unlearned_grid(load_pipeline(model), Judge.load(JUDGE_DIR), sae, hook, edit,
                            tuple(seeds), num_steps=num_steps, guidance=guidance,
                            error_sign=error_sign)
    picture = grid_picture(result.images[0], Path(out_dir) / name / "grid.png")
    row = {"target": name, "domain": domain or "-", "style_acc": result.style_accuracy,
           "object_acc": result.object_accuracy, "image": str(picture)}
    if domain:
        row.update(unlearning_metrics(result, domain, concepts))
    logger.info(f"{name}: {row}")
    return row
