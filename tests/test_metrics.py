"""The metrics that see the picture: a target row of noise is not a removed style."""

import numpy as np
import pytest

from saeuron.metrics import assess, frechet_distance, interval, judged_instead, unlearning_metrics
from saeuron.minicanvas.data import ALL_STYLES
from saeuron.minicanvas.world import minicanvas_grid
from saeuron.judging import grid_table, judge_grid
from saeuron.minicanvas.render import OBJECTS, render_batch

SEEDS = (1_000_000, 1_000_001, 1_000_002)


@pytest.fixture(scope="module")
def rendered(judge):
    """The MiniCanvas grid drawn by its renderer at three seeds, judged: a perfect model."""
    grid, table = grid_table(judge, SEEDS, minicanvas_grid())
    images = render_batch(list(table["object"]), list(table["style"]), list(table["seed"]))
    return grid, table, images


def test_a_target_row_of_noise_is_flagged_by_kept_and_distance_not_by_ua(judge, rendered):
    grid, table, images = rendered
    base = judge_grid(judge, images, table, grid, len(SEEDS))
    sketch, none = ALL_STYLES.index("sketch"), ALL_STYLES.index("none")
    noise, removed = base.images.copy(), base.images.copy()
    noise[:, sketch] = np.random.default_rng(0).integers(0, 256, noise[:, sketch].shape)
    removed[:, sketch] = removed[:, none]  # the same objects, drawn without a style
    features = base.judged().features
    got = {}
    for name, pictures in (("noise", noise), ("removed", removed)):
        edited = judge_grid(judge, pictures.reshape(images.shape), table, grid, len(SEEDS))
        got[name] = assess(edited.judged(), features, features, "style", ["sketch"])
    assert got["noise"]["UA"] == got["removed"]["UA"] == 1.0, "UA cannot tell them apart"
    assert got["removed"]["kept"] == 1.0 and got["noise"]["kept"] < 0.5
    assert got["noise"]["FD_own"] > got["noise"]["FD_own_base"] > got["removed"]["FD_own"]
    assert got["noise"]["FD_rest"] == got["noise"]["FD_rest_base"] == got["removed"]["FD_rest"], \
        "the rest of the grid is untouched"
    assert got["removed"]["instead"] == {"none": 3 * len(OBJECTS)}
    assert sum(got["noise"]["instead"].values()) == 3 * len(OBJECTS)


def test_object_targets_keep_their_styles_and_count_the_objects_judged_instead(judge, rendered):
    grid, table, images = rendered
    base = judge_grid(judge, images, table, grid, len(SEEDS))
    moon, star = OBJECTS.index("moon"), OBJECTS.index("star")
    swapped = base.images.copy()
    swapped[:, :, moon] = swapped[:, :, star]  # moons drawn as stars, each in its own style
    edited = judge_grid(judge, swapped.reshape(images.shape), table, grid, len(SEEDS)).judged()
    m = unlearning_metrics(edited, "object", ["moon"])
    assert m["UA"] == 1.0 and m["kept"] == 1.0
    assert judged_instead(edited, "object", ["moon"]) == {"star": 3 * len(ALL_STYLES)}


def test_frechet_distance_is_zero_for_one_set_and_grows_with_the_shift():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_distance(x, x) == pytest.approx(0, abs=1e-6)
    near, far = frechet_distance(x, x + 0.5), frechet_distance(x, x + 2.0)
    assert near == pytest.approx(8 * 0.25, rel=1e-6) and far == pytest.approx(8 * 4.0, rel=1e-6)
    with pytest.raises(ValueError, match="needs >= 2 pictures"):
        frechet_distance(x[:1], x)


def test_bootstrap_interval_narrows_with_more_pictures():
    few, many = interval([[27, 30]]), interval([[270, 300]])
    assert few[0] < many[0] < 0.9 < many[1] < few[1]
    assert interval([[30, 30]]) == (1.0, 1.0)
    assert interval([[30, 30], [0, 30]]) == (0.5, 0.5), "the mean of the targets' shares"
