"""The unlearning hook: no edit is the identity, the rule edits what it should, signs matter."""

import numpy as np
import pytest
import torch

from saeuron.capture import Capture
from saeuron.names import TEXT_HOOK
from saeuron.intervention import Detector, Edit, Unlearn, gate_thresholds
from saeuron.sae import SAEConfig, SparseAutoencoder
from saeuron.sampling import sample, schedule_timesteps

HOOK = "up_blocks.1.attentions.1"
PROMPTS, SEEDS = ["a star in neon style", "a moon", "a ring in pop style"], [5, 6, 7]


def sample_exact(pipe, n: int = len(PROMPTS)):
    """The first n prompts at 4 steps in float32: the tests compare with float32 arithmetic."""
    return sample(pipe, PROMPTS[:n], SEEDS[:n], num_steps=4, precision="float32")


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


@pytest.mark.parametrize("hook", [HOOK, TEXT_HOOK])
def test_an_edit_of_nothing_leaves_the_pictures_unchanged(pipe, sae, hook):
    base = sample_exact(pipe)
    with Unlearn(pipe.unet, hook, sae, edit_for(pipe, sae)):
        same = sample_exact(pipe)
    assert np.array_equal(base, same)
    with Unlearn(pipe.unet, hook, sae, edit_for(pipe, sae), error_sign=-1):
        reference_sign = sample_exact(pipe)
    assert not np.array_equal(base, reference_sign), "the reference code's sign is not a no-op"


def test_the_rule_edits_selected_features_above_the_mean(pipe, sae):
    first = schedule_timesteps(pipe, 4)[0]
    with Capture(pipe.unet, [HOOK], timesteps=[first], cfg=False) as plain:
        sample_exact(pipe, 1)
    x = torch.from_numpy(plain.take()[1][HOOK][:, 0]).reshape(-1, sae.cfg.d_in)

    edit = edit_for(pipe, sae, selected_features=range(0, 32, 2), multiplier=-3.0)
    with Unlearn(pipe.unet, HOOK, sae, edit) as unlearn, \
            Capture(pipe.unet, [HOOK], timesteps=[first], cfg=False) as edited:
        sample_exact(pipe, 1)
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


@pytest.mark.parametrize("multiplier", [-3.0, 0.0])
def test_at_the_text_hook_the_rule_edits_what_every_block_reads(pipe, sae, multiplier):
    """The prompt's encoding, as the UNet receives it in both halves of the CFG batch, is
    edited token by token as a block's output is (0: the selected features set to zero), and
    the pictures change."""
    with torch.no_grad():
        x = torch.cat([pipe.encode_prompts([""]), pipe.encode_prompts(PROMPTS[:1])])
    x = x.reshape(-1, sae.cfg.d_in)
    edit = edit_for(pipe, sae, selected_features=range(0, 32, 2), multiplier=multiplier)
    with Unlearn(pipe.unet, TEXT_HOOK, sae, edit), \
            Capture(pipe.unet, [TEXT_HOOK], cfg=False) as edited:
        pictures = sample_exact(pipe, 1)
    got = torch.from_numpy(edited.take()[1][TEXT_HOOK])
    assert (got == got[:, :1]).all(), "the same encoding at every step"
    with torch.no_grad():
        z = sae.dense_latents(x)
        z_edit = z.clone()
        cols = torch.arange(0, 32, 2)
        hit = z[:, cols] > 0
        z_edit[:, cols] = torch.where(hit, multiplier * 0.5 * z[:, cols], z[:, cols])
        expected = x + (z_edit - z) @ sae.W_dec
    assert hit.any(), "the test must edit something"
    torch.testing.assert_close(got[:, 0].reshape(-1, sae.cfg.d_in), expected, rtol=1e-4,
                               atol=1e-4)
    assert not np.array_equal(pictures, sample_exact(pipe, 1))


def test_error_sign_zero_outputs_the_reconstruction_alone(pipe, sae):
    first = schedule_timesteps(pipe, 4)[0]
    with Capture(pipe.unet, [HOOK], timesteps=[first], cfg=False) as plain:
        sample_exact(pipe, 1)
    x = torch.from_numpy(plain.take()[1][HOOK][:, 0]).reshape(-1, sae.cfg.d_in)
    with Unlearn(pipe.unet, HOOK, sae, None, error_sign=0), \
            Capture(pipe.unet, [HOOK], timesteps=[first], cfg=False) as dropped:
        sample_exact(pipe, 1)
    got = torch.from_numpy(dropped.take()[1][HOOK][:, 0]).reshape(-1, sae.cfg.d_in)
    with torch.no_grad():
        torch.testing.assert_close(got, sae.decode(*sae.encode(x)), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="error_sign must be 1, 0 or -1"):
        Unlearn(pipe.unet, HOOK, sae, None, error_sign=2)


def test_the_detect_gate_edits_only_pictures_where_the_concept_was_detected(pipe, sae):
    """A detector that sees a concept in one picture at the first step edits that concept's
    feature there exactly as the rule says, spares the other picture and an undetected
    concept's feature, keeps editing the detected picture at later steps, and forgets it when
    a new sampling run starts."""
    steps = schedule_timesteps(pipe, 4)
    with Capture(pipe.unet, [HOOK], timesteps=[steps[0]], cfg=False) as plain:
        sample_exact(pipe, 2)
    x = torch.from_numpy(plain.take()[1][HOOK][:, 0])
    pictures, positions = x.shape[:2]  # both halves of the CFG batch
    x = x.reshape(-1, sae.cfg.d_in)
    with torch.no_grad():
        z = sae.dense_latents(x)
    per_picture = z.view(pictures, positions, -1).mean(1)
    feature = int((per_picture.max(0).values - per_picture.min(0).values).argmax())
    low, high = per_picture[:, feature].min().item(), per_picture[:, feature].max().item()
    assert high > low, "the test needs a feature more present in some pictures"

    active = (z > 0).sum(0)
    active[feature] = -1
    other = int(active.argmax())
    assert (z[:, other] > 0).any()
    edit = edit_for(pipe, sae, selected_features=[feature, other], multiplier=-3.0)
    selected = np.zeros((2, *edit.selected.shape), bool)  # two concepts, one feature each
    selected[0, :, feature] = selected[1, :, other] = True
    weight = selected.astype(np.float32)  # a concept's score is its feature's picture mean
    cutoff = np.full((2, len(steps)), (low + high) / 2, np.float32)
    checked = np.zeros((2, len(steps)), bool)  # the second is never checked
    checked[0, 0] = True  # the first is checked at the first step only
    edit.detector = Detector(selected, np.full(selected.shape, -1.5, np.float32), weight, cutoff,
                             checked, everywhere=np.zeros(2, bool))
    with Unlearn(pipe.unet, HOOK, sae, edit) as unlearn, \
            Capture(pipe.unet, [HOOK], timesteps=[steps[0]], cfg=False) as edited:
        sample_exact(pipe, 2)
        first_run = list(unlearn.edited_fraction)
        edit.detector.checked[0, 0] = False
        sample_exact(pipe, 2)
    got = torch.from_numpy(edited.take()[1][HOOK][:, 0]).reshape(-1, sae.cfg.d_in)

    present = (per_picture[:, feature] > (low + high) / 2).repeat_interleave(positions)
    z_edit = z.clone()
    hit = present & (z[:, feature] > 0)
    z_edit[:, feature] = torch.where(hit, -1.5 * z[:, feature], z[:, feature])
    expected = x + (z_edit - z) @ sae.W_dec
    assert hit.any() and (z[~present, feature] > 0).any(), "some pictures edited, some spared"
    torch.testing.assert_close(got[:len(x)], expected, rtol=1e-4, atol=1e-4)
    assert len(first_run) == 4 and all(f > 0 for f in first_run), "detected pictures stay edited"
    assert unlearn.edited_fraction[4:] == [0.0] * 4, "a new run starts with nothing detected"


def test_a_detector_cuts_halfway_between_the_rival_and_the_concept():
    timesteps = [950, 500]
    selected = np.array([[[True, True, False], [True, False, False]]])
    mean = np.array([[[2.0, 2.0, 9.0], [4.0, 1.0, 1.0]]], np.float32)
    rivals = np.array([[[1.0, 0.0, 9.0], [1.0, 3.0, 3.0]]], np.float32)
    det = Detector.build(timesteps, selected, np.where(selected, -1.0, np.inf), mean, rivals,
                         start=900)
    assert det.checked.tolist() == [[False, True]], "no picture is checked above the start"
    assert det.cutoff[0, 1] == pytest.approx(0.25 + 0.5 * 0.75)  # rival share 1/4
    np.testing.assert_allclose(det.weight[0, 1], [0.25, 0, 0])
    later = Detector.build(timesteps, selected, np.where(selected, -1.0, np.inf), mean, rivals,
                           at=[0.8], start=[400])
    assert not later.checked.any(), "a concept checked from t 400 is never checked here"
    early = Detector.build(timesteps, selected, np.where(selected, -1.0, np.inf), mean, rivals,
                           at=0.8, start=1000)
    assert early.cutoff[0, 1] == pytest.approx(0.25 + 0.8 * 0.75)
    assert early.checked.all() and not early.everywhere.any()
    always = Detector.build(timesteps, selected, np.where(selected, -1.0, np.inf), mean, rivals,
                            everywhere=[True])
    assert always.everywhere.tolist() == [True], "a concept of another gate is edited everywhere"
    means = torch.zeros(3, 3)  # no picture shows anything
    assert always.detects(means, 0).all() and not det.detects(means, 1).any()


def test_gates_threshold_at_the_mean_or_the_most_active_other_concept():
    means = np.array([[[1.0, 0.2]], [[0.5, 0.9]], [[0.1, 0.3]]], np.float32)
    mean_all = means.mean(0)
    threshold, rivals = gate_thresholds("mean", mean_all, means, [0])
    assert rivals is None and np.array_equal(threshold, mean_all)
    threshold, rivals = gate_thresholds("others", mean_all, means, [0])
    assert rivals is None and np.array_equal(threshold, means[1])
    threshold, rivals = gate_thresholds("detect", mean_all, means, [0, 1])
    assert np.array_equal(threshold, mean_all)
    np.testing.assert_allclose(rivals, [[[0.5, 0.9]], [[1.0, 0.3]]])
    with pytest.raises(ValueError, match="unknown gate 'all'"):
        gate_thresholds("all", mean_all, means, [0])


def test_nearest_scored_timestep_by_value(pipe, sae):
    edit = edit_for(pipe, sae, steps=4)
    ts = edit.timesteps
    assert edit.row(ts[1]) == 1
    assert edit.row(ts[1] + 3) == 1
    assert edit.row(10_000) == 0


def test_a_multiplier_of_the_wrong_sign_warns(pipe, sae):
    with pytest.warns(UserWarning, match="multiplier 2.0 is positive"):
        edit_for(pipe, sae, multiplier=2.0)


def test_several_concepts_take_the_union_and_the_strongest_factor():
    selected = np.zeros((2, 1, 4), bool)
    selected[0, 0, [0, 1]] = True
    selected[1, 0, [1, 2]] = True
    mean = np.array([[[1.0, 2.0, 3.0, 4.0]], [[1.0, 1.0, 1.0, 1.0]]], np.float32)
    edit = Edit.for_concepts([500], selected, mean, [-1.0, -5.0], np.zeros((1, 4), np.float32))
    assert edit.selected.tolist() == [[True, True, True, False]]
    assert edit.factor.tolist() == [[-1.0, -5.0, -5.0, 1.0]]
