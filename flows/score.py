"""The score flow: per-concept SAE feature scores and selections, computed with Dask."""

from __future__ import annotations

import time

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.stage import cached, code_fingerprint, holds_root, layout_of
from saeuron.run import RunConfig
from saeuron.sampling import SamplingConfig
from saeuron.scoring import ScoreConfig
from saeuron.worlds import DEFAULT, world_digest
from storage.layout import fingerprint, made
from tasks.score import score_features


@flow(name="score")
@holds_root
def score(config: ScoreConfig = ScoreConfig(), run: RunConfig = RunConfig(),
          force: bool = False, sampling: SamplingConfig = SamplingConfig(),
          grid: str = DEFAULT) -> dict:
    """Score each domain's SAE on the held-out split into the run's feature stores (one per
    hook, holding the domains that hook removes). The sweep samples and judges its validation
    pictures as the evaluation does: `sampling`, on world `grid`'s grid by its judge."""
    start = time.time()
    layout = layout_of(run)
    harvested = layout.upstream("harvest", "score")
    trained = layout.upstream("train", "score")
    by_hook = config.hooks.by_hook()
    untrained = [h for h in by_hook if h not in trained["outputs"]]
    if untrained:
        raise ValueError(f"score.hooks name {untrained[0]!r}, but the train stage trained "
                         f"{sorted(trained['outputs'])}")
    fp = fingerprint("score", code_fingerprint("score"), config.model_dump(mode="json"),
                     made(harvested), made(trained),
                     config.sweep.domains() and (sampling.fingerprint(), world_digest(grid)))
    if hit := cached(layout, "score", fp, force):
        return hit
    urls = {hook: layout.features(hook) for hook in by_hook}
    layout.begin("score", fp, list(urls.values()), force)
    summaries = [score_features(harvested["outputs"]["score"], str(layout.sae_dir), urls[hook],
                                config, hook, domains, run.dask_address,
                                model=harvested["metrics"].get("model"), sampling=sampling,
                                grid=grid)
                 for hook, domains in by_hook.items()]
    create_table_artifact(summaries, key="score-summary", description="Selected features")
    outputs = {domain: urls[hook] for hook, domains in by_hook.items() for domain in domains}
    return layout.finish("score", fp, outputs, {s["hook"]: s for s in summaries},
                         time.time() - start, upstream={"harvest": harvested["fingerprint"],
                                                        "train": trained["fingerprint"]})


if __name__ == "__main__":
    from flows.cli import stage_main

    stage_main(score)
