"""The run's Zarr stores on an object store: harvest shards and scoring run on Dask worker
processes that read and write an S3 bucket (a local moto server, through s3fs), and give the
bytes and scores of a run on local disk."""

import logging
from pathlib import Path

import numpy as np
import pytest
import zarr

from saeuron.harvest import HarvestConfig
from saeuron.run import RunConfig
from saeuron.sae import SparseAutoencoder
from saeuron.sae_train import SAETrainConfig
from saeuron.scoring import DomainHooks, DomainSweeps, ScoreConfig, concept_means
from storage.activations import ActivationStore
from storage.features import read_features, sae_fingerprint


HOOK = "up_blocks.1.attentions.1"
BUCKET = "saeuron-runs"


@pytest.fixture
def s3(monkeypatch):
    """A local S3-compatible server with one empty bucket; its endpoint and credentials are in
    the environment, so processes started now (Dask workers) reach it too."""
    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL_S3": endpoint}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        close_async_clients(s3fs.S3FileSystem)
        s3fs.S3FileSystem.clear_instance_cache()  # no client of this endpoint outlives it
        server.stop()


def close_async_clients(cls) -> None:
    """Close the clients of the asynchronous instances zarr made (on zarr's event loop), which
    nothing else closes: otherwise aiohttp reports their sessions unclosed at exit."""
    from zarr.core.sync import sync

    for fs in list(cls._cache.values()):
        client = getattr(fs, "_s3", None)
        if fs.asynchronous and client is not None:
            sync(client.close())


def raw(url: str) -> np.ndarray:
    return zarr.open_group(url, mode="r")[HOOK][:].view(np.uint16)


def test_stores_on_s3_with_dask_worker_processes(s3, fresh_pipeline_dir, tmp_path, prefect_api):
    from distributed import Client, LocalCluster

    from flows.harvest import harvest
    from flows.score import score
    from flows.train import train

    config = HarvestConfig(model=str(fresh_pipeline_dir), objects=["circle", "star", "moon"],
                           styles=["sunset", "pop", "none"], templates=1, num_steps=3,
                           n_seeds=2, samples_per_chunk=6, hooks=[HOOK])
    local = harvest(config, RunConfig(root=str(tmp_path / "local")), score_seeds=1)

    root = tmp_path / "run"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        run = RunConfig(root=str(root), stores=f"s3://{BUCKET}/run",
                        dask_address=cluster.scheduler_address, shards=2)
        harvested = harvest(config, run, score_seeds=1)
        trained = train(SAETrainConfig(hooks=[HOOK], expansion_factor=2, k=4, aux_k=8,
                                       batch_size=256, epochs=2, holdout=0.2, buffer_size=512), run)
        scored = score(ScoreConfig(hooks=DomainHooks(style=HOOK, object=HOOK), top_n=2,
                                   sweep=DomainSweeps()), run)
        # Seconds of computation the workers reported, by task name: what ran on them.
        computed = client.run_on_scheduler(
            lambda dask_scheduler: {name.replace("-", "_"): p.all_durations.get("compute", 0.0)
                                    for name, p in dask_scheduler.task_prefixes.items()})
        workers = len(cluster.workers)

    # Harvest: both stores on S3, none on the local root, bytes equal to the local harvest's.
    assert harvested["outputs"] == {"harvest": f"s3://{BUCKET}/run/activations/harvest.zarr",
                                    "score": f"s3://{BUCKET}/run/activations/score.zarr"}
    assert harvested["metrics"] == local["metrics"]
    assert harvested["metrics"]["harvest_samples"] == 18 and harvested["metrics"]["score_samples"] == 9
    s3.invalidate_cache()
    assert sorted(Path(p).name for p in s3.ls(f"{BUCKET}/run/activations")) == \
        ["harvest.zarr", "score.zarr"]
    assert not (root / "activations").exists()
    for split in ("harvest", "score"):
        store = ActivationStore.open(harvested["outputs"][split])
        assert store.missing_units() == []
        assert np.array_equal(raw(harvested["outputs"][split]), raw(local["outputs"][split]))
    assert workers == 2
    assert computed.get("harvest_shard", 0) > 0, computed  # the shards ran on the workers

    # Train read the S3 store; its SAE is local. Score ran on the cluster into S3.
    sae_folder = root / "sae" / HOOK
    assert trained["outputs"] == {HOOK: str(sae_folder)}
    assert (sae_folder / "sae.safetensors").is_file()
    features = scored["outputs"]["style"]
    assert features == f"s3://{BUCKET}/run/features/{HOOK}.zarr"
    s3.invalidate_cache()
    assert [Path(p).name for p in s3.ls(f"{BUCKET}/run/features")] == [f"{HOOK}.zarr"]
    assert not (root / "features").exists()
    assert computed.get("from_zarr", 0) > 0, computed  # the workers read the S3 chunks
    attrs, mean_all, domains = read_features(features, sae_fingerprint(sae_folder))
    assert attrs["hook"] == HOOK

    # The cluster's scores equal a threaded pass over the local copy of the scoring split.
    expected = concept_means(ActivationStore.open(local["outputs"]["score"]), HOOK,
                             SparseAutoencoder.load(sae_folder))
    for name, d in domains.items():
        assert d.concepts == expected[name].concepts
        np.testing.assert_allclose(d.mean, expected[name].means, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mean_all, expected[name].mean_all, rtol=1e-5, atol=1e-6)
        assert (d.selected.sum(-1) <= 2).all() and d.selected.any()
