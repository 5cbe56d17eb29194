"""The harvest flow: a prompt grid through the model, the named blocks into the run's two Zarr
stores (the SAE training split and the held-out scoring split)."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed

from flows.stage import cached, holds_root, layout_of, shard_runner
from saeuron.harvest import Harvest, HarvestConfig, open_store, prepare, repair_stores, split_units
from saeuron.run import RunConfig
from saeuron.sampling import SamplingConfig
from storage.layout import fingerprint
from tasks.harvest import harvest_shard


@flow(name="harvest-shards")
def write_shards(config: HarvestConfig, sampling: SamplingConfig, store_url: str,
                 shards: list[list[int]]) -> None:
    """Run the shards on this flow's task runner (threads here, or a Dask cluster)."""
    progress = create_progress_artifact(0.0, key=f"harvest-{config.split}-progress",
                                        description=f"Write units of the {config.split} store")
    done = 0
    for future in as_completed([harvest_shard.submit(config, sampling, store_url, units, i)
                                for i, units in enumerate(shards)]):
        done += future.result()["units"]
        update_progress_artifact(progress, 100.0 * done / sum(map(len, shards)))


def fill_store(h: Harvest, store_url: str, run: RunConfig, replace: bool) -> dict:
    """Write the units of `store_url` that are missing; the store's summary. `replace`: a store
    of another configuration there is the stage's own stale output, to be overwritten."""
    start, missing = time.time(), open_store(h, store_url, force=replace).missing_units()
    get_run_logger().info(f"{store_url}: {len(h.table)} samples, {len(missing)} units to write")
    if missing:
        write_shards.with_options(task_runner=shard_runner(run))(
            h.cfg, h.sampling, store_url, split_units(missing, run.shards))
    store = open_store(h, store_url)
    if left := store.missing_units():
        raise RuntimeError(f"harvest ended with units still missing: {left}")
    return {"split": h.cfg.split, **store.summary(), "units_written_now": len(missing),
            "seconds": round(time.time() - start, 1)}


@flow(name="harvest")
@holds_root
def harvest(config: HarvestConfig = HarvestConfig(), run: RunConfig = RunConfig(),
            score_seeds: int = 1, sampling: SamplingConfig = SamplingConfig(),
            force: bool = False) -> dict:
    """Harvest the training split (`config`) and the scoring split (`score_seeds` seeds),
    sampling as `sampling` says but for the harvest's own steps and precision."""
    start = time.time()
    layout = layout_of(run)
    splits = [config, config.model_copy(update={"split": "score", "n_seeds": score_seeds})]
    fp = fingerprint("harvest", [s.fingerprint(sampling) for s in splits])
    outputs = {s.split: layout.activations(s.split) for s in splits}
    damaged = {} if force else repair_stores(outputs, get_run_logger().warning)
    if not damaged and (hit := cached(layout, "harvest", fp, force)):
        return hit
    first = prepare(splits[0], sampling)  # every option checked before any work or deletion
    checked = [first, prepare(splits[1], sampling, first.pipe)]
    # a store still valid for its own configuration is kept (and resumed) unless forced
    stale = layout.begin("harvest", fp, list(outputs.values()) if force else [], force)
    rows = [fill_store(h, outputs[h.cfg.split], run, replace=stale) for h in checked]
    create_table_artifact(rows, key="harvest-summary", description="Activation stores")
    metrics = {**{f"{r['split']}_{k}": r[k] for r in rows for k in ("samples", "vectors")},
               "model": config.model_path()}
    return layout.finish("harvest", fp, outputs, metrics, time.time() - start, upstream={})


if __name__ == "__main__":
    from flows.cli import stage_main

    stage_main(harvest)
