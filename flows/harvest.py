"""The harvest flow: a prompt grid through the model, the named blocks into a Zarr store."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from saeuron.harvest import HarvestConfig, open_store, prepare
from tasks.harvest import harvest_shard


def split_units(units: list[int], shards: int) -> list[list[int]]:
    """Contiguous, near-equal groups of write units, one per shard (none empty)."""
    shards = max(1, min(shards, len(units)))
    size, extra = divmod(len(units), shards)
    out, start = [], 0
    for i in range(shards):
        end = start + size + (1 if i < extra else 0)
        out.append(units[start:end])
        start = end
    return [group for group in out if group]


@flow(name="harvest-shards")
def write_shards(config: HarvestConfig, store_url: str, shards: list[list[int]]) -> list[dict]:
    """Run the shards on this flow's task runner (threads here, or a Dask cluster)."""
    progress = create_progress_artifact(0.0, key="harvest-progress",
                                        description="Write units of the activation store")
    total = sum(len(s) for s in shards)
    futures = [harvest_shard.submit(config, store_url, units, i) for i, units in enumerate(shards)]
    results, done = [], 0
    for future in as_completed(futures):
        results.append(future.result())
        done += results[-1]["units"]
        update_progress_artifact(progress, 100.0 * done / total)
    return results


@flow(name="harvest")
def harvest(config: HarvestConfig = HarvestConfig(),
            store_url: str = "runs/default/activations/harvest.zarr", shards: int = 2,
            dask_address: str | None = None, force: bool = False) -> dict:
    """Harvest activations into `store_url`; resumes a store of the same configuration."""
    logger = get_run_logger()
    start = time.time()
    checked = prepare(config)
    store = open_store(checked, store_url, force=force)
    missing = store.missing_units()
    logger.info(f"{store_url}: {len(checked.table)} samples in {store.n_units} units, "
                f"{len(missing)} to write")
    if missing:
        runner = DaskTaskRunner(address=dask_address) if dask_address else ThreadPoolTaskRunner(
            max_workers=shards)
        write_shards.with_options(task_runner=runner)(config, store_url, split_units(missing, shards))
    store = open_store(checked, store_url)
    summary = {"store": store_url, "samples": store.n_samples, "units": store.n_units,
               "units_written_now": len(missing), "timesteps": len(store.spec.timesteps),
               "vectors": store.vectors_written(), "bytes_on_disk": store.nbytes_stored(),
               "seconds": round(time.time() - start, 1)}
    create_table_artifact([summary], key="harvest-summary", description="Harvest summary")
    if store.missing_units():
        raise RuntimeError(f"harvest ended with units still missing: {store.missing_units()}")
    return summary


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m flows.harvest", description=harvest.__doc__)
    parser.add_argument("--config", help="YAML file of HarvestConfig options")
    parser.add_argument("--store", default="runs/default/activations/harvest.zarr",
                        help="activation store path or fsspec URL")
    parser.add_argument("--shards", type=int, default=2,
                        help="parallel shards (each runs config.threads torch threads)")
    parser.add_argument("--dask-address", help="Dask scheduler to run the shards on")
    parser.add_argument("--force", action="store_true", help="overwrite a store of another configuration")
    args = parser.parse_args(argv)
    config = HarvestConfig.from_yaml(args.config) if args.config else HarvestConfig()
    print(harvest(config, args.store, args.shards, args.dask_address, args.force))


if __name__ == "__main__":
    main()
