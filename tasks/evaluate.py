"""Evaluation tasks: the unedited grid, and the grid with one target's concepts unlearned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from saeuron.edited import Unedited
from saeuron.harvest import HarvestConfig
from saeuron.judging import GridResult, grid_picture
from saeuron.diffusion import load_pipeline
from saeuron.sae import SparseAutoencoder
from saeuron.sampling import SamplingConfig
from saeuron.sweep import sweep_set
from saeuron.metrics import assess, frechet_distance
from saeuron.report import report, summarise, table_rows, write_report
from saeuron.unlearning import (EvaluateConfig, concept_edit, reference_features, unedited_grid,
                                unlearned_grid)
from storage.features import read_features, sae_fingerprint
from storage.layout import UnitResults

UNEDITED = "unedited.npz"
"""The baseline's run in its folder: its pictures and each block's latents (saeuron.edited)."""
FEATURES = "features.npz"
"""The baseline's judge features in its folder: its pictures' ('base') and the renders' of the
same cells ('reference'), the references of every target's distances."""


def _row(name: str, result: GridResult, out_dir: str) -> dict:
    picture = grid_picture(result.images[0], Path(out_dir) / name / "grid.png",
                           rows=result.styles, columns=result.objects)
    return {"target": name, "domain": "-", "style_acc": result.style_accuracy,
            "object_acc": result.object_accuracy, "image": str(picture)}


def before_after(before: np.ndarray, after: GridResult, domain: str, concepts: list[str],
                 path: Path) -> Path:
    """The targets' own pictures at the first seed, each target's unedited row (a style's
    objects, an object's styles) above its edited one, labelled."""
    labels = after.styles if domain == "style" else after.objects
    rows, names = [], []
    for concept in concepts:
        i = labels.index(concept)
        for tag, images in (("before", before[0]), ("after", after.images[0])):
            rows.append(images[i] if domain == "style" else images[:, i])
            names.append(f"{concept} {tag}")
    return grid_picture(np.stack(rows), path, rows=tuple(names),
                        columns=after.objects if domain == "style" else after.styles)


@task(name="unedited-grid", task_run_name="baseline")
def unedited_target(config: EvaluateConfig, sampling: SamplingConfig, sae_dir: str,
                    hooks: list[str], out_dir: str) -> dict:
    """The baseline's metrics: the grid without edit (in `config.workers` parallel parts);
    writes its image grid and its run, with the latents of the SAE of each of `hooks`, so
    targets sample only what their edit touches."""
    device = sampling.device
    saes = {h: SparseAutoencoder.load(Path(sae_dir) / h, device=device) for h in hooks}
    model = HarvestConfig(model=config.model).model_path()
    pipes = [load_pipeline(model, device=device) for _ in range(config.workers)]
    judge, grid, seeds = config.judge(device), config.concept_grid(), tuple(config.seeds())
    result, unedited = unedited_grid(pipes, judge, saes, seeds, grid=grid, **sampling.options())
    folder = Path(out_dir) / "baseline"
    unedited.save(folder / UNEDITED)
    base, reference = result.judged().features, reference_features(judge, grid, seeds, result)
    np.savez(folder / FEATURES, base=base, reference=reference)
    row = {**_row("baseline", result, out_dir), "FD_rest": frechet_distance(base, reference)}
    get_run_logger().info(f"baseline: {row}")
    return row


@task(name="unlearn-target", task_run_name="unlearn-{domain}-{name}")
def unlearn_target(config: EvaluateConfig, sampling: SamplingConfig, sae_dir: str,
                   features_url: str, hook: str, domain: str, concepts: list[str], name: str,
                   out_dir: str) -> dict:
    """Metrics of one target; writes its image grid. `features_url` and `hook`: the feature
    store and block that remove the target's domain. The baseline's run (in out_dir) gives the
    before pictures and, with sampling.reuse_unedited, every picture the edit does not touch."""
    logger = get_run_logger()
    folder = Path(sae_dir) / hook
    device = sampling.device
    sae = SparseAutoencoder.load(folder, device=device)
    _, mean_all, domains = read_features(features_url, sae_fingerprint(folder))
    gate = config.set_gate if len(concepts) > 1 else None
    pipe = load_pipeline(HarvestConfig(model=config.model).model_path(), device=device)
    judge, grid, scale = config.judge(device), config.concept_grid(), 1.0
    if len(concepts) > 1 and config.set_scales != [1.0]:
        scale, tried = sweep_set(pipe, judge, grid, sae, hook, domain, concepts,
                                 lambda s: concept_edit(mean_all, domains, domain, concepts,
                                                        scale=s, gate=gate),
                                 config.set_scales, config.set_sweep, sampling)
        logger.info(f"{name}: set sweep {tried} -> scale {scale}")
    edit = concept_edit(mean_all, domains, domain, concepts, scale=scale, gate=gate)
    baseline = Path(out_dir) / "baseline"
    unedited_run = Unedited.load(baseline / UNEDITED)
    result = unlearned_grid(pipe, judge, sae, hook, edit, tuple(config.seeds()),
                            error_sign=config.error_sign, grid=grid,
                            unedited=unedited_run if sampling.reuse_unedited else None,
                            **sampling.options())
    features = np.load(baseline / FEATURES)
    before = unedited_run.images.reshape(result.images.shape)
    row = {**_row(name, result, out_dir), "domain": domain,
           **assess(result.judged(), features["base"], features["reference"], domain, concepts),
           "before_after": str(before_after(before, result, domain, concepts,
                                            Path(out_dir) / name / "before_after.png"))}
    if len(concepts) > 1:
        row["scale"] = scale
    logger.info(f"{name}: {row}")
    return row


def done_before(results: UnitResults, names: list[str]) -> dict[str, dict]:
    """The rows of `names` finished before an interruption (the baseline only with its run and
    features, which the targets read)."""
    rows = results.done(names)
    if not all((results.folder / "baseline" / f).is_file() for f in (UNEDITED, FEATURES)):
        rows.pop("baseline", None)
    for name, row in rows.items():
        get_run_logger().info(f"{name}: done before, {row}")
    return rows


def publish(rows: list[dict], out_dir: Path) -> dict:
    """The evaluation's summary, its table and report artifacts, and the report file; the
    stage's metrics."""
    summary = summarise(rows)
    create_table_artifact(table_rows(rows), key="unlearning-targets",
                          description="UA / IRA / CRA, own content kept and Frechet distances "
                          "per target")
    if summary:
        create_table_artifact(summary, key="unlearning-summary",
                              description="Means per domain, 95% intervals, worst targets")
    written = write_report(rows, summary, out_dir)
    create_markdown_artifact(report(rows, summary, out_dir, inline=True), key="unlearning-report",
                             description="Unlearning report with before/after image grids")
    return {"summary": summary, "report": str(written)}
