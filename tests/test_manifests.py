"""A stage is complete only while its outputs are as it made them, and what reads them follows
what was made, not only what was asked for."""

from storage.layout import RunLayout, content_digest, made


def test_outputs_changed_since_a_stage_finished_make_it_incomplete(tmp_path):
    layout = RunLayout(root=str(tmp_path))
    out = tmp_path / "sae"
    out.mkdir()
    (out / "sae.safetensors").write_bytes(b"weights" * 100)
    (out / "checkpoint.pt").write_bytes(b"resume state")
    manifest = layout.finish("train", "fp", {"sae": str(out)}, {}, 1.0, {})
    assert layout.complete("train", "fp") == manifest
    (out / "checkpoint.pt").unlink()
    assert layout.complete("train", "fp") is not None, "checkpoints are resume state, not output"
    (out / "sae.safetensors").write_bytes(b"weights" * 50)
    assert layout.complete("train", "fp") is None, "a truncated output"


def test_downstream_fingerprints_follow_what_an_upstream_stage_made(tmp_path):
    layout = RunLayout(root=str(tmp_path))
    out = tmp_path / "sae.safetensors"
    out.write_bytes(b"one")
    first = made(layout.finish("train", "fp", {"sae": str(out)}, {}, 1.0, {}))
    out.write_bytes(b"two")  # a forced rerun with the same inputs made other bytes
    second = made(layout.finish("train", "fp", {"sae": str(out)}, {}, 1.0, {}))
    assert first != second
    assert content_digest(str(tmp_path / "gone")) == "missing"


def test_damaged_state_files_rerun_their_work_and_name_themselves(tmp_path, caplog):
    import pytest

    from storage.layout import ManifestError

    layout = RunLayout(root=str(tmp_path))
    out = tmp_path / "features"
    out.mkdir()
    layout.finish("score", "fp", {"style": str(out)}, {}, 1.0, {})
    for garbage in ("{not json", "{}", ""):
        layout.manifest_path("score").write_text(garbage)
        caplog.clear()
        assert layout.complete("score", "fp") is None, "a damaged manifest: the stage runs"
        assert "score.json is damaged" in caplog.text, "with a warning naming it"
        with pytest.raises(ManifestError, match=r"score.json is damaged.*run the score stage"):
            layout.upstream("score", "evaluate")
    assert layout.begin("score", "fp", [str(out)]) is True, "its outputs are cleared"
    assert not out.exists()


def test_resume_files_cut_short_by_a_kill_read_as_not_done(tmp_path, caplog):
    from storage.layout import read_json, write_json

    path = tmp_path / "eval" / "sketch" / "metrics.json"
    write_json(path, {"fingerprint": "fp", "row": {"UA": 1.0}})
    assert read_json(path) == {"fingerprint": "fp", "row": {"UA": 1.0}}
    assert not list(path.parent.glob("*.tmp")), "written through a temporary file"
    for cut in ("", '{"fingerprint": "fp", "ro'):
        path.write_text(cut)
        caplog.clear()
        assert read_json(path) is None
        assert f"{path} cannot be read" in caplog.text


def test_one_process_at_a_time_holds_a_run_root(tmp_path, prefect_api):
    import signal
    import subprocess
    import sys

    import pytest

    from storage.layout import RootBusyError

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from storage.layout import RunLayout\n"
        f"with RunLayout(root={str(tmp_path)!r}).hold():\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RootBusyError, match=rf"in use by pid {holder.pid} .*--root"):
            with RunLayout(root=str(tmp_path)).hold():
                pass
        from flows.train import train
        from saeuron.run import RunConfig

        with pytest.raises(RootBusyError, match=f"in use by pid {holder.pid}"):  # a deployment's run
            train(run=RunConfig(root=str(tmp_path)))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with RunLayout(root=str(tmp_path)).hold():
        with RunLayout(root=str(tmp_path)).hold():  # reentrant: the pipeline, then a stage
            pass


def test_a_copied_root_does_not_take_the_originals_outputs_for_its_own(tmp_path):
    import shutil

    original = RunLayout(root=str(tmp_path / "a"))
    out = tmp_path / "a" / "sae"
    out.mkdir(parents=True)
    (out / "sae.safetensors").write_bytes(b"w")
    original.finish("train", "fp", {"sae": str(out)}, {}, 1.0, {})
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "sae")
    assert original.complete("train", "fp") is not None
    assert RunLayout(root=str(tmp_path / "b")).complete("train", "fp") is None
    other = RunLayout(root=str(tmp_path / "c"))  # a manifest naming another root's output
    other.finish("train", "fp", {"sae": str(out)}, {}, 1.0, {})
    import pytest

    with pytest.raises(FileNotFoundError, match=r"names .*/a/sae, outside .*/c and its stores"):
        other.upstream("train", "score")
    remote = RunLayout(root=str(tmp_path / "a"), stores="s3://bucket/run")
    assert remote.owns("s3://bucket/run/activations/harvest.zarr")
    assert not remote.owns("s3://bucket/other/activations/harvest.zarr")


class Payload:
    """Stands for code a pickled checkpoint could carry."""


def test_checkpoints_hold_tensors_and_values_only_and_weights_are_readable(tmp_path):
    import os
    import stat

    import pytest
    import torch

    from saeuron.sae import WEIGHTS, SAEConfig, SparseAutoencoder
    from storage.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(tmp_path / "ok.pt", {"step": 3, "w": torch.ones(2), "config": {"k": [1]}})
    assert load_checkpoint(tmp_path / "ok.pt")["step"] == 3
    torch.save({"step": 3, "payload": Payload()}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt is unreadable or holds more than tensors"):
        load_checkpoint(tmp_path / "bad.pt")
    mask = os.umask(0o022)
    try:
        SparseAutoencoder(SAEConfig(d_in=4, expansion_factor=2, k=2)).save(tmp_path / "sae")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "sae" / WEIGHTS).stat().st_mode) == 0o644


def test_a_moved_root_finds_its_own_outputs(tmp_path):
    import shutil

    layout = RunLayout(root=str(tmp_path / "a"))
    out = tmp_path / "a" / "sae"
    out.mkdir(parents=True)
    (out / "sae.safetensors").write_bytes(b"w" * 10)
    assert layout.finish("train", "fp", {"sae": str(out)}, {}, 1.0, {})["outputs"] == {"sae": str(out)}
    shutil.move(tmp_path / "a", tmp_path / "b")
    moved = RunLayout(root=str(tmp_path / "b")).complete("train", "fp")
    assert moved["outputs"] == {"sae": str(tmp_path / "b" / "sae")}
