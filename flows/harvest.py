"""The harvest flow: a prompt grid through the model, the named blocks into Zarr stores.

It fills two stores of the run: the SAE training split and the held-out scoring split.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from flows.stage import cached, holds_root, layout_of
from saeuron.harvest import Harvest, HarvestConfig, open_store, prepare, repair_stores, split_units
from saeuron.run import RunConfig
from storage.layout import fingerprint
from tasks.harvest import harvest_shard


@flow(name="harvest-shards")
def write_shards(config: HarvestConfig, store_url: str, shards: list[list[int]]) -> list[dict]:
    """Run the shards on this flow's task runner (threads here, or a Dask cluster)."""
    progress = create_progress_artifact(0.0, key=f"harvest-{config.split}-progress",
                                        description=f"Write units of the {config.split} store")
    total = sum(len(s) for s in shards)
    futures = [harvest_shard.submit(config, store_url, units, i) for i, units in enumerate(shards)]
    results, done = [], 0
    for future in as_completed(futures):
        results.append(future.result())
        done += results[-1]["units"]
        update_progress_artifact(progress, 100.0 * done / total)
    return results


def fill_store(checked: Harvest, store_url: str, run: RunConfig, replace: bool) -> dict:
    """Write the units of `store_url` that are missing; the store's summary. `replace`: a store
    of another configuration there is the stage's own stale output, to be overwritten."""
    logger = get_run_logger()
    start = time.time()
    config = checked.cfg
    store = open_store(checked, store_url, force=replace)
    missing = store.missing_units()
    logger.info(f"{store_url}: {len(checked.table)} samples in {store.n_units} units, "
                f"{len(missing)} to write")
    if missing:
        runner = (DaskTaskRunner(address=run.dask_address) if run.dask_address
                  else ThreadPoolTaskRunner(max_workers=run.shards))
        write_shards.with_options(task_runner=runner)(config, store_url,
                                                      split_units(missing, run.shards))
    store = open_store(checked, store_url)
    if store.missing_units():
        raise RuntimeError(f"harvest ended with units still missing: {store.missing_units()}")
    return {"split": config.split, **store.summary(), "units_written_now": len(missing),
            "seconds": round(time.time() - start, 1)}


@flow(name="harvest")
@holds_root
def harvest(config: HarvestConfig = HarvestConfig(), run: RunConfig = RunConfig(),
            score_seeds: int = 1, force: bool = False) -> dict:
    """Harvest the training split (`config`) and the scoring split (`score_seeds` seeds)."""
    start = time.time()
    layout = layout_of(run)
    splits = [config, config.model_copy(update={"split": "score", "n_seeds": score_seeds})]
    fp = fingerprint("harvest", [s.fingerprint() for s in splits])
    damaged = {} if force else repair_stores({s.split: layout.activations(s.split) for s in splits},
                                             get_run_logger().warning)
    if not damaged and (hit := cached(layout, "harvest", fp, force)):
        return hit
    first = prepare(splits[0])  # every option checked before any work or deletion
    checked = [first, prepare(splits[1], first.pipe)]
    outputs = {s.split: layout.activations(s.split) for s in splits}
    # A store records its own configuration: one still valid is kept (and resumed) even when
    # the other split changed; forced, both are harvested again.
    stale = layout.begin("harvest", fp, list(outputs.values()) if force else [], force)
    rows = [fill_store(h, outputs[h.cfg.split], run, replace=stale) for h in checked]
    create_table_artifact(rows, key="harvest-summary", description="Activation stores")
    metrics = {f"{r['split']}_{k}": r[k] for r in rows for k in ("samples", "vectors")}
    metrics["model"] = config.model_path()
    return layout.finish("harvest", fp, outputs, metrics, time.time() - start, upstream={})


def main(argv: list[str] | None = None) -> None:
    from flows.cli import run_stage_cli

    run_stage_cli("harvest", harvest, HarvestConfig, argv,
                  extra=lambda p: p.add_argument("--score-seeds", type=int,
                                                 help="seeds per prompt of the scoring split "
                                                 "(default 1, or the pipeline configuration's)"),
                  kwargs=lambda a: {} if a.score_seeds is None else {"score_seeds": a.score_seeds})


if __name__ == "__main__":
    main()
