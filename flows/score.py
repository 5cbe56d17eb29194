"""The score flow: per-concept SAE feature scores and selections, computed with Dask."""

from __future__ import annotations

import time

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.stage import cached, layout_of
from saeuron.run import RunConfig
from saeuron.scoring import ScoreConfig
from storage.run import fingerprint
from tasks.score import score_features


@flow(name="score")
def score(config: ScoreConfig = ScoreConfig(), run: RunConfig = RunConfig(),
          force: bool = False) -> dict:
    """Score the SAE of `config.hook` on the held-out split into the run's feature store."""
    start = time.time()
    layout = layout_of(run)
    harvested = layout.upstream("harvest", "score")
    trained = layout.upstream("train", "score")
    fp = fingerprint("score", config.model_dump(mode="json"), harvested["fingerprint"],
                     trained["fingerprint"])
    if hit := cached(layout, "score", fp, force):
        return hit
    out = layout.features(config.hook)
    layout.begin("score", fp, [out], force)
    summary = score_features(harvested["outputs"]["score"], str(layout.sae_dir), out, config,
                             run.dask_address, model=harvested["metrics"].get("model"))
    create_table_artifact([summary], key="score-summary", description="Selected features")
    return layout.finish("score", fp, {"features": out}, summary, time.time() - start,
                         upstream={"harvest": harvested["fingerprint"],
                                   "train": trained["fingerprint"]})


def main(argv: list[str] | None = None) -> None:
    from flows.cli import run_stage_cli

    run_stage_cli("score", score, ScoreConfig, argv)


if __name__ == "__main__":
    main()
