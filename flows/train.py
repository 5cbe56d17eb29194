"""The train flow: the SAE of the configured hook, streamed from the run's training split."""

from __future__ import annotations

import time

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.stage import cached, layout_of
from saeuron.run import RunConfig
from saeuron.sae_train import SAETrainConfig
from storage.activations import ActivationStore
from storage.run import fingerprint
from tasks.train import train_sae


@flow(name="train")
def train(config: SAETrainConfig = SAETrainConfig(), run: RunConfig = RunConfig(),
          force: bool = False) -> dict:
    """Train the SAE of `config.hook` (resuming from its last checkpoint)."""
    start = time.time()
    layout = layout_of(run)
    upstream = layout.upstream("harvest", "train")
    store_url = upstream["outputs"]["harvest"]
    store = ActivationStore.open(store_url)
    if config.hook not in store.spec.hooks:
        raise ValueError(f"{store_url} has no hook {config.hook!r}; it holds {sorted(store.spec.hooks)}")
    fp = fingerprint("train", config.model_dump(mode="json"), upstream["fingerprint"])
    if hit := cached(layout, "train", fp, force):
        return hit
    folder = layout.sae_dir / config.hook
    layout.begin("train", fp, [str(folder)], force)
    result = train_sae(store_url, config, str(layout.sae_dir))
    create_table_artifact([result], key="train-summary", description="SAE held-out metrics")
    return layout.finish("train", fp, {"sae": str(folder)}, result, time.time() - start,
                         upstream={"harvest": upstream["fingerprint"]})


def main(argv: list[str] | None = None) -> None:
    from flows.cli import run_stage_cli

    run_stage_cli("train", train, SAETrainConfig, argv)


if __name__ == "__main__":
    main()
