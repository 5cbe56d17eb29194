"""The train flow: one SAE per hook, streamed from the activation store."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from saeuron.sae_train import SAETrainConfig
from storage.activations import ActivationStore
from tasks.train import train_sae


@flow(name="train")
def train(config: SAETrainConfig = SAETrainConfig(),
          store_url: str = "runs/default/activations/harvest.zarr",
          out_dir: str = "runs/default/sae", hooks: list[str] | None = None) -> list[dict]:
    """Train an SAE for each hook (default: `config.hook`; resumes from checkpoints)."""
    store = ActivationStore.open(store_url)
    for hook in hooks or [config.hook]:
        if hook not in store.spec.hooks:
            raise ValueError(f"{store_url} has no hook {hook!r}; it holds {sorted(store.spec.hooks)}")
    results = [train_sae(store_url, config.model_copy(update={"hook": hook}), out_dir)
               for hook in hooks or [config.hook]]
    create_table_artifact(results, key="sae-metrics", description="SAE held-out metrics")
    return results


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.train", description=train.__doc__)
    parser.add_argument("--config", help="YAML file of SAETrainConfig options")
    parser.add_argument("--store", default="runs/default/activations/harvest.zarr")
    parser.add_argument("--out", default="runs/default/sae", help="folder of the SAEs")
    parser.add_argument("--hook", action="append", help="hook to train (repeatable)")
    args = parser.parse_args(argv)
    config = SAETrainConfig.from_yaml(args.config) if args.config else SAETrainConfig()
    print(train(config, args.store, args.out, args.hook))


if __name__ == "__main__":
    main()
