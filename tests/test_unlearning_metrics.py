import numpy as np
import pytest

from saeuron.minicanvas.world import minicanvas_grid
from saeuron.judging import GridResult
from saeuron.metrics import unlearning_metrics
from saeuron.minicanvas.data import ALL_STYLES
from saeuron.minicanvas.render import OBJECTS


def judged(style_pred, object_pred):
    shape = style_pred.shape
    return GridResult(images=np.zeros(shape + (1, 1, 3), np.uint8),
                      style_ok=np.zeros(shape, bool), object_ok=np.zeros(shape, bool),
                      style_pred=style_pred, object_pred=object_pred, styles=ALL_STYLES,
                      objects=OBJECTS).judged()


def perfect(seeds=2):
    shape = (seeds, len(ALL_STYLES), len(OBJECTS))
    return (np.broadcast_to(np.arange(shape[1])[None, :, None], shape).copy(),
            np.broadcast_to(np.arange(shape[2])[None, None, :], shape).copy())


def test_a_model_that_forgot_nothing_has_ua_zero_and_full_retention():
    m = unlearning_metrics(judged(*perfect()), "style", ["sunset"])
    assert m == {"UA": 0.0, "IRA": 1.0, "CRA": 1.0, "kept": 1.0, "CRA_grid": 1.0}


def test_erasing_a_style_to_another_counts_as_unlearned_and_retained():
    styles, objects = perfect()
    s = ALL_STYLES.index("ocean")
    styles[:, s, :] = ALL_STYLES.index("none")      # every ocean picture lost its style
    styles[0, ALL_STYLES.index("pop"), :5] = s       # and five pop pictures turned ocean
    styles[1, ALL_STYLES.index("none"), :3] = 0      # three unstyled pictures got a style
    objects[:, s, :2] = 0                            # two objects broke in the ocean row
    objects[0, ALL_STYLES.index("none"), 4] = 0      # one in the unstyled row
    m = unlearning_metrics(judged(styles, objects), "style", ["ocean"])
    n_seeds, n_other = 2, len(ALL_STYLES) - 2        # the other styles: not ocean, not unstyled
    assert m["UA"] == 1.0
    assert m["IRA"] == pytest.approx(1 - 5 / (n_seeds * n_other * len(OBJECTS)))
    assert m["CRA"] == pytest.approx(1 - 1 / (n_seeds * len(OBJECTS))), "the unstyled row only"
    assert m["kept"] == pytest.approx(1 - n_seeds / (n_seeds * len(OBJECTS))), "ocean's own row"
    broken = n_seeds + 1  # column 1 in each seed (column 0 predicted as 0 is right), + unstyled
    assert m["CRA_grid"] == pytest.approx(1 - broken / styles.size)


def test_several_objects_at_once():
    styles, objects = perfect(1)
    objects[:, :, [1, 2]] = 0
    m = unlearning_metrics(judged(styles, objects), "object", ["square", "triangle"])
    assert m["UA"] == 1.0 and m["IRA"] == 1.0 and m["CRA"] == 1.0
    styles[0, ALL_STYLES.index("none"), :] = 0   # the unstyled row judged styled: not CRA
    styles[0, 0, 3] = 1                          # one styled picture lost its style: CRA
    m = unlearning_metrics(judged(styles, objects), "object", ["square", "triangle"])
    n_styled = (len(ALL_STYLES) - 1) * len(OBJECTS)
    assert m["CRA"] == pytest.approx(1 - 1 / n_styled)
    assert m["CRA_grid"] == pytest.approx(1 - (1 + len(OBJECTS)) / styles.size)


def test_unknown_target_lists_the_known():
    with pytest.raises(ValueError, match="unknown style target.*sunset"):
        unlearning_metrics(judged(*perfect()), "style", ["baroque"])
    with pytest.raises(ValueError, match=r"unknown style target\(s\) \['none'\]"):
        unlearning_metrics(judged(*perfect()), "style", ["none"])


def test_concept_edit_from_a_feature_store_and_a_grid_run(fresh_pipeline_dir, judge):
    import torch

    from saeuron.diffusion import load_pipeline
    from saeuron.sae import SAEConfig, SparseAutoencoder
    from saeuron.sampling import schedule_timesteps
    from saeuron.unlearning import concept_edit, unlearned_grid
    from storage.features import DomainFeatures

    pipe = load_pipeline(fresh_pipeline_dir)
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=64, expansion_factor=2, k=4))
    ts = schedule_timesteps(pipe, 2)
    selected = np.zeros((2, len(ts), 128), bool)
    selected[0, :, 3] = True
    selected[1, :, 7] = True
    domains = {"style": DomainFeatures(
        concepts=["none", "sunset"], timesteps=ts, mean=np.ones((2, len(ts), 128), np.float32),
        count=np.array([5, 5]), score=np.zeros((2, len(ts), 128), np.float32),
        selected=selected, multiplier=np.array([-1.0, -4.0], np.float32), gate=["mean"] * 2)}
    edit = concept_edit(np.zeros((len(ts), 128), np.float32), domains, "style", ["sunset"])
    assert edit.selected[:, 7].all() and not edit.selected[:, 3].any()
    assert np.all(edit.factor[:, 7] == -4.0)
    base = unlearned_grid(pipe, judge, sae, "up_blocks.1.attentions.1", None, (1,),
                          num_steps=2, guidance=2.0, grid=minicanvas_grid())
    edited = unlearned_grid(pipe, judge, sae, "up_blocks.1.attentions.1", edit, (1,),
                            num_steps=2, guidance=2.0, grid=minicanvas_grid())
    assert base.images.shape == (1, len(ALL_STYLES), len(OBJECTS), 32, 32, 3)
    assert not np.array_equal(base.images, edited.images)


def test_concepts_of_different_gates_are_edited_each_by_its_own():
    from saeuron.unlearning import concept_edit
    from storage.features import DomainFeatures

    ts, shape = [950, 500], (3, 2, 4)
    selected = np.zeros(shape, bool)
    selected[0, :, 0] = selected[1, :, 1] = selected[2, :, 2] = True
    mean = np.random.default_rng(0).random(shape).astype(np.float32) + 0.5
    domains = {"style": DomainFeatures(
        concepts=["blueprint", "neon", "pop"], timesteps=ts, mean=mean, count=np.ones(3),
        score=np.zeros(shape), selected=selected, multiplier=np.full(3, -2.0, np.float32),
        gate=["mean", "detect", "detect"])}
    mean_all = mean.mean(0)
    both = concept_edit(mean_all, domains, "style", ["blueprint", "neon"])
    det = both.detector
    assert det.everywhere.tolist() == [True, False], "blueprint (paper's gate) is edited everywhere"
    assert det.checked[1].tolist() == [False, True], "neon is detected from t 900"
    domains["style"].detect_start = np.array([900, 900, 1000])
    domains["style"].detect_at = np.array([0.5, 0.5, 0.9], np.float32)
    later = concept_edit(mean_all, domains, "style", ["neon", "pop"]).detector
    assert not later.checked[0, 0] and later.checked[1, 0], "each concept's own start"
    rival = mean[:2, :, 2].max(0) / mean[2, :, 2]  # pop selects feature 2; others' largest mean
    np.testing.assert_allclose(later.cutoff[1], rival + 0.9 * (1 - rival), rtol=1e-5)
    assert concept_edit(mean_all, domains, "style", ["blueprint"]).detector is None
    assert concept_edit(mean_all, domains, "style", ["neon"]).detector is not None
    assert concept_edit(mean_all, domains, "style", ["blueprint", "neon"],
                        gate="mean").detector is None, "an explicit gate applies to all"
