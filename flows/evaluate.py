"""The evaluate flow: unlearn each target in turn, judge the grid, report UA / IRA / CRA."""

from __future__ import annotations

import time

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.stage import cached, code_fingerprint, holds_root, layout_of
from saeuron.run import RunConfig
from saeuron.sampling import SamplingConfig
from saeuron.threads import torch_threads
from saeuron.unlearning import EvaluateConfig
from saeuron.worlds import world_digest
from storage.features import DOMAINS, scored_domains
from storage.layout import UnitResults, fingerprint, made
from tasks.evaluate import done_before, publish, unedited_target, unlearn_target


@flow(name="evaluate")
@holds_root
def evaluate(config: EvaluateConfig = EvaluateConfig(), run: RunConfig = RunConfig(),
             sampling: SamplingConfig = SamplingConfig(), force: bool = False) -> dict:
    """Unlearn every target of `config` and measure it against the unedited baseline (sampled
    first: each target samples only the pictures its edit touches), sampling as `sampling`
    says."""
    start = time.time()
    layout = layout_of(run)
    scored = layout.upstream("score", "evaluate")
    features = {d: scored["outputs"][d] for d in DOMAINS}
    domains, hooks = scored_domains(features)
    targets = config.targets(domains, config.concept_grid())
    fp = fingerprint("evaluate", code_fingerprint("evaluate"), config.model_dump(mode="json"),
                     sampling.fingerprint(), world_digest(config.grid), made(scored))
    if hit := cached(layout, "evaluate", fp, force):
        return hit
    out_dir = layout.eval_dir
    layout.begin("evaluate", fp, [str(out_dir)], force)
    common = dict(config=config, sampling=sampling, sae_dir=str(layout.sae_dir),
                  out_dir=str(out_dir))
    progress = create_progress_artifact(0.0, key="evaluate-progress",
                                        description="Unlearning targets evaluated")
    names = ["baseline"] + [name for _, _, name in targets]
    results = UnitResults(out_dir, fp)
    rows = done_before(results, names)

    def finished(name: str, row: dict) -> None:
        rows[name] = row
        results.add(name, row)
        update_progress_artifact(progress, 100.0 * len(rows) / len(names))

    update_progress_artifact(progress, 100.0 * len(rows) / len(names))
    with torch_threads(config.threads), ThreadPoolTaskRunner(max_workers=config.workers) as runner:
        if "baseline" not in rows:  # first: the targets take the pictures they do not touch
            finished("baseline", runner.submit(unedited_target, parameters=dict(
                hooks=sorted(set(hooks.values())), **common)).result())
        futures = {runner.submit(unlearn_target, parameters=dict(
            domain=domain, concepts=concepts, name=name, features_url=features[domain],
            hook=hooks[domain], **common)): name
            for domain, concepts, name in targets if name not in rows}
        for future in as_completed(list(futures)):
            finished(futures[future], future.result())
    metrics = publish([rows[name] for name in names], out_dir)
    return layout.finish("evaluate", fp, {"eval": str(out_dir)}, metrics, time.time() - start,
                         upstream={"score": scored["fingerprint"]})


if __name__ == "__main__":
    from flows.cli import stage_main

    stage_main(evaluate)
