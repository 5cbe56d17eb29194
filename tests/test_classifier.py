import numpy as np
import pytest

from saeuron.minicanvas.__main__ import render_accuracy
from saeuron.minicanvas.classifier import Judge


def test_shipped_judge_is_accurate_on_fresh_renders(judge):
    style, obj = render_accuracy(judge, seeds=10)
    assert style >= 0.99 and obj >= 0.99


def test_judge_save_load_round_trip(judge, tmp_path):
    judge.save(tmp_path)
    again = Judge.load(tmp_path)
    x = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    for a, b in zip(judge.predict(x), again.predict(x)):
        assert np.array_equal(a, b)


def test_missing_or_corrupt_judge(tmp_path, judge):
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        Judge.load(tmp_path)
    judge.save(tmp_path)
    (tmp_path / "judge.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="cannot load classifier weights"):
        Judge.load(tmp_path)
