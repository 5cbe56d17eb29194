"""The train flow: one SAE per configured hook, streamed from the run's training split."""

from __future__ import annotations

import time

from prefect import flow
from prefect.artifacts import create_table_artifact

from flows.stage import cached, code_fingerprint, holds_root, layout_of
from saeuron.run import RunConfig
from saeuron.sae_train import SAETrainConfig
from storage.activations import ActivationStore
from storage.layout import fingerprint, made
from tasks.train import train_sae


@flow(name="train")
@holds_root
def train(config: SAETrainConfig = SAETrainConfig(), run: RunConfig = RunConfig(),
          force: bool = False) -> dict:
    """Train the SAE of each of `config.hooks` (resuming from its last checkpoint)."""
    start = time.time()
    layout = layout_of(run)
    upstream = layout.upstream("harvest", "train")
    store_url = upstream["outputs"]["harvest"]
    store = ActivationStore.open(store_url)
    store.require_hooks(config.hooks)
    fp = fingerprint("train", code_fingerprint("train"),
                     config.model_dump(mode="json"), made(upstream))
    if hit := cached(layout, "train", fp, force):
        return hit
    folders = {hook: str(layout.sae_dir / hook) for hook in config.hooks}
    layout.begin("train", fp, list(folders.values()), force)
    results = [train_sae(store_url, config.for_hook(hook), hook, str(layout.sae_dir))
               for hook in config.hooks]
    create_table_artifact(results, key="train-summary", description="SAE held-out metrics")
    return layout.finish("train", fp, folders, {r["hook"]: r for r in results},
                         time.time() - start, upstream={"harvest": upstream["fingerprint"]})


if __name__ == "__main__":
    from flows.cli import stage_main

    stage_main(train)
