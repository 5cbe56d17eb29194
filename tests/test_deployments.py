"""Deployments: prefect.yaml follows configs/pipeline.yaml, `prefect deploy --all` succeeds
against a real server, serving beside it leaves the deployed ones alone, and a stage's
deployment runs on a process worker."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from flows.deployments import CONFIG, parameters, prefect_yaml
from saeuron.run import PipelineConfig
from saeuron.sae import SAEConfig, SparseAutoencoder
from stores import HOOK, as_harvested, synthetic_store

ROOT = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def test_the_configs_are_the_defaults_and_prefect_yaml_follows_them():
    config = PipelineConfig.from_yaml(ROOT / CONFIG)
    assert config == PipelineConfig(), "configs/pipeline.yaml states the defaults"
    assert (ROOT / "prefect.yaml").read_text() == prefect_yaml(config), \
        "prefect.yaml is stale: python -m flows.deployments write"
    params = parameters(config)
    assert params["score"]["config"]["top_n"] == config.score.top_n
    assert params["harvest"]["score_seeds"] == config.score_seeds


def _prefect(*args: str, env: dict, timeout: int = 300) -> str:
    out = subprocess.run([PREFECT, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _deployment(client, name: str):
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def test_deploy_all_and_run_a_stage_on_a_process_worker(tmp_path, prefect_api):
    from prefect.client.orchestration import get_client

    env = {**os.environ, "SAEURON_ROOT": str(ROOT), "PREFECT_API_URL": prefect_api}
    _prefect("work-pool", "create", "saeuron", "--type", "process", "--overwrite", env=env)
    deployed = _prefect("deploy", "--all", env=env)
    for name in ("pipeline", "harvest", "train", "score", "evaluate", "benchmark"):
        assert f"'{name}/{name}'" in deployed or f"{name}/{name}" in deployed
    with get_client(sync_client=True) as client:
        pipeline = client.read_deployment_by_name("pipeline/pipeline")
        assert [s.schedule.cron for s in pipeline.schedules] == ["0 3 * * *"]
    served = subprocess.Popen([sys.executable, "-m", "flows.deployments", "serve"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with get_client(sync_client=True) as client:
            deadline = time.time() + 300
            while not _deployment(client, "score/served"):
                assert served.poll() is None and time.time() < deadline, "serve never registered"
                time.sleep(0.5)
    finally:
        served.terminate()
        served.wait(timeout=60)
    with get_client(sync_client=True) as client:
        for name in ("pipeline", "harvest", "train", "score", "evaluate"):
            deployment = client.read_deployment_by_name(f"{name}/{name}")
            assert not deployment.paused and deployment.entrypoint.startswith("flows/"), \
                f"serving left {name}/{name} as deploy made it"
        assert all(s.active for s in client.read_deployment_by_name("pipeline/pipeline").schedules)

    store = str(tmp_path / "run" / "acts.zarr")
    synthetic_store(store, n=24)
    layout = as_harvested(tmp_path / "run", store)
    torch.manual_seed(0)
    SparseAutoencoder(SAEConfig(d_in=8, expansion_factor=4, k=4)).save(layout.sae_dir / HOOK)
    layout.finish("train", "sae-0", {HOOK: str(layout.sae_dir / HOOK)}, {}, 0.0, upstream={})
    params = {"run": {"root": str(tmp_path / "run")},
              "config": {"top_n": 2, "hooks": {"style": HOOK, "object": HOOK},
                         "sweep": {"style": None, "object": None}}}
    out = _prefect("deployment", "run", "score/score", "--params", json.dumps(params), env=env)
    flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    _prefect("worker", "start", "--pool", "saeuron", "--run-once", env=env, timeout=600)
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state.is_completed(), state
    manifest = json.loads((tmp_path / "run" / "manifests" / "score.json").read_text())
    assert manifest["metrics"][HOOK]["style_concepts"] == 3
