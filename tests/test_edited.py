"""Sampling only what an edit touches: the pictures it never detects are the unedited ones."""

import numpy as np
import pytest
import torch

from saeuron.edited import Unedited, sample_edited, sample_edited_each, sample_unedited
from saeuron.intervention import Detector, Edit, Edits, Unlearn, touched_pictures
from saeuron.sae import SAEConfig, SparseAutoencoder
from saeuron.sampling import sample, schedule_timesteps

HOOK = "up_blocks.1.attentions.1"
PROMPTS = ["a star in neon style", "a moon", "a ring in pop style", "a cross in ocean style",
           "a heart", "a square in sketch style"]
SEEDS = [11, 12, 13, 14, 15, 16]
STEPS = 4


@pytest.fixture(scope="module")
def sae(pipe):
    torch.manual_seed(3)
    return SparseAutoencoder(SAEConfig(d_in=pipe.unet.config.block_out_channels[1],
                                       expansion_factor=4, k=8))


def detecting_edit(pipe, sae, unedited: Unedited) -> Edit:
    """A strong edit of 16 features, detected at the first step in about half the pictures
    (the cutoff is the median of their detection scores there) and checked nowhere else."""
    timesteps = schedule_timesteps(pipe, STEPS)
    n = sae.cfg.n_latents
    selected = np.zeros((1, len(timesteps), n), bool)
    selected[..., :16] = True
    weight = selected.astype(np.float32)
    first = unedited.recorded[HOOK][0].means  # (rows, latents) at the first step
    score = first @ torch.from_numpy(weight[0, 0])
    cutoff = np.full((1, len(timesteps)), float(score.median()), np.float32)
    checked = np.zeros((1, len(timesteps)), bool)
    checked[0, 0] = True
    factor = np.full(selected.shape, -8.0, np.float32)
    detector = Detector(selected, factor, weight, cutoff, checked, everywhere=np.zeros(1, bool))
    return Edit(timesteps=list(timesteps), selected=selected[0], factor=factor[0],
                threshold=np.zeros((len(timesteps), n), np.float32), detector=detector)


@pytest.mark.parametrize("precision", ["float32", "auto"])
def test_untouched_pictures_are_exactly_the_unedited_ones(pipe, sae, precision):
    options = dict(num_steps=STEPS, guidance=4.0, precision=precision)
    unedited = sample_unedited(pipe, {HOOK: sae}, PROMPTS, SEEDS, **options)
    assert np.array_equal(unedited.images, sample(pipe, PROMPTS, SEEDS, **options)), \
        "recording changes nothing"
    edit = detecting_edit(pipe, sae, unedited)
    touched = touched_pictures(edit, unedited.recorded[HOOK])
    assert 0 < touched.sum() < len(PROMPTS)
    with Unlearn(pipe.unet, HOOK, sae, edit):
        full = sample(pipe, PROMPTS, SEEDS, **options)
    assert np.array_equal(full[~touched], unedited.images[~touched]), \
        "a picture the edit never detects is sampled as without it"
    assert all(not np.array_equal(full[i], unedited.images[i]) for i in np.flatnonzero(touched))
    reused = sample_edited(pipe, HOOK, sae, edit, PROMPTS, SEEDS, unedited=unedited, **options)
    assert np.array_equal(reused[~touched], full[~touched])
    # the touched ones are sampled in a batch of their own: equal up to float rounding
    diff = np.abs(reused[touched].astype(int) - full[touched].astype(int))
    assert np.mean(diff) < 1.0


def test_edits_without_detector_or_reference_sign_sample_every_picture(pipe, sae, tmp_path):
    options = dict(num_steps=STEPS, guidance=4.0)
    unedited = sample_unedited(pipe, {HOOK: sae}, PROMPTS[:3], SEEDS[:3], **options)
    edit = detecting_edit(pipe, sae, unedited)
    plain = Edit(edit.timesteps, edit.selected, edit.factor, edit.threshold)
    assert touched_pictures(plain, unedited.recorded[HOOK]).all()
    assert not touched_pictures(None, unedited.recorded[HOOK]).any()
    with Unlearn(pipe.unet, HOOK, sae, edit, error_sign=-1):
        reference = sample(pipe, PROMPTS[:3], SEEDS[:3], **options)
    assert np.array_equal(sample_edited(pipe, HOOK, sae, edit, PROMPTS[:3], SEEDS[:3],
                                        unedited=unedited, error_sign=-1, **options), reference)
    loaded = Unedited.load(unedited.save(tmp_path / "unedited.npz"))
    assert np.array_equal(loaded.images, unedited.images)
    assert [(c.batch, c.t) for c in loaded.recorded[HOOK]] == [
        (c.batch, c.t) for c in unedited.recorded[HOOK]]
    assert all(torch.equal(a.means, b.means) for a, b in zip(loaded.recorded[HOOK],
                                                            unedited.recorded[HOOK]))


def test_runs_of_several_batches_are_told_apart(pipe, sae):
    options = dict(num_steps=STEPS, guidance=4.0)
    one = sample_unedited(pipe, {HOOK: sae}, PROMPTS, SEEDS, **options)
    split = sample_unedited(pipe, {HOOK: sae}, PROMPTS, SEEDS, batch_size=4, **options)
    edit = detecting_edit(pipe, sae, one)
    assert len(touched_pictures(edit, split.recorded[HOOK])) == len(PROMPTS)
    assert len({c.batch for c in split.recorded[HOOK]}) == 2, "the loop names each batch"
    np.testing.assert_array_equal(touched_pictures(edit, split.recorded[HOOK]),
                                  touched_pictures(edit, one.recorded[HOOK]))


def test_edits_sampled_together_act_each_on_its_own_pictures(pipe, sae):
    options = dict(num_steps=STEPS, guidance=4.0, precision="float32")
    unedited = sample_unedited(pipe, {HOOK: sae}, PROMPTS, SEEDS, **options)
    edit = detecting_edit(pipe, sae, unedited)
    touched = touched_pictures(edit, unedited.recorded[HOOK])
    with Unlearn(pipe.unet, HOOK, sae, edit):
        alone = sample(pipe, PROMPTS, SEEDS, **options)
    edited, plain = sample_edited_each(pipe, HOOK, sae, [edit, None], PROMPTS, SEEDS, **options)
    # one batch of 12 pictures, the first 6 under the edit, the last 6 under none
    assert np.abs(edited.astype(int) - alone.astype(int)).mean() < 1.0
    assert np.abs(plain.astype(int) - unedited.images.astype(int)).mean() < 1.0
    assert all(not np.array_equal(edited[i], plain[i]) for i in np.flatnonzero(touched))
    reused = sample_edited_each(pipe, HOOK, sae, [edit, None, edit], PROMPTS, SEEDS,
                                unedited=unedited, **options)
    assert all(np.array_equal(r[~touched], unedited.images[~touched]) for r in reused)
    assert np.array_equal(reused[1], unedited.images), "no edit: nothing sampled"
    assert np.array_equal(reused[0], reused[2]), "each group has its own detection state"
    assert np.abs(reused[0].astype(int) - alone.astype(int)).mean() < 1.0
    with pytest.raises(ValueError, match="one positive group size per edit"):
        Edits([edit], [0])
    with Unlearn(pipe.unet, HOOK, sae, Edits([edit, edit], [2, 2])), \
            pytest.raises(ValueError, match="a batch of 12 rows, but the edits' groups hold 4"):
        sample(pipe, PROMPTS, SEEDS, **options)
