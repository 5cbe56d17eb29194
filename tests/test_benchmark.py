"""The benchmark flow: every method on every target of a finished run, one table; each
(method, target) kept as it finishes, so a rerun redoes only what is missing."""

import json
from pathlib import Path

import pytest

from saeuron.baselines import ESDX, UCE, NegativePrompt, SafeGuidance
from saeuron.benchmark import BenchmarkConfig, DomainValidation, slug
from saeuron.esd import ESDConfig
from saeuron.run import PipelineConfig
from saeuron.sweep import ValidationConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(fresh_pipeline_dir, tmp_path_factory, prefect_api) -> tuple[dict, Path]:
    """A small finished run (the pipeline flow), as the benchmark needs it, and its config."""
    from flows.pipeline import pipeline
    from test_pipeline_flow import small

    root = tmp_path_factory.mktemp("bench") / "run"
    config = small(fresh_pipeline_dir, root)
    pipeline(config)
    return config.model_dump(mode="json"), root


def small_benchmark() -> BenchmarkConfig:
    quick = ValidationConfig(own=2, others=2, finalists=1)
    return BenchmarkConfig(
        methods=[NegativePrompt(), SafeGuidance(scales=[100.0, 1000.0], warmup=0), UCE(),
                 ESDX(train=ESDConfig(steps=2, batch_size=2, num_steps=2), checkpoints=[1, 2])],
        validation=DomainValidation(style=quick, object=quick), probe_pictures=4)


def test_every_method_on_every_target_in_one_table_and_only_what_is_missing_reruns(finished):
    from flows.benchmark import benchmark

    data, root = finished
    pipeline = PipelineConfig.model_validate(data)
    options = pipeline.benchmark_options()
    assert options["paper_score"].gate == "mean" and options["paper_score"].contrast == "mean"
    config = small_benchmark()
    result = benchmark(config, pipeline.run, **options)
    names = ["SAeUron", "negative prompt", "SLD", "UCE", "ESD-x", "SAeUron (paper)",
             "SAeUron (reference sign)"]
    table = result["metrics"]["table"]
    assert [line["method"] for line in table] == ["no unlearning", *names]
    targets = ["sunset", "star"]
    for name in names[1:]:
        for target in targets:
            row = json.loads((root / "benchmark" / slug(name) / target / "metrics.json")
                             .read_text())["row"]
            assert all(0 <= row[m] <= 1 for m in ("UA", "IRA", "CRA", "kept")), (name, row)
            assert (root / "benchmark" / slug(name) / target / "before_after.png").is_file()
    sld = json.loads((root / "benchmark" / "sld" / "star" / "metrics.json").read_text())["row"]
    assert [t["value"] for t in sld["tried"]] == [100.0, 1000.0], "chosen on validation"
    line = next(t for t in table if t["method"] == "ESD-x")
    assert line["storage MB"] > 0 and line["sampling x"] > 0
    assert float(line["peak MB"].split()[0]) > 0, "peak memory, and its difference to plain"
    report = (root / "benchmark" / "report.md").read_text()
    assert "| UCE |" in report and (root / "benchmark" / "plane.png").is_file()

    again = benchmark(config, pipeline.run, **options)
    assert again["metrics"]["table"] == table, "cached"
    kept = root / "benchmark" / "uce" / "sunset" / "metrics.json"
    lost = root / "benchmark" / "negative-prompt" / "star" / "metrics.json"
    before, stamp = lost.read_text(), kept.stat().st_mtime_ns
    lost.unlink()  # what a kill before this pair finished leaves
    redone = benchmark(config, pipeline.run, **options)
    assert json.loads(lost.read_text())["row"]["UA"] == json.loads(before)["row"]["UA"]
    assert kept.stat().st_mtime_ns == stamp, "a finished pair is not done again"
    assert redone["metrics"]["table"] == table


def test_the_benchmark_on_an_unfinished_run_says_what_to_run(tmp_path, capsys):
    from flows.benchmark import benchmark
    from flows.cli import benchmark_main

    with pytest.raises(SystemExit) as exit:
        benchmark_main(benchmark, ["--root", str(tmp_path)])
    assert exit.value.code == 2
    assert "benchmark needs the output of the evaluate stage" in capsys.readouterr().err
