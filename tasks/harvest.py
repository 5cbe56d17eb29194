"""Harvest tasks: one shard of write units, sampled with capture and written to the store."""

from __future__ import annotations

from prefect import get_run_logger, task

from saeuron.harvest import HarvestConfig, prepare, run_units
from saeuron.sampling import SamplingConfig
from storage.activations import ActivationStore


@task(name="harvest-shard", task_run_name="harvest-shard-{shard}")
def harvest_shard(config: HarvestConfig, sampling: SamplingConfig, store_url: str,
                  units: list[int], shard: int) -> dict:
    """Write the units of one shard that are not done yet (each worker loads its own model);
    `sampling`: the harvest's (Harvest.sampling)."""
    logger = get_run_logger()
    harvest = prepare(config, sampling)
    store = ActivationStore.open(store_url)
    written = run_units(harvest, store, units,
                        progress=lambda i, n: logger.info(f"shard {shard}: unit {i}/{n} written"))
    logger.info(f"shard {shard}: {written} of {len(units)} units written, the rest were done")
    return {"shard": shard, "units": len(units), "written": written}
