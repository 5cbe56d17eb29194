"""The unlearning hook: no edit is the identity, the rule edits what it should, signs matter."""

import numpy as np
import pytest
import torch

from saeuron.capture import Capture
from saeuron.intervention import Edit, Unlearn
from saeuron.pipeline import load_pipeline
from saeuron.sae import SAEConfig, SparseAutoencoder
from saeuron.sampling import sample, schedule_timesteps

HOOK = "up_blocks.1.attentions.1"
PROMPTS, SEEDS = ["a star in neon style", "a moon", "a ring in pop style"], [5, 6, 7]


@pytest.fixture(scope="module")
def pipe(fresh_pipeline_dir):
    return load_pipeline(fresh_pipeline_dir)


@pytest.fixture(scope="module")
def sae(pipe):
    torch.manual_seed(1)
    return SparseAutoencoder(SAEConfig(d_in=pipe.unet.config.block_out_channels[1],
                                       expansion_factor=4, k=8))


def edit_for(pipe, sae, selected_features=(), multiplier=-1.0, steps=4) -> Edit:
    timesteps = schedule_timesteps(pipe, steps)
    selected = np.zeros((1, len(timesteps), sae.cfg.n_latents), bool)
    selected[..., list(selected_features)] = True
    return Edit.for_concepts(timesteps, selected, np.full(selected.shape, 0.5, np.float32),
                             [multiplier], np.zeros(selected.shape[1:], np.float32))


def test_an_edit_of_nothing_leaves_the_pictures_unchanged(pipe, sae):
    base = sample(pipe, PROMPTS, SEEDS, num_steps=4)
    with Unlearn(pipe.unet, HOOK, sae, edit_for(pipe, sae)):
        same = sample(pipe, PROMPTS, SEEDS, num_steps=4)
    assert np.array_equal(base, same)
    with Unlearn(pipe.unet, HOOK, sae, edit_for(pipe, sae), error_sign=-1):
        reference_sign = sample(pipe, PROMPTS, SEEDS, num_steps=4)
    assert not np.array_equal(base, reference_sign), "the reference code's sign is not a no-op"


def test_the_rule_edits_selected_features_above_the_mean(pipe, sae):
    first = schedule_timesteps(pipe, 4)[0]
    with Capture(pipe.unet, [HOOK], timesteps=[first], cfg=False) as plain:
        sample(pipe, PROMPTS[:1], SEEDS[:1], num_steps=4)
    x = torch.from_numpy(plain.take()[1][HOOK][:, 0]).reshape(-1, sae.cfg.d_in)

    edit = edit_for(pipe, sae, selected_features=range(0, 32, 2), multiplier=-3.0)
    with Unlearn(pipe.unet, HOOK, sae, edit) as unlearn, \
            Capture(pipe.unet, [HOOK], timesteps=[first], cfg=False) as edited:
        sample(pipe, PROMPTS[:1], SEEDS[:1], num_steps=4)
    got = torch.from_numpy(edited.take()[1][HOOK][:, 0]).reshape(-1, sae.cfg.d_in)

    with torch.no_grad():
        z = sae.dense_latents(x)
        z_edit = z.clone()
        cols = torch.arange(0, 32, 2)
        hit = z[:, cols] > 0
        z_edit[:, cols] = torch.where(hit, -3.0 * 0.5 * z[:, cols], z[:, cols])
        expected = x + (z_edit @ sae.W_dec) - (z @ sae.W_dec)
    assert hit.any(), "the test must edit something"
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert unlearn.edited_fraction[0] > 0


def test_nearest_scored_timestep_by_value(pipe, sae):
    edit = edit_for(pipe, sae, steps=4)
    ts = edit.timesteps
    assert edit.row(ts[1]) == 1
    assert edit.row(ts[1] + 3) == 1
    assert edit.row(10_000) == 0


def test_a_multiplier_of_the_wrong_sign_warns(pipe, sae):
    with pytest.warns(UserWarning, match="multiplier 2.0 is not negative"):
        edit_for(pipe, sae, multiplier=2.0)


def test_several_concepts_take_the_union_and_the_strongest_factor():
    selected = np.zeros((2, 1, 4), bool)
    selected[0, 0, [0, 1]] = True
    selected[1, 0, [1, 2]] = True
    mean = np.array([[[1.0, 2.0, 3.0, 4.0]], [[1.0, 1.0, 1.0, 1.0]]], np.float32)
    edit = Edit.for_concepts([500], selected, mean, [-1.0, -5.0], np.zeros((1, 4), np.float32))
    assert edit.selected.tolist() == [[True, True, True, False]]
    assert edit.factor.tolist() == [[-1.0, -5.0, -5.0, 1.0]]
