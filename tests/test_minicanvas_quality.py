"""The shipped MiniCanvas model draws what it is asked, as the shipped judge sees it."""

from saeuron.minicanvas.data import EVAL_SEED_BASE
from saeuron.minicanvas.report_card import sample_grid


def test_shipped_model_follows_style_and_object(shipped_pipeline, judge):
    # One seed of the whole grid (110 pictures) with the default sampler; the full figure
    # (4 seeds, per-concept worst case) is in BENCHMARKS.md.
    result = sample_grid(shipped_pipeline, judge, seeds=(EVAL_SEED_BASE + 7,))
    assert result.style_accuracy >= 0.9, result.table()
    assert result.object_accuracy >= 0.9, result.table()

