"""The pipeline flow: harvest -> train -> score -> evaluate as subflows, each cached.

Its command line is flows.launch's (`python -m flows.launch`), which answers a rerun in which
nothing changed from the run's record without importing this module, else calls it.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flows.evaluate import evaluate
from flows.cli import STAGE_NOTE
from flows.harvest import harvest
from flows.score import score
from flows.train import train
from saeuron.run import PipelineConfig, check_pipeline
from storage.layout import RunLayout

STAGES = {"harvest": harvest, "train": train, "score": score, "evaluate": evaluate}
"""The stage flows, in the order they run."""


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
    for name, stage in STAGES.items():
        state = stage(getattr(config, name), config.run, force=name in force, return_state=True,
                      **config.stage_options(name))
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
