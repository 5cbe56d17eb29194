"""A stage is complete only while its outputs are as it made them, and what reads them follows
what was made, not only what was asked for."""

from storage.run import RunLayout, content_digest, made


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
