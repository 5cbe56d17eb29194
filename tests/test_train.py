"""A short real training run learns, and a run killed with SIGKILL resumes exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saeuron.minicanvas.train import CHECKPOINT, LOG, DiffusionTrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[1]


def test_short_training_lowers_the_loss(tmp_path):
    cfg = DiffusionTrainConfig(steps=40, batch_size=16, warmup=0, lr=2e-3, seeds=2,
                               checkpoint_every=1000)
    Trainer(cfg, tmp_path, log=lambda _: None).run()
    losses = [json.loads(line)["loss"] for line in (tmp_path / LOG).read_text().splitlines()]
    assert len(losses) == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.7 * first, (first, last)


def _train_cmd(workdir: Path, out: Path, config: Path) -> list[str]:
    return [sys.executable, "-m", "saeuron.minicanvas", "train-model", "--config", str(config),
            "--workdir", str(workdir), "--out", str(out), "--judge", str(workdir / "no-judge")]


def test_killed_training_resumes_to_the_same_weights(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(DiffusionTrainConfig(steps=12, batch_size=8, seeds=2, warmup=2,
                                           checkpoint_every=3).to_yaml())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(_train_cmd(whole, tmp_path / "whole-out", config), check=True, env=env,
                   cwd=ROOT, capture_output=True)

    proc = subprocess.Popen(_train_cmd(killed, tmp_path / "killed-out", config), env=env,
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        state = killed / CHECKPOINT
        if state.is_file() and torch.load(state, weights_only=False)["step"] >= 6:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed-out").exists(), "the run was killed before it finished"

    resumed = subprocess.run(_train_cmd(killed, tmp_path / "killed-out", config), check=True,
                             env=env, cwd=ROOT, capture_output=True, text=True)
    assert "resumed from step" in resumed.stdout
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a = load_file(tmp_path / "whole-out" / part)
        b = load_file(tmp_path / "killed-out" / part)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    steps = [json.loads(line)["step"] for line in (killed / LOG).read_text().splitlines()]
    assert steps == list(range(1, 13)), "each step is logged once"


def test_resume_refuses_another_configuration(tmp_path):
    cfg = DiffusionTrainConfig(steps=2, batch_size=4, seeds=1, checkpoint_every=1)
    Trainer(cfg, tmp_path, log=lambda _: None).run()
    with pytest.raises(ValueError, match="checkpoint of another configuration"):
        Trainer(cfg.model_copy(update={"lr": 5e-4}), tmp_path, log=lambda _: None)
