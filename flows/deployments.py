"""The pipeline's deployments, from one configuration file: served here, or written to prefect.yaml.

    python -m flows.deployments serve [--config configs/pipeline.yaml]   # no work pool needed
    python -m flows.deployments write                                    # regenerate prefect.yaml

The pipeline deployment runs on a cron schedule; each stage has its own deployment for reruns
of a single stage, and the benchmark its own (run by hand on a finished root). `prefect deploy --all` names them `<flow>/<flow>` (run by a worker of the
`saeuron` pool); served ones are `<flow>/served` (run by the serving process, paused by Prefect
when it stops), so that serving never takes over or pauses the deployed ones. Parameters come from the pipeline configuration's sections, so the UI's
forms start from the same values as `python -m flows.launch`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from saeuron.benchmark import BenchmarkConfig
from saeuron.run import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/pipeline.yaml"
POOL = "saeuron"
SERVED = "served"
"""The name of every served deployment (deployed ones are named after their flow)."""
CRON = "0 3 * * *"
"""Nightly at 03:00 (server time): a scheduled rerun costs seconds while nothing changed."""
ENTRYPOINTS = {"pipeline": "flows/pipeline.py:pipeline", "harvest": "flows/harvest.py:harvest",
               "train": "flows/train.py:train", "score": "flows/score.py:score",
               "evaluate": "flows/evaluate.py:evaluate",
               "benchmark": "flows/benchmark.py:benchmark"}
DESCRIPTIONS = {
    "pipeline": "Harvest, train, score and evaluate, each stage cached by its inputs.",
    "harvest": "Sample the concept grid and store the hooked blocks' activations in Zarr.",
    "train": "Train a TopK SAE per hook, streamed from the activation store.",
    "score": "Score SAE features per concept with Dask into the feature stores.",
    "evaluate": "Unlearn each target concept and report UA / IRA / CRA.",
    "benchmark": "SAeUron beside the baselines (negative prompt, SLD, UCE, ESD-x) on every "
                 "target of a finished run: one table.",
}


def parameters(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Each deployment's parameters, from the pipeline configuration."""
    dump = config.model_dump(mode="json")
    out = {"pipeline": {"config": dump}}
    for stage in ("harvest", "train", "score", "evaluate"):
        options = {k: v.model_dump(mode="json") if hasattr(v, "model_dump") else v
                   for k, v in config.stage_options(stage).items()}
        out[stage] = {"config": dump[stage], "run": dump["run"], **options}
    out["benchmark"] = {"config": BenchmarkConfig().model_dump(mode="json"), "run": dump["run"],
                        **{k: v.model_dump(mode="json")
                           for k, v in config.benchmark_options().items()}}
    return out


def prefect_yaml(config: PipelineConfig, config_file: str = CONFIG) -> str:
    """prefect.yaml for `prefect deploy --all` on the process work pool `saeuron`."""
    deployments = []
    for name, params in parameters(config).items():
        d = {"name": name, "entrypoint": ENTRYPOINTS[name], "description": DESCRIPTIONS[name],
             "work_pool": {"name": POOL}, "parameters": params}
        if name == "pipeline":
            d["schedules"] = [{"cron": CRON, "timezone": "UTC"}]
        deployments.append(d)
    header = (f"# Generated from {config_file} by `python -m flows.deployments write`; edit that "
              "file, not this one.\n"
              "#   prefect work-pool create saeuron --type process\n"
              "#   SAEURON_ROOT=$PWD prefect deploy --all\n"
              "#   SAEURON_ROOT=$PWD prefect worker start --pool saeuron\n")
    body = {"name": "saeuron", "prefect-version": "3.9.1",
            "pull": [{"prefect.deployments.steps.set_working_directory":
                      {"directory": "{{ $SAEURON_ROOT }}"}}],
            "deployments": deployments}
    return header + yaml.dump(body, Dumper=_PlainDumper, sort_keys=False, width=100)


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated sections out in full (no YAML anchors), for people reading the file."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def serve(config: PipelineConfig) -> None:
    """Serve every deployment from this process (no work pool, no worker)."""
    from prefect import serve as prefect_serve

    from flows.benchmark import benchmark
    from flows.evaluate import evaluate
    from flows.harvest import harvest
    from flows.pipeline import pipeline
    from flows.score import score
    from flows.train import train

    flows = {"pipeline": pipeline, "harvest": harvest, "train": train, "score": score,
             "evaluate": evaluate, "benchmark": benchmark}
    prefect_serve(*[flows[name].to_deployment(
        name=SERVED, description=DESCRIPTIONS[name], parameters=params,
        cron=CRON if name == "pipeline" else None) for name, params in parameters(config).items()])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deployments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["serve", "write"])
    parser.add_argument("--config", default=CONFIG, help="pipeline configuration (YAML)")
    args = parser.parse_args(argv)
    config = PipelineConfig.from_yaml(ROOT / args.config)
    if args.action == "write":
        (ROOT / "prefect.yaml").write_text(prefect_yaml(config, args.config))
    else:
        serve(config)


if __name__ == "__main__":
    main()
