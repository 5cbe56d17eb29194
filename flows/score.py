"""The score flow: per-concept SAE feature scores and selections, computed with Dask."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from saeuron.scoring import ScoreConfig
from tasks.score import score_features


@flow(name="score")
def score(config: ScoreConfig = ScoreConfig(),
          store_url: str = "runs/default/activations/score.zarr",
          sae_dir: str = "runs/default/sae",
          out_url: str = "runs/default/features/up_blocks.1.attentions.1.zarr") -> dict:
    """Score the SAE of `config.hook` on a held-out activation store into a feature store."""
    summary = score_features(store_url, sae_dir, out_url, config)
    create_table_artifact([summary], key="score-summary", description="Selected features")
    return summary


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.score", description=score.__doc__)
    parser.add_argument("--config", help="YAML file of ScoreConfig options")
    parser.add_argument("--store", default="runs/default/activations/score.zarr")
    parser.add_argument("--sae-dir", default="runs/default/sae")
    parser.add_argument("--out", default="runs/default/features/up_blocks.1.attentions.1.zarr")
    args = parser.parse_args(argv)
    config = ScoreConfig.from_yaml(args.config) if args.config else ScoreConfig()
    print(score(config, args.store, args.sae_dir, args.out))


if __name__ == "__main__":
    main()
