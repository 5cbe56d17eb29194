import pytest
from pydantic import ValidationError

from saeuron.minicanvas.train import DiffusionTrainConfig

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_shipped_configs_load():
    cfg = DiffusionTrainConfig.from_yaml(ROOT / "configs" / "minicanvas-model.yaml")
    assert cfg.steps == 5000


def test_bad_values_are_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 0\nlearning_rate: 0.1\n")
    with pytest.raises(ValidationError) as err:
        DiffusionTrainConfig.from_yaml(bad)
    text = str(err.value)
    assert "steps" in text and "greater than or equal to 1" in text
    assert "learning_rate" in text and "Extra inputs are not permitted" in text
