"""Evaluation tasks: the unedited grid, and the grid with one target's concepts unlearned."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from saeuron.edited import Unedited
from saeuron.harvest import HarvestConfig
from saeuron.minicanvas.evaluate import GridResult, grid_picture
from saeuron.pipeline import load_pipeline
from saeuron.sae import SparseAutoencoder
from saeuron.sweep import sweep_set
from saeuron.unlearning import (EvaluateConfig, concept_edit, unedited_grid, unlearned_grid,
                                unlearning_metrics)
from storage.features import read_features, sae_fingerprint

UNEDITED = "unedited.npz"
"""The baseline's run in its folder: its pictures and each block's latents (saeuron.edited)."""


def _row(name: str, result: GridResult, out_dir: str) -> dict:
    picture = grid_picture(result.images[0], Path(out_dir) / name / "grid.png")
    return {"target": name, "domain": "-", "style_acc": result.style_accuracy,
            "object_acc": result.object_accuracy, "image": str(picture)}


@task(name="unedited-grid", task_run_name="baseline")
def unedited_target(config: EvaluateConfig, sae_dir: str, hooks: list[str], out_dir: str) -> dict:
    """The baseline's metrics: the grid without edit (in `config.workers` parallel parts);
    writes its image grid and its run, with the latents of the SAE of each of `hooks`, so
    targets sample only what their edit touches."""
    saes = {h: SparseAutoencoder.load(Path(sae_dir) / h, device=config.device) for h in hooks}
    model = HarvestConfig(model=config.model).model_path()
    pipes = [load_pipeline(model, device=config.device) for _ in range(config.workers)]
    result, unedited = unedited_grid(pipes, config.judge(), saes, tuple(config.seeds()),
                                     grid=config.concept_grid(), **config.sampling())
    unedited.save(Path(out_dir) / "baseline" / UNEDITED)
    row = _row("baseline", result, out_dir)
    get_run_logger().info(f"baseline: {row}")
    return row


@task(name="unlearn-target", task_run_name="unlearn-{domain}-{name}")
def unlearn_target(config: EvaluateConfig, sae_dir: str, features_url: str, hook: str,
                   domain: str, concepts: list[str], name: str, out_dir: str,
                   unedited: str | None = None) -> dict:
    """Metrics of one target; writes its image grid. `features_url` and `hook`: the feature
    store and block that remove the target's domain; `unedited`: the baseline's run, whose
    pictures the target's edit does not touch are taken from it."""
    logger = get_run_logger()
    folder = Path(sae_dir) / hook
    sae = SparseAutoencoder.load(folder, device=config.device)
    _, mean_all, domains = read_features(features_url, sae_fingerprint(folder))
    gate = config.set_gate if len(concepts) > 1 else None
    pipe = load_pipeline(HarvestConfig(model=config.model).model_path(), device=config.device)
    scale = 1.0
    if len(concepts) > 1 and config.set_scales != [1.0]:
        scale, tried = sweep_set(pipe, config.judge(), sae, hook, domain, concepts,
                                 lambda s: concept_edit(mean_all, domains, domain, concepts,
                                                        scale=s, gate=gate),
                                 config.set_scales, config.set_sweep)
        logger.info(f"{name}: set sweep {tried} -> scale {scale}")
    edit = concept_edit(mean_all, domains, domain, concepts, scale=scale, gate=gate)
    result = unlearned_grid(pipe, config.judge(), sae, hook, edit, tuple(config.seeds()),
                            error_sign=config.error_sign, grid=config.concept_grid(),
                            unedited=Unedited.load(unedited) if unedited else None,
                            **config.sampling())
    row = {**_row(name, result, out_dir), "domain": domain,
           **unlearning_metrics(result, domain, concepts)}
    if len(concepts) > 1:
        row["scale"] = scale
    logger.info(f"{name}: {row}")
    return row
