"""The pipeline flow: harvest -> train -> score -> evaluate as subflows, each cached.

Its command line is flows.launch's (`python -m flows.launch`), which answers a rerun in which
nothing changed from the run's record without importing this module.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.evaluate import evaluate
from flows.cli import STAGE_NOTE
from flows.harvest import harvest
from flows.score import score
from flows.train import train
from saeuron.report import summary_table
from saeuron.run import PipelineConfig, check_pipeline
from storage.layout import RunLayout


@flow(name="pipeline")
def pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    """Run the four stages; a stage whose inputs did not change since it last finished is
    cached, a changed one reruns with everything downstream of it."""
    with RunLayout(root=config.run.root, stores=config.run.stores).hold():
        return _pipeline(config)


def _pipeline(config: PipelineConfig) -> dict:
    logger = get_run_logger()
    start = time.time()
    check_pipeline(config)
    root = Path(config.run.root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(config.to_yaml())
    force = set(config.force)
    stages = {}
    for name, call in (
            ("harvest", lambda: harvest(config.harvest, config.run, force="harvest" in force,
                                        return_state=True, **config.stage_options("harvest"))),
            ("train", lambda: train(config.train, config.run, force="train" in force,
                                    return_state=True)),
            ("score", lambda: score(config.score, config.run, force="score" in force,
                                    return_state=True, **config.stage_options("score"))),
            ("evaluate", lambda: evaluate(config.evaluate, config.run, force="evaluate" in force,
                                          return_state=True))):
        state = call()
        try:
            stages[name] = {"state": state.name, **state.result()}
        except Exception as error:
            error.add_note(STAGE_NOTE.format(name))
            raise
        logger.info(f"{name}: {state.name} ({stages[name]['seconds']} s of work when it ran)")
    table = [{"stage": n, "state": s["state"], "fingerprint": s["fingerprint"],
              "seconds_when_run": s["seconds"]} for n, s in stages.items()]
    create_table_artifact(table, key="pipeline-stages", description="Stages of this run")
    return {"stages": table, "summary": stages["evaluate"]["metrics"]["summary"],
            "report": stages["evaluate"]["metrics"]["report"], "seconds": round(time.time() - start, 1)}


def summary_text(result: dict) -> str:
    """The one-screen summary of a pipeline run."""
    lines = ["", "| stage | state | seconds when run |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['state']} | {s['seconds_when_run']} |" for s in result["stages"]]
    lines += ["", *summary_table(result["summary"]), "",
              f"report: {result['report']} (image grids beside it; also the 'unlearning-report' "
              f"artifact in the Prefect UI)", f"pipeline wall time: {result['seconds']} s"]
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> dict:
    """The pipeline flow for flows.launch's parsed options; prints and returns its result, with
    the printed summary as "text"."""
    from flows.cli import quiet_libraries, reported

    quiet_libraries()
    with reported(None):
        config = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
        if args.root:
            config = config.model_copy(update={"run": config.run.model_copy(update={"root": args.root})})
        if args.force:
            config = config.model_copy(update={"force": sorted(set(config.force) | set(args.force))})
        check_pipeline(config)
    with reported(config.run.root), RunLayout(root=config.run.root).hold():
        result = pipeline(config)  # a busy root is refused before Prefect starts
    result["text"] = summary_text(result)
    print(result["text"])
    return result
