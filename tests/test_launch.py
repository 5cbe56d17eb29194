"""The launcher replays a finished command only while nothing its result depends on changed."""

import json

import pytest

from flows.launch import digest_and_root, parser
from storage.layout import STAGES, RunLayout


def finished_run(root, fingerprints: dict[str, str]) -> RunLayout:
    layout = RunLayout(root=str(root))
    for stage, fp in fingerprints.items():
        out = root / stage
        out.mkdir(parents=True)
        layout.finish(stage, fp, {stage: str(out)}, {}, 1.0, {})
    return layout


def test_digest_follows_the_configuration_and_the_files_it_names(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"\x00" * 64)
    config = tmp_path / "c.yaml"
    config.write_text(f"run:\n  root: {tmp_path / 'run'}\nharvest:\n  model: {model}\n")
    args = parser().parse_args(["--config", str(config)])
    digest, root = digest_and_root(args)
    assert root == str(tmp_path / "run")
    assert digest_and_root(parser().parse_args(["--config", str(config), "--force", "score"]))[0] \
        == digest, "a forced run records what an unforced one replays"
    (model / "weights.bin").write_bytes(b"\x01" + b"\x00" * 63)
    assert digest_and_root(args)[0] != digest, "changed model weights"
    changed = digest_and_root(args)[0]
    config.write_text(config.read_text() + "score_seeds: 2\n")
    assert digest_and_root(args)[0] != changed, "changed configuration"
    config.write_text("run: [unclosed\n")
    with pytest.raises(ValueError, match=r"c.yaml is not valid YAML at line 2, column 1"):
        digest_and_root(args)


def test_digest_follows_the_files_a_world_file_names(tmp_path):
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / "weights.bin").write_bytes(b"\x00" * 64)
    (tmp_path / "world.yaml").write_text("model: elsewhere\njudge: {kind: clip, path: judge}\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"world: {tmp_path / 'world.yaml'}\nrun: {{root: {tmp_path / 'run'}}}\n")
    args = parser().parse_args(["--config", str(config)])
    digest = digest_and_root(args)[0]
    (tmp_path / "judge" / "weights.bin").write_bytes(b"\x01" + b"\x00" * 63)
    assert digest_and_root(args)[0] != digest, "the judge a world file names (relative to it)"


def test_replay_needs_the_same_digest_and_every_stage_still_complete(tmp_path):
    layout = finished_run(tmp_path, {s: f"fp-{s}" for s in STAGES})
    layout.record_pipeline("d1", {"text": "summary"})
    assert layout.replay("d1")["result"] == {"text": "summary"}
    assert layout.replay("d2") is None, "other inputs"
    layout.finish("score", "fp-other", {"score": str(tmp_path / "score")}, {}, 1.0, {})
    assert layout.replay("d1") is None, "a stage finished since with other inputs"
    layout.finish("score", "fp-score", {"score": str(tmp_path / "score")}, {}, 1.0, {})
    assert layout.replay("d1") is not None
    (tmp_path / "evaluate").rmdir()
    assert layout.replay("d1") is None, "an output is gone"
    layout.manifest_path("pipeline").write_text("{not json")
    assert layout.replay("d1") is None, "an unreadable record is no record"
    assert json.loads(layout.manifest_path("train").read_text())["fingerprint"] == "fp-train"


def test_bad_paths_are_one_message_before_anything_starts(tmp_path, capsys):
    from flows.launch import main

    (tmp_path / "file").write_text("")
    (tmp_path / "tab.yaml").write_text("run:\n\troot: x\n")
    for argv, message in ((["--config", str(tmp_path)], "(it is a folder)"),
                          (["--config", str(tmp_path / "missing.yaml")], "no such configuration file"),
                          (["--config", str(tmp_path / "tab.yaml")], "tab.yaml is not valid YAML at line 2, column 1"),
                          (["--root", str(tmp_path / "file")], "is a file; give a folder")):
        with pytest.raises(SystemExit) as exit:
            main(argv)
        assert exit.value.code == 2, argv
        assert message in capsys.readouterr().err
