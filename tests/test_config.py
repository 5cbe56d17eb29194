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


@pytest.mark.parametrize("text, message", [
    ("run:\n\troot: x\n", r"is not valid YAML at line 2, column 1: found character '\\t'"),
    ("styles: [sketch\n", r"is not valid YAML at line 2, column 1: expected ','"),
    ("- a list\n", "expected a mapping of options, got list"),
])
def test_unreadable_yaml_is_one_message_naming_the_file(text, message, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        DiffusionTrainConfig.from_yaml(bad)
    assert str(bad) in str(err.value)
    with pytest.raises(FileNotFoundError, match="it is a folder"):
        DiffusionTrainConfig.from_yaml(tmp_path)


def test_method_paper_sets_the_papers_score_options_and_explicit_ones_win(tmp_path):
    from saeuron.run import PipelineConfig

    default = PipelineConfig().score
    assert (default.contrast, default.gate, default.exclusive) == ("max", "detect", True)
    path = tmp_path / "paper.yaml"
    path.write_text("method: paper\nscore:\n  gate: detect\n  sweep:\n    style:\n      top_n: [1]\n")
    config = PipelineConfig.from_yaml(path)
    score = config.score
    assert (score.percentile, score.top_n, score.multiplier) == (99.999, None, -1.0)
    assert (score.contrast, score.exclusive) == ("mean", False)
    assert score.gate == "detect", "an option set in the file overrides the preset"
    assert score.sweep.style.top_n == [1]
    assert score.sweep.object.multipliers == [-1, -5, -10, -15, -20, -25, -30]
    assert score.sweep.object.objective == ["UA", "IRA"] and score.sweep.object.finalists == 0
    assert PipelineConfig.model_validate(config.model_dump()).score == score, "round trip"
    assert PipelineConfig.from_yaml(path).model_dump() == config.model_dump()


def test_minicanvas_removes_styles_at_the_prompts_encoding_with_its_own_sae_options():
    from saeuron.minicanvas import OBJECT_HOOK
    from saeuron.run import PipelineConfig

    config = PipelineConfig()
    assert (config.score.hooks.style, config.score.hooks.object) == ("text", OBJECT_HOOK)
    assert config.harvest.hooks == config.train.hooks == ["text", OBJECT_HOOK]
    text, block = config.train.for_hook("text"), config.train.for_hook(OBJECT_HOOK)
    assert (text.k, text.epochs, text.batch_size) == (8, 10, config.train.batch_size)
    assert (block.k, block.epochs, block.batch_size) == (config.train.k, 10, 1024)
    assert 0 in config.score.sweep.style.multipliers, "zeroing is a style candidate"


def test_a_score_section_without_sweep_keeps_the_default_sweep(tmp_path):
    from saeuron.run import PipelineConfig
    from saeuron.scoring import default_sweeps

    path = tmp_path / "c.yaml"
    path.write_text("score:\n  gate: mean\n")
    assert PipelineConfig.from_yaml(path).score.sweep == default_sweeps()
    path.write_text("score:\n  sweep:\n    style: null\n    object: null\n")
    sweep = PipelineConfig.from_yaml(path).score.sweep
    assert sweep.style is None and sweep.object is None, "switched off only when asked"


def test_every_option_has_a_one_line_description():
    """They are the Prefect UI's forms (the pipeline's and the benchmark's deployments)."""
    import typing

    from pydantic import BaseModel

    from saeuron.benchmark import BenchmarkConfig
    from saeuron.run import PipelineConfig

    def models(annotation) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for a in typing.get_args(annotation) for m in models(a)]

    missing, seen = [], set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            if not (field.description or "").strip():
                missing.append(prefix + name)
            for sub in models(field.annotation):
                walk(sub, f"{prefix}{name}.")

    walk(PipelineConfig, "")
    walk(BenchmarkConfig, "benchmark.")
    assert not missing, f"options without a description: {missing}"
