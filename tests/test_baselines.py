"""The baselines' defining properties: the negative prompt, SLD's safety guidance, UCE's
closed-form edit, ESD-x's fine-tuning (and its resume after kill -9)."""

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

from saeuron.baselines import ESDX, UCE, NegativePrompt, SafeGuidance, concept_tokens, \
    key_value_projections
from saeuron.esd import CHECKPOINT, ESDConfig, cross_attention, train_esd, training_seconds
from saeuron.minicanvas.world import minicanvas_grid
from saeuron.sampling import SafetyGuidance, sample

ROOT = Path(__file__).resolve().parents[1]
MC = minicanvas_grid()
PROMPTS, SEEDS = ["a star in sketch style", "a moon in neon style"], [3, 4]
EXACT = dict(num_steps=3, guidance=4.0, precision="float32")


def test_a_negative_prompt_of_nothing_is_plain_sampling_and_of_the_target_is_not(pipe, tmp_path):
    plain = sample(pipe, PROMPTS, SEEDS, **EXACT)
    nothing = NegativePrompt().unlearn(pipe, MC, "style", [], 0.0, tmp_path)
    assert np.array_equal(nothing.sample(PROMPTS, SEEDS, **EXACT), plain)
    sketch = NegativePrompt().unlearn(pipe, MC, "style", ["sketch"], 0.0, tmp_path)
    assert sketch.options == {"negative": "sketch"}
    assert not np.array_equal(sketch.sample(PROMPTS, SEEDS, **EXACT), plain)


def test_safety_guidance_steers_away_only_where_the_prompt_is_near_the_concept():
    eps_u = torch.zeros(4)
    eps_s = torch.ones(4)
    eps_c = torch.tensor([2.0, 1.0, 0.9999, -3.0])  # far above, equal, just below, far below
    guidance = SafetyGuidance("sketch", scale=1000.0, threshold=0.01, momentum_scale=0.0)
    away, momentum = guidance.term(eps_u, eps_c, eps_s, torch.zeros(4))
    # gap = eps_c - eps_s: >= threshold -> no term; else min(1, |gap| * scale) * (eps_s - eps_u)
    torch.testing.assert_close(away, torch.tensor([0.0, 0.0, 0.1, 1.0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(momentum, 0.6 * away)
    with_momentum = SafetyGuidance("sketch", momentum_scale=0.3, momentum_beta=0.4)
    away, _ = with_momentum.term(eps_u, eps_c, eps_s, torch.ones(4))
    torch.testing.assert_close(away[0], torch.tensor(0.3)), "the momentum carries on"


def test_safety_guidance_changes_nothing_before_its_warmup_ends(pipe, tmp_path):
    plain = sample(pipe, PROMPTS, SEEDS, **EXACT)
    late = SafeGuidance(warmup=3).unlearn(pipe, MC, "style", ["sketch"], 1000.0, tmp_path)
    # the third branch changes the batch, so only float rounding may differ
    assert np.abs(late.sample(PROMPTS, SEEDS, **EXACT).astype(int) - plain).max() <= 1
    early = SafeGuidance(warmup=0).unlearn(pipe, MC, "style", ["sketch"], 5000.0, tmp_path)
    assert np.abs(early.sample(PROMPTS, SEEDS, **EXACT).astype(int) - plain).max() > 1


def uce_effect(pipe, tmp_path, preserve: float) -> tuple[float, float, UCE]:
    """(the largest relative change of a kept concept's key / value projections, the largest
    remaining distance of sketch's projections to the guide's, as a share of the unedited one),
    over every cross-attention projection, after UCE removes sketch; and the edited model."""
    edited = UCE().unlearn(pipe, MC, "style", ["sketch"], preserve, tmp_path)
    after = key_value_projections(edited.pipe.unet)
    sketch, guide = concept_tokens(pipe, "sketch"), concept_tokens(pipe, "")
    drift, left = [], []
    for name, layer in key_value_projections(pipe.unet).items():
        w, new = layer.weight.detach(), after[name].weight.detach()
        for kept in ("neon", "star", "pastel"):
            c = concept_tokens(pipe, kept)
            drift.append(float((c @ new.T - c @ w.T).norm() / (c @ w.T).norm()))
        target = guide[:len(sketch)] @ w.T
        left.append(float((sketch @ new.T - target).norm() / (sketch @ w.T - target).norm()))
    return max(drift), max(left), edited


def test_uce_keeps_the_other_concepts_projections_and_moves_the_target_to_the_guide(pipe,
                                                                                   tmp_path):
    drift, left, edited = uce_effect(pipe, tmp_path, 1.0)
    assert drift < 0.1, "the kept concepts' projections stay within 10%"
    assert left < 0.6, "the target's projections move most of the way to the guide's"
    assert edited.added_bytes > 0
    firm, firm_left, _ = uce_effect(pipe, tmp_path, 10.0)
    assert firm < drift and firm_left > left, "the preserve weight trades one for the other"
    assert all(torch.equal(p, q) for (k, p), (_, q) in zip(pipe.unet.named_parameters(),
                                                            edited.pipe.unet.named_parameters())
               if not k.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))), \
        "only the cross-attention's key and value projections change"


def small_esd(**options) -> ESDConfig:
    return ESDConfig(steps=6, batch_size=2, num_steps=4, lr=1e-3, checkpoint_every=2, **options)


def test_esd_x_trains_only_the_cross_attention_away_from_the_concept(pipe, tmp_path):
    method = ESDX(train=small_esd(), checkpoints=[3, 6])
    unlearned = method.unlearn(pipe, MC, "style", ["sketch"], 6.0, tmp_path / "esd")
    trained = dict(unlearned.pipe.unet.named_parameters())
    changed = {k for k, p in pipe.unet.named_parameters() if not torch.equal(p, trained[k])}
    assert changed and changed <= set(cross_attention(pipe.unet)), "ESD-x: attn2 only"
    assert unlearned.added_bytes == sum(p.numel() * 4 for p in cross_attention(pipe.unet).values())
    snapshots = {s: load_file(tmp_path / "esd" / f"step-{s}.safetensors") for s in (3, 6)}
    assert any(not torch.equal(snapshots[3][k], snapshots[6][k]) for k in snapshots[3])
    again = method.unlearn(pipe, MC, "style", ["sketch"], 3.0, tmp_path / "esd")
    assert all(torch.equal(dict(again.pipe.unet.named_parameters())[k], v)
               for k, v in snapshots[3].items()), "a candidate is a snapshot of the one run"
    assert unlearned.reused_seconds == 0 and again.reused_seconds > 0, \
        "a run that reuses the training on disk still counts its seconds"
    assert again.reused_seconds == training_seconds(tmp_path / "esd")
    with pytest.raises(ValueError, match="go beyond the 6 training steps"):
        ESDX(train=small_esd(), checkpoints=[3, 9])


ESD_RUN = """
import sys
from saeuron.diffusion import load_pipeline
from saeuron.esd import ESDConfig, train_esd
from saeuron.threads import torch_threads
cfg = ESDConfig.model_validate_json(sys.argv[3])
with torch_threads(1):
    train_esd(load_pipeline(sys.argv[1]), ["a star in sketch style", "a moon in sketch style"],
              cfg, sys.argv[2], snapshots=[4])
"""


def test_killed_esd_training_resumes_to_the_weights_of_an_uninterrupted_run(fresh_pipeline_dir,
                                                                           tmp_path):
    cfg = ESDConfig(steps=40, batch_size=2, num_steps=4, lr=1e-3, checkpoint_every=3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(folder: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", ESD_RUN, str(fresh_pipeline_dir),
                                 str(folder), cfg.model_dump_json()], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    assert run(tmp_path / "whole").wait() == 0
    killed = run(tmp_path / "killed")
    deadline, step = time.time() + 300, 0
    while time.time() < deadline and killed.poll() is None:
        if (tmp_path / "killed" / CHECKPOINT).is_file():
            step = torch.load(tmp_path / "killed" / CHECKPOINT, weights_only=True)["step"]
            if step >= 9:
                break
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert 9 <= step < cfg.steps, f"killed part-way (step {step} of {cfg.steps})"
    assert run(tmp_path / "killed").wait() == 0
    for name in ("step-4.safetensors", f"step-{cfg.steps}.safetensors"):
        a, b = load_file(tmp_path / "whole" / name), load_file(tmp_path / "killed" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
