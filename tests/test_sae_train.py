"""The streaming loader and SAE training on real Zarr stores written in the test."""

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
from safetensors.torch import load_file

from saeuron.loader import VectorStream
from saeuron.sae_train import CHECKPOINT, SAETrainConfig, SAETrainer
from stores import HOOK, as_harvested, synthetic_store

ROOT = Path(__file__).resolve().parents[1]


def test_loader_visits_every_vector_of_an_epoch_exactly_once(tmp_path):
    store = synthetic_store(str(tmp_path / "ids.zarr"), ids=True)
    stream = VectorStream(store, HOOK, batch_size=5, buffer_size=7, seed=3)
    seen = np.concatenate([b[:, 0].numpy() for b in stream.epoch(0)])
    assert sorted(seen.tolist()) == list(range(12 * 3 * 4))
    assert not np.array_equal(seen, np.sort(seen)), "the order is shuffled"
    again = np.concatenate([b[:, 0].numpy() for b in stream.epoch(0)])
    assert np.array_equal(seen, again), "deterministic for a seed and epoch"
    other = np.concatenate([b[:, 0].numpy() for b in stream.epoch(1)])
    assert not np.array_equal(seen, other), "another epoch, another order"
    skipped = np.concatenate([b[:, 0].numpy() for b in stream.epoch(0, skip=4)])
    assert np.array_equal(skipped, seen[4 * 5:]), "skipping resumes the same stream"


def test_loader_restricts_to_samples_and_timesteps(tmp_path):
    store = synthetic_store(str(tmp_path / "ids.zarr"), ids=True)
    stream = VectorStream(store, HOOK, batch_size=8, seed=0, samples=np.array([1, 6]),
                          timesteps=[800])
    seen = sorted(np.concatenate([b[:, 0].numpy() for b in stream.epoch(0)]).tolist())
    expected = [s * 12 + 1 * 4 + pos for s in (1, 6) for pos in range(4)]
    assert seen == expected
    assert batches_dtype(stream) == torch.float32


def batches_dtype(stream: VectorStream) -> torch.dtype:
    return next(iter(stream.epoch(0))).dtype


def test_loader_bad_input(tmp_path):
    store = synthetic_store(str(tmp_path / "ids.zarr"), ids=True)
    with pytest.raises(ValueError, match="no hook 'mid_block'"):
        VectorStream(store, "mid_block", batch_size=4)
    with pytest.raises(ValueError, match="selects no sample"):
        VectorStream(store, HOOK, batch_size=4, samples=np.array([], dtype=int))
    with pytest.raises(ValueError, match=r"timestep\(s\) \[5\] are not in the store"):
        VectorStream(store, HOOK, batch_size=4, timesteps=[5])


def small_cfg(**options) -> SAETrainConfig:
    base = dict(hooks=[HOOK], expansion_factor=4, k=4, aux_k=4, batch_size=32, epochs=3, dead_after=200,
                buffer_size=64, holdout=0.25, metrics_every=5, checkpoint_every=5, lr=3e-3)
    return SAETrainConfig(**{**base, **options})


def test_training_learns_the_dictionary(tmp_path):
    store = synthetic_store(str(tmp_path / "mix.zarr"), n=48)
    trainer = SAETrainer(store, small_cfg(epochs=30), HOOK, tmp_path / "sae")
    before = trainer.evaluate()
    trainer.run()
    after = trainer.evaluate()
    assert after.fvu < 0.5 * before.fvu, (before, after)
    assert after.l0 <= 4
    lines = (tmp_path / "sae" / "metrics.jsonl").read_text().splitlines()
    assert {"fvu", "l0", "dead_fraction", "auxk"} <= set(json.loads(lines[-1]))


def test_bad_training_input(tmp_path):
    store = synthetic_store(str(tmp_path / "mix.zarr"))
    with pytest.raises(ValueError, match="no hook 'mid_block'"):
        SAETrainer(store, small_cfg(), "mid_block", tmp_path / "a")
    with pytest.raises(ValueError, match="k = 64 is larger than the number of latents 32"):
        SAETrainer(store, small_cfg(k=64), HOOK, tmp_path / "b")
    with pytest.raises(ValueError, match="selects no sample"):
        SAETrainer(store, small_cfg(holdout=0.999), HOOK, tmp_path / "c")
    SAETrainer(store, small_cfg(epochs=1), HOOK, tmp_path / "d").run()
    wide = synthetic_store(str(tmp_path / "wide.zarr"), f=16)
    with pytest.raises(ValueError, match="width 8, but hook .* has width 16"):
        SAETrainer(wide, small_cfg(epochs=1), HOOK, tmp_path / "d")


def _train_cmd(cfg_file: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "flows.train", "--config", str(cfg_file), "--root", str(root)]


def test_killed_training_resumes_to_the_same_weights(tmp_path, prefect_api):
    cfg_file = tmp_path / "sae.yaml"
    cfg_file.write_text(small_cfg(epochs=6, checkpoint_every=3).to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for root in ("whole", "killed"):  # the same store in each run's own root
        store_url = str(tmp_path / root / "mix.zarr")
        synthetic_store(store_url, n=96)
        as_harvested(tmp_path / root, store_url)
    subprocess.run(_train_cmd(cfg_file, tmp_path / "whole"), cwd=ROOT, env=env,
                   check=True, capture_output=True)
    proc = subprocess.Popen(_train_cmd(cfg_file, tmp_path / "killed"), cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "sae" / HOOK / CHECKPOINT
    step = 0
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.is_file():
            step = torch.load(checkpoint, weights_only=False)["step"]
            if step >= 9:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    total = torch.load(tmp_path / "whole" / "sae" / HOOK / CHECKPOINT, weights_only=False)["step"]
    assert 9 <= step < total, f"killed part-way (step {step} of {total})"
    with open(tmp_path / "killed" / "sae" / HOOK / "metrics.jsonl", "a") as log:
        log.write('{"step": 1')  # what a kill in the middle of a log line leaves
    subprocess.run(_train_cmd(cfg_file, tmp_path / "killed"), cwd=ROOT, env=env,
                   check=True, capture_output=True)
    a = load_file(tmp_path / "whole" / "sae" / HOOK / "sae.safetensors")
    b = load_file(tmp_path / "killed" / "sae" / HOOK / "sae.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
