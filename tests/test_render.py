import numpy as np
import pytest

from saeuron.minicanvas.render import (NO_STYLE, OBJECTS, SIZE, STYLES, _STYLE_TABLE, _rgb,
                                       object_mask, pose_for_seed, render)


def test_grid_is_large_enough():
    assert len(OBJECTS) >= 10 and len(STYLES) >= 10
    assert all(name.isalpha() and name.islower() for name in OBJECTS + STYLES)


def test_render_is_deterministic_and_rgb():
    a = render("star", "ocean", 123)
    b = render("star", "ocean", 123)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)


def test_seed_changes_pose_and_same_seed_keeps_pose_across_styles():
    assert pose_for_seed(1) != pose_for_seed(2)
    assert not np.array_equal(render("heart", "pop", 1), render("heart", "pop", 2))
    # The same seed draws the object in the same place whatever the style.
    masks = {style: object_mask("heart", pose_for_seed(5)) for style in STYLES}
    assert len({m.tobytes() for m in masks.values()}) == 1


@pytest.mark.parametrize("style", ["sunset", "ocean", "pastel", "granite", "ember", NO_STYLE])
@pytest.mark.parametrize("obj", OBJECTS)
def test_filled_object_pixels_carry_the_style_ink(obj, style):
    """Label correctness: where the object covers a pixel fully, the pixel is the style's ink."""
    seed = 11
    image = render(obj, style, seed).astype(np.float32) / 255
    inside = object_mask(obj, pose_for_seed(seed)) > 0.999
    assert inside.sum() > 40, "the object is drawn large enough to be recognised"
    ink = _rgb(_STYLE_TABLE[style].ink)
    assert np.abs(image[inside] - ink).max() < 2 / 255


def test_objects_differ_in_outline():
    pose = pose_for_seed(3)
    masks = [object_mask(o, pose) > 0.5 for o in OBJECTS]
    for i in range(len(OBJECTS)):
        for j in range(i + 1, len(OBJECTS)):
            differing = (masks[i] != masks[j]).sum()
            assert differing > 25, f"{OBJECTS[i]} and {OBJECTS[j]} look alike ({differing} px)"


def test_style_changes_the_whole_picture():
    """Away from the object, the background differs between every pair of styles."""
    seed = 4
    outside = object_mask("circle", pose_for_seed(seed)) < 0.01
    looks = {s: render("circle", s, seed).astype(np.float32)[outside].mean(0)
             for s in STYLES + (NO_STYLE,)}
    names = list(looks)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(looks[a] - looks[b]).max() > 8, f"{a} and {b} share a background"


def test_unknown_concepts_are_named():
    with pytest.raises(ValueError, match="unknown object 'dragon'.*circle"):
        render("dragon", "ocean", 0)
    with pytest.raises(ValueError, match="unknown style 'baroque'.*sunset"):
        render("circle", "baroque", 0)
