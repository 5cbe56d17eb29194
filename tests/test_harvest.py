"""Harvest: store contents, captured values, bad input, resume after SIGKILL, Dask shards."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from saeuron.capture import Capture
from saeuron.names import TEXT_HOOK
from saeuron.harvest import HarvestConfig, open_store, prepare, run_units
from saeuron.diffusion import load_pipeline
from saeuron.run import RunConfig
from saeuron.sampling import SamplingConfig, initial_latents, make_scheduler, sample, schedule_timesteps
from storage.activations import ActivationStore, StoreMismatchError
from storage.arrays import StoreCorruptError
from storage.layout import RunLayout

ROOT = Path(__file__).resolve().parents[1]
HOOK = "up_blocks.1.attentions.1"


def small_config(model_dir, **options) -> HarvestConfig:
    base = dict(model=str(model_dir), hooks=[HOOK], objects=["circle", "star"],
                styles=["sunset", "none"], templates=1, n_seeds=2, num_steps=4, samples_per_chunk=2)
    return HarvestConfig(**{**base, **options})


def harvest_all(cfg: HarvestConfig, url: str) -> ActivationStore:
    h = prepare(cfg)
    store = open_store(h, url)
    run_units(h, store, list(range(store.n_units)))
    return store


def raw(url: str, hook: str = HOOK) -> np.ndarray:
    return zarr.open_group(url, mode="r")[hook][:].view(np.uint16)


def test_minicanvas_store_is_a_labelled_dataset(fresh_pipeline_dir, tmp_path):
    cfg = small_config(fresh_pipeline_dir)
    url = str(tmp_path / "acts.zarr")
    store = harvest_all(cfg, url)
    assert store.missing_units() == []
    ds = xr.open_zarr(url)
    acts = ds[HOOK]
    assert acts.dims == ("sample", "timestep", "position", "feature")
    assert acts.dtype == np.float16
    assert acts.shape == (8, 4, 64, 64)
    assert acts.chunks[0] == (2, 2, 2, 2) and acts.chunks[1] == (4,)
    schedule = schedule_timesteps(load_pipeline(fresh_pipeline_dir), 4)
    assert list(ds.timestep.values) == schedule
    table = prepare(cfg).table
    assert list(ds.object.values) == list(table.object)
    assert list(ds["style"].values) == list(table["style"])
    assert list(ds.seed.values) == list(table.seed)
    assert "a circle in sunset style" in list(ds.prompt.values)
    assert np.isfinite(acts.values.astype(np.float32)).all()


@pytest.mark.parametrize("which", ["minicanvas", "sd"])
def test_captured_values_equal_the_block_outputs(which, fresh_pipeline_dir, tiny_sd_dir):
    """The last up block feeds conv_out directly, so its captured conditional output, pushed
    through the UNet's head, must equal a direct UNet call's conditional prediction."""
    pipe = load_pipeline(fresh_pipeline_dir if which == "minicanvas" else tiny_sd_dir)
    last = f"up_blocks.{len(pipe.unet.up_blocks) - 1}"
    prompts = ["a circle in sunset style", "a star"] if which == "minicanvas" else ["a cat.", "a dog."]
    seeds = [3, 4]
    first = schedule_timesteps(pipe, 5)[0]
    with Capture(pipe.unet, [last], timesteps=[first]) as cap:
        sample(pipe, prompts, seeds, num_steps=5, guidance=3.0, precision="float32")
    steps, acts = cap.take()
    assert steps == [first]
    b, t, p, f = acts[last].shape
    side = int(p ** 0.5)
    fmap = torch.from_numpy(acts[last][:, 0]).transpose(1, 2).reshape(b, f, side, side)
    unet = pipe.unet
    with torch.no_grad():
        head = unet.conv_out(unet.conv_act(unet.conv_norm_out(fmap)))
        scheduler = make_scheduler(pipe, 5)
        latents = initial_latents(pipe, seeds) * scheduler.init_noise_sigma
        direct = unet(scheduler.scale_model_input(latents, first), first,
                      encoder_hidden_states=pipe.encode_prompts(prompts)).sample
    torch.testing.assert_close(head, direct, rtol=1e-4, atol=1e-4)


def test_hooks_of_different_shapes_share_one_store(fresh_pipeline_dir, tmp_path):
    """An 8x8 and a 4x4 block in one pass: each keeps its shape, xarray opens both."""
    small = "up_blocks.0.attentions.1"
    url = str(tmp_path / "acts.zarr")
    harvest_all(small_config(fresh_pipeline_dir, hooks=[HOOK, small]), url)
    ds = xr.open_zarr(url)
    assert ds[HOOK].dims[2:] == ("position_64", "feature_64") and ds[HOOK].shape[2:] == (64, 64)
    assert ds[small].dims[2:] == ("position_16", "feature_128") and ds[small].shape[2:] == (16, 128)
    alone = harvest_all(small_config(fresh_pipeline_dir, hooks=[small]), str(tmp_path / "b.zarr"))
    assert np.array_equal(ds[small].values, alone.group[small][:])

def test_the_text_hook_stores_each_prompts_encoding_at_every_step(fresh_pipeline_dir, tmp_path):
    """The 'text' hook is what every cross-attention block reads: each sample's prompt encoded,
    one vector per token, the same at every kept timestep; 'delta' is refused before sampling."""
    cfg = small_config(fresh_pipeline_dir, hooks=[TEXT_HOOK, HOOK])
    store = harvest_all(cfg, str(tmp_path / "acts.zarr"))
    pipe = load_pipeline(fresh_pipeline_dir)
    text = store.group[TEXT_HOOK][:].astype(np.float32)
    with torch.no_grad():
        encoded = pipe.encode_prompts(list(store.labels().prompt)).numpy()
    assert text.shape == (len(encoded), 4, *encoded.shape[1:])
    for t in range(text.shape[1]):
        np.testing.assert_allclose(text[:, t], encoded, atol=2e-3, rtol=1e-3)  # float16 store
    with pytest.raises(ValueError, match="capture 'delta' has no meaning at the 'text' hook"):
        small_config(fresh_pipeline_dir, hooks=[TEXT_HOOK], capture="delta")


def test_delta_is_output_minus_input(tiny_sd_dir):
    """Inside an up block, attentions.1 reads what resnets.1 wrote."""
    pipe = load_pipeline(tiny_sd_dir)
    runs = {}
    for mode, blocks in (("output", [HOOK, "up_blocks.1.resnets.1"]), ("delta", [HOOK])):
        with Capture(pipe.unet, blocks, mode=mode) as cap:
            sample(pipe, ["a cat."], [1], num_steps=3, precision="float32")
        runs[mode] = cap.take()[1]
    np.testing.assert_allclose(runs["delta"][HOOK],
                               runs["output"][HOOK] - runs["output"]["up_blocks.1.resnets.1"],
                               atol=1e-5)


def test_sd_checkpoint_harvest(tiny_sd_dir, tmp_path):
    import yaml

    world = tmp_path / "unlearncanvas.yaml"
    world.write_text(yaml.safe_dump({
        "model": str(tiny_sd_dir), "benchmark": "unlearncanvas",
        "hooks": {"style": "up_blocks.1.attentions.1", "object": "up_blocks.1.attentions.0"},
        "judge": {"kind": "clip", "path": str(tmp_path)}}))  # the harvest does not judge
    cfg = HarvestConfig(model=str(world), grid=str(world), objects=["Cats", "Dogs"],
                        styles=["Monet", "none"], n_seeds=1, num_steps=3, samples_per_chunk=2,
                        hooks=["up_blocks.1.attentions.1", "up_blocks.1.attentions.0"],
                        timesteps=None)
    store = harvest_all(cfg, str(tmp_path / "sd.zarr"))
    ds = xr.open_zarr(str(tmp_path / "sd.zarr"))
    assert set(store.spec.hooks) == {"up_blocks.1.attentions.1", "up_blocks.1.attentions.0"}
    assert ds["up_blocks.1.attentions.0"].shape == (4, 3, 16, 32)
    assert list(ds.prompt.values)[0] == "An Cats image in Monet style."


def test_bad_input_fails_before_sampling(fresh_pipeline_dir):
    with pytest.raises(ValueError, match=r"unknown block\(s\) \['up_blocks.9'\].*up_blocks.1.attentions.1"):
        prepare(small_config(fresh_pipeline_dir, hooks=["up_blocks.9"]))
    with pytest.raises(ValueError, match=r"timestep\(s\) \[500\] are not in the 4-step schedule"):
        prepare(small_config(fresh_pipeline_dir, timesteps=[500]))
    with pytest.raises(ValueError, match=r"unknown object\(s\) \['dragon'\].*circle"):
        prepare(small_config(fresh_pipeline_dir, objects=["dragon"]))
    with pytest.raises(ValueError, match=r"unknown style\(s\) \['baroque'\]"):
        prepare(small_config(fresh_pipeline_dir, styles=["baroque"]))
    with pytest.raises(ValueError, match="empty minicanvas grid"):
        prepare(small_config(fresh_pipeline_dir, objects=[]))


def test_store_of_another_configuration_is_refused_unless_forced(fresh_pipeline_dir, tmp_path):
    url = str(tmp_path / "acts.zarr")
    harvest_all(small_config(fresh_pipeline_dir), url)
    before = raw(url)
    other = prepare(small_config(fresh_pipeline_dir), SamplingConfig(guidance=2.0))
    with pytest.raises(StoreMismatchError, match="another configuration"):
        open_store(other, url)
    assert np.array_equal(raw(url), before), "a refused harvest leaves the store untouched"
    forced = open_store(other, url, force=True)
    assert forced.missing_units() == list(range(4))


def test_damaged_chunks_are_detected_and_reharvested(fresh_pipeline_dir, tmp_path, prefect_api):
    from flows.harvest import harvest

    cfg, run = small_config(fresh_pipeline_dir), RunConfig(root=str(tmp_path))
    harvest(cfg, run, score_seeds=1)
    url = str(tmp_path / "activations" / "harvest.zarr")
    before = raw(url)
    chunk = [tmp_path / "activations" / "harvest.zarr" / HOOK / "c" / str(u) / "0" / "0" / "0"
             for u in range(3)]
    flipped = bytearray(chunk[0].read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    chunk[0].write_bytes(bytes(flipped))
    chunk[1].write_bytes(chunk[1].read_bytes()[: chunk[1].stat().st_size // 2])
    chunk[2].unlink()
    store = ActivationStore.open(url)
    for unit, what in ((0, "fails to decode"), (1, "fails to decode"), (2, "is missing")):
        with pytest.raises(StoreCorruptError, match=f"write unit {unit} of {HOOK} {what}"):
            store.read_unit(HOOK, unit)
    assert store.damaged_units() == [0, 1, 2]
    with pytest.raises(StoreCorruptError, match=r"train needs the harvest stage's outputs as it "
                                                r"made them, but .*harvest.zarr changed"):
        RunLayout(root=str(tmp_path)).upstream("harvest", "train")  # before training deletes anything
    again = harvest(cfg, run, score_seeds=1)
    assert again["metrics"]["harvest_samples"] == 8, "ran, not cached"
    assert ActivationStore.open(url).damaged_units() == []
    assert np.array_equal(raw(url), before), "the damaged units are written again as they were"


def _flow_cmd(cfg_file: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "flows.harvest", "--config", str(cfg_file), "--root", str(root)]


def test_killed_harvest_resumes_to_identical_bytes(fresh_pipeline_dir, tmp_path, prefect_api):
    cfg = small_config(fresh_pipeline_dir, n_seeds=8, num_steps=8)  # 32 samples, 16 units
    cfg_file = tmp_path / "harvest.yaml"
    cfg_file.write_text(cfg.to_yaml())
    whole = str(tmp_path / "whole.zarr")
    harvest_all(cfg, whole)
    root = tmp_path / "run"
    killed = str(root / "activations" / "harvest.zarr")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_flow_cmd(cfg_file, root), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = 0
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        store = ActivationStore.open_existing(killed)
        done = 0 if store is None else int(store.done().sum())
        if done >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 <= done < 16, f"the harvest was killed part-way ({done} of 16 units done)"

    subprocess.run(_flow_cmd(cfg_file, root), cwd=ROOT, env=env, check=True, capture_output=True)
    assert ActivationStore.open(killed).missing_units() == []
    assert np.array_equal(raw(killed), raw(whole))
    manifest = json.loads((root / "manifests" / "harvest.json").read_text())
    assert manifest["metrics"]["harvest_samples"] == 32 and manifest["metrics"]["score_samples"] == 4


def test_two_dask_workers_write_the_same_store_as_a_serial_run(fresh_pipeline_dir, tmp_path,
                                                               prefect_api):
    from distributed import LocalCluster

    from flows.harvest import harvest

    cfg = small_config(fresh_pipeline_dir)
    serial = str(tmp_path / "serial.zarr")
    harvest_all(cfg, serial)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        run = RunConfig(root=str(tmp_path / "run"), dask_address=cluster.scheduler_address)
        manifest = harvest(cfg, run, score_seeds=1)
        workers = len(cluster.workers)
    assert workers == 2
    assert manifest["metrics"] == {"harvest_samples": 8, "harvest_vectors": 8 * 4 * 64,
                                   "model": str(fresh_pipeline_dir),
                                   "score_samples": 4, "score_vectors": 4 * 4 * 64}
    assert np.array_equal(raw(manifest["outputs"]["harvest"]), raw(serial))


def test_weights_replaced_in_place_change_the_harvest_fingerprint(fresh_pipeline_dir, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(fresh_pipeline_dir, model)
    before = small_config(model).fingerprint(SamplingConfig())
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    assert small_config(model).fingerprint(SamplingConfig()) != before, "the same folder with other weights"
