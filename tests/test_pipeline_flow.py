"""The whole pipeline under a real Prefect server: artifacts, caching, downstream reruns,
resuming after kill -9, and one clear message for a bad configuration."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from saeuron.minicanvas import STYLE_HOOK
from saeuron.harvest import HarvestConfig
from saeuron.run import PipelineConfig, RunConfig
from saeuron.sae_train import CHECKPOINT, SAETrainConfig
from saeuron.scoring import DomainSweeps, ScoreConfig
from saeuron.sampling import SamplingConfig
from saeuron.sweep import SweepConfig, ValidationConfig
from saeuron.unlearning import EvaluateConfig
from storage.activations import ActivationStore
from storage.features import read_features, sae_fingerprint
from storage.layout import remove

ROOT = Path(__file__).resolve().parents[1]
HOOK = STYLE_HOOK  # the prompt encoding ("text")


def small(model_dir, root, n_seeds: int = 2, epochs: int = 2, **evaluate) -> PipelineConfig:
    return PipelineConfig(
        run=RunConfig(root=str(root)),
        sampling=SamplingConfig(num_steps=2),
        harvest=HarvestConfig(model=str(model_dir), objects=["circle", "star", "moon"],
                              styles=["sunset", "pop", "none"], templates=1, num_steps=3,
                              n_seeds=n_seeds, samples_per_chunk=6),
        score_seeds=1,
        train=SAETrainConfig(expansion_factor=2, k=4, aux_k=8, batch_size=256, epochs=epochs,
                             holdout=0.2, buffer_size=512, checkpoint_every=3),
        score=ScoreConfig(top_n=2, sweep=DomainSweeps()),
        evaluate=EvaluateConfig(model=str(model_dir), **({"styles": ["sunset"], "objects": ["star"],
                                "style_sets": [], "n_seeds": 1}
                                                             | evaluate)))


def states(result: dict) -> dict[str, str]:
    return {s["stage"]: s["state"] for s in result["stages"]}


def latest_artifact(client, key: str):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert found, f"no artifact {key!r}"
    return max(found, key=lambda a: a.created)


def test_pipeline_caches_and_reruns_only_downstream(fresh_pipeline_dir, tmp_path, prefect_api):
    from prefect.client.orchestration import get_client

    from flows.pipeline import pipeline

    config = small(fresh_pipeline_dir, tmp_path / "run", style_sets=[["sunset", "pop"]],
                   set_scales=[1.0, 0.5], set_sweep=ValidationConfig(own=2, others=2))
    first = pipeline(config)
    assert states(first) == dict.fromkeys(("harvest", "train", "score", "evaluate"), "Completed")
    assert [s["targets"] for s in first["summary"]] == ["style", "object", "style sets"]
    report = Path(first["report"]).read_text()
    assert "![sunset+pop grid](sunset+pop/grid.png)" in report
    assert "![sunset+pop before / after](sunset+pop/before_after.png)" in report

    with get_client(sync_client=True) as client:
        for key in ("harvest-summary", "train-summary", "score-summary", "unlearning-targets",
                    "unlearning-summary", "pipeline-stages"):
            assert latest_artifact(client, key).type == "table"
        targets = json.loads(latest_artifact(client, "unlearning-targets").data)
        assert [r["target"] for r in targets] == ["baseline", "sunset", "star", "sunset+pop"]
        assert all(0 <= r["UA"] <= 1 and 0 <= r["kept"] <= 1 and r["FD_own"] >= 0
                   for r in targets[1:])
        assert list(targets[1])[:7] == ["target", "domain", "UA", "IRA", "CRA", "kept",
                                        "CRA_grid"] and list(targets[1])[-1] == "before_after"
        assert targets[-1]["scale"] in (1.0, 0.5) and targets[1]["scale"] is None
        markdown = latest_artifact(client, "unlearning-report")
        assert markdown.type == "markdown" and markdown.data.count("data:image/jpeg;base64,") == 7
        assert latest_artifact(client, "evaluate-progress").data == 100.0
        for hook in (HOOK, "up_blocks.0.attentions.0"):  # each SAE's training, keyed by its block
            assert latest_artifact(client, "train-" + hook.replace("_", "-").replace(".", "-")
                                   + "-progress").data == 100.0

    sae_file = tmp_path / "run" / "sae" / HOOK / "sae.safetensors"
    stamp = sae_file.stat().st_mtime_ns
    again = pipeline(config)
    assert states(again) == dict.fromkeys(("harvest", "train", "score", "evaluate"), "Cached")
    assert again["summary"] == first["summary"] and sae_file.stat().st_mtime_ns == stamp

    rescored = pipeline(config.model_copy(update={"score": ScoreConfig(top_n=3, sweep=DomainSweeps())}))
    assert states(rescored) == {"harvest": "Cached", "train": "Cached", "score": "Completed",
                                "evaluate": "Completed"}
    assert sae_file.stat().st_mtime_ns == stamp

    # A forced stage reruns; its inputs, hence what depends on them, are unchanged.
    forced = pipeline(config.model_copy(update={"score": ScoreConfig(top_n=3, sweep=DomainSweeps()), "force": ["train"]}))
    assert states(forced) == {"harvest": "Cached", "train": "Completed", "score": "Cached",
                              "evaluate": "Cached"}
    assert sae_file.stat().st_mtime_ns != stamp

    sae_file.write_bytes(sae_file.read_bytes()[:1000])
    truncated = pipeline(config.model_copy(update={"score": ScoreConfig(top_n=3, sweep=DomainSweeps())}))
    assert states(truncated) == {"harvest": "Cached", "train": "Completed", "score": "Cached",
                                 "evaluate": "Cached"}, "a damaged SAE is trained again, as it was"

    (tmp_path / "run" / "features" / f"{HOOK}.zarr").rename(tmp_path / "moved.zarr")
    deleted = pipeline(config.model_copy(update={"score": ScoreConfig(top_n=3, sweep=DomainSweeps())}))
    assert states(deleted)["score"] == "Completed", "a deleted output is made again"


def test_score_stage_twice_gives_identical_features_and_choices(fresh_pipeline_dir, tmp_path,
                                                               prefect_api):
    from flows.pipeline import pipeline

    sweep = SweepConfig(top_n=[1, 2], multipliers=[-3.0, -30.0], own=3, others=3, finalists=1)
    config = small(fresh_pipeline_dir, tmp_path / "run").model_copy(update={
        "score": ScoreConfig(top_n=2, sweep=DomainSweeps(style=sweep, object=sweep, workers=2))})
    hooks = {"style": HOOK, "object": "up_blocks.0.attentions.0"}

    def scored() -> dict:
        return {d: read_features(str(tmp_path / "run" / "features" / f"{hook}.zarr"),
                                 sae_fingerprint(tmp_path / "run" / "sae" / hook))
                for d, hook in hooks.items()}

    first = pipeline(config)
    before = scored()
    again = pipeline(config.model_copy(update={"force": ["score"]}))
    assert states(again)["score"] == "Completed"
    after = scored()
    for domain in hooks:
        (attrs_b, all_b, b), (attrs_a, all_a, a) = before[domain], after[domain]
        assert attrs_a["sweep"] == attrs_b["sweep"] and attrs_b["sweep"], "the same choices"
        np.testing.assert_array_equal(all_a, all_b)
        b, a = b[domain], a[domain]
        for field in ("mean", "score", "selected", "multiplier", "count"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
        assert a.gate == b.gate
    assert again["summary"] == first["summary"]


def _run(config_file: Path) -> list[str]:
    return [sys.executable, "-m", "flows.launch", "--config", str(config_file)]


def _kill_when(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if ready():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.05)
    raise AssertionError(f"the pipeline ended (rc {proc.poll()}) before it was {what}")


@pytest.fixture(scope="module")
def whole(fresh_pipeline_dir, tmp_path_factory, prefect_api) -> Path:
    """The root of an uninterrupted run of the faults' configuration (written by the launcher
    in a subprocess), which every interrupted run must end equal to."""
    tmp = tmp_path_factory.mktemp("whole")
    config = tmp / "whole.yaml"
    config.write_text(small(fresh_pipeline_dir, tmp / "run", n_seeds=8, epochs=8).to_yaml())
    subprocess.run(_run(config), cwd=ROOT, env=_env(), check=True, capture_output=True)
    return tmp / "run"


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _config(fresh_pipeline_dir, root: Path, folder: Path | None = None) -> Path:
    config = (folder or root.parent) / f"{root.name}.yaml"
    config.write_text(small(fresh_pipeline_dir, root, n_seeds=8, epochs=8).to_yaml())
    return config


def _manifest(root: Path, stage: str) -> dict:
    return json.loads((root / "manifests" / f"{stage}.json").read_text())


def assert_same_result(root: Path, whole: Path) -> None:
    for stage in ("train", "evaluate"):
        assert _manifest(root, stage)["metrics"] == _manifest(whole, stage)["metrics"] \
            | ({"report": str(root / "eval" / "report.md")} if stage == "evaluate" else {})


def test_killed_pipeline_resumes_to_the_same_metrics(fresh_pipeline_dir, tmp_path, whole):
    config = whole.parent / "whole.yaml"
    text = _manifest(whole, "pipeline")["result"]["text"]
    again = subprocess.run(_run(config), cwd=ROOT, env=_env(), check=True,
                           capture_output=True, text=True)
    assert again.stdout.startswith("Nothing changed") and text in again.stdout, \
        "a rerun with nothing changed replays the recorded result"

    killed = tmp_path / "killed"
    store = killed / "activations" / "harvest.zarr"

    def mid_harvest() -> bool:
        existing = ActivationStore.open_existing(str(store)) if store.exists() else None
        return existing is not None and existing.done().sum() >= 2

    def mid_training() -> bool:
        checkpoint = killed / "sae" / HOOK / CHECKPOINT
        return checkpoint.is_file() and torch.load(checkpoint, weights_only=False)["step"] >= 6

    for ready, what in ((mid_harvest, "mid-harvest"), (mid_training, "mid-training")):
        proc = subprocess.Popen(_run(_config(fresh_pipeline_dir, killed)), cwd=ROOT, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _kill_when(proc, ready, what)
    assert ActivationStore.open(str(store)).missing_units() == []
    assert not (killed / "manifests" / "train.json").exists(), "killed before training ended"
    subprocess.run(_run(_config(fresh_pipeline_dir, killed)), cwd=ROOT, env=_env(), check=True,
                   capture_output=True)
    assert_same_result(killed, whole)
    remove(str(whole / "features" / f"{HOOK}.zarr"))
    third = subprocess.run(_run(config), cwd=ROOT, env=_env(), check=True,
                           capture_output=True, text=True)
    assert "Nothing changed" not in third.stdout and "| score | Completed |" in third.stdout, \
        "a missing output is made again by the flow, never replayed"


def test_the_readmes_python_example_unlearns_from_a_finished_run(whole):
    readme = (ROOT / "README.md").read_text()
    example = readme.split("<!-- python-example")[1].split("```python\n")[1].split("```")[0]
    assert len(example.strip().splitlines()) <= 5
    names = {}
    exec(example.replace("runs/default", str(whole)).replace("sketch", "sunset"), names)
    model, images = names["model"], names["images"]
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8
    assert model.concepts() == {"style": ["none", "pop", "sunset"], "object": ["circle", "moon", "star"]}
    plain = model.sample(["a star in sunset style"], seeds=[0])
    assert not np.array_equal(plain, images), "the detector reads sunset in the prompt's encoding"
    pop = model.sample(["a star in pop style"], seeds=[0])
    assert np.array_equal(model.sample(["a star in pop style"], seeds=[0], unlearn=["sunset"]),
                          pop), "a prompt without sunset is left alone"
    edited = model.sample(["a star in sunset style"], seeds=[0], unlearn=["sunset"], gate="mean")
    assert not np.array_equal(edited, plain), "edited where the concept's mean is exceeded"
    both = model.sample(["a star in sunset style"], seeds=[0], unlearn=["sunset", "star"],
                        gate="mean")
    assert not np.array_equal(both, edited), "a style and an object, each at its block"
    with pytest.raises(ValueError, match="unknown concept 'baroque'; this run can unlearn styles"):
        model.sample(["a star"], seeds=[0], unlearn=["baroque"])


def _processes_with(marker: str) -> list[int]:
    """Processes whose environment holds `marker` (a test's own PREFECT_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_crash_is_one_message_and_leaves_no_server_and_a_second_run_is_refused(
        fresh_pipeline_dir, tmp_path):
    home = tmp_path / "prefect-home"
    env = {k: v for k, v in _env().items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(home)}
    root = tmp_path / "run"
    config = _config(fresh_pipeline_dir, root)
    first = subprocess.Popen(_run(config), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    store = root / "activations" / "harvest.zarr"
    deadline = time.time() + 300
    lock = root / "manifests" / ".lock"
    while not (store.exists() and lock.exists() and lock.read_text()):
        assert time.time() < deadline and first.poll() is None, "the first run never harvested"
        time.sleep(0.1)
    second = subprocess.run(_run(config), cwd=ROOT, env=env, capture_output=True, text=True)
    assert second.returncode == 2 and "is in use by pid" in second.stderr, second.stderr[-1000:]
    assert "Traceback" not in second.stderr
    (child,) = [p for p in _processes_with(str(home)) if b"flows.launch" in
                Path(f"/proc/{p}/cmdline").read_bytes() and p != first.pid
                and b"SAEURON_SUPERVISED" in Path(f"/proc/{p}/environ").read_bytes()]
    os.kill(child, signal.SIGSEGV)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 1
    assert err.strip().splitlines()[-1].startswith("error: the flows.launch process crashed"), err[-2000:]
    assert _processes_with(str(home)) == [], "the run's Prefect server is stopped"


def _mount_namespace() -> list[str] | None:
    """How to run a command where it may mount a tmpfs: unshare's mount namespace (as root, or
    in a user namespace of its own); None where neither is allowed."""
    for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
        try:
            if subprocess.run(prefix + ["sh", "-c", "mount -t tmpfs tmpfs /mnt"],
                              capture_output=True).returncode == 0:
                return prefix
        except FileNotFoundError:
            return None
    return None


def test_a_full_disk_is_one_message_and_the_rerun_after_freeing_space_is_whole(
        fresh_pipeline_dir, tmp_path, whole):
    namespace = _mount_namespace()
    if namespace is None:
        pytest.skip("no mount namespace here (unshare -m / -rm) to make a small disk in")
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir(), out.mkdir()
    config = _config(fresh_pipeline_dir, disk / "run", tmp_path)
    command = " ".join(_run(config))
    script = (f"mount -t tmpfs -o size=2m tmpfs {disk} && "
              f"{{ {command} 2> {out}/full.err; echo $? > {out}/full.rc; }} ; "
              f"mount -o remount,size=64m tmpfs {disk} && {command} > {out}/freed.out 2>&1; "
              f"echo $? > {out}/freed.rc; cp -a {disk}/run {out}/run")
    subprocess.run(namespace + ["sh", "-c", script], cwd=ROOT, env=_env(), check=True,
                   timeout=900)
    err = (out / "full.err").read_text()
    assert (out / "full.rc").read_text().strip() == "2", err[-2000:]
    assert re.match(rf"error: the (harvest|train|score|evaluate) stage: no space left on the "
                    rf"disk of the run root {re.escape(str(disk / 'run'))}",
                    err.strip().splitlines()[-1]), err[-2000:]
    assert (out / "freed.rc").read_text().strip() == "0", (out / "freed.out").read_text()[-2000:]
    for stage in ("train", "evaluate"):
        assert _manifest(out / "run", stage)["metrics"] == _manifest(whole, stage)["metrics"] \
            | ({"report": str(disk / "run" / "eval" / "report.md")} if stage == "evaluate" else {})


@pytest.mark.parametrize("change, message", [
    ({"train": {"k": "many"}}, "train.k: Input should be a valid integer"),
    ({"train": {"expansion_factor": 0}}, "train.expansion_factor: Input should be greater than"),
    ({"harvest": {"hooks": ["up_blocks.9"]}}, "train.hooks: 'text' is not harvested"),
    ({"train": {"hooks": ["text"]}},
     "score.hooks.object 'up_blocks.0.attentions.0' has no SAE"),
    ({"harvest": {"hooks": ["up_blocks.9"]}, "train": {"hooks": ["up_blocks.9"]},
      "score": {"hooks": {"style": "up_blocks.9", "object": "up_blocks.9"}}},
     "up_blocks.1.attentions.0"),
    ({"evaluate": {"styles": ["baroque"]}}, "unknown style target(s) ['baroque']"),
])
def test_bad_configuration_is_one_message_before_any_work(change, message, tmp_path, capsys,
                                                         monkeypatch):
    import yaml

    from flows.launch import main

    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"run": {"root": str(tmp_path / "run")}, **change}))
    if change == {"train": {"k": "many"}}:  # one of them as a user meets it, in a process of its own
        out = subprocess.run(_run(config), cwd=ROOT, capture_output=True, text=True, timeout=300)
        code, err = out.returncode, out.stderr
    else:
        with pytest.raises(SystemExit) as exit:
            main(["--config", str(config)])
        code, err = exit.value.code, capsys.readouterr().err
    assert code == 2, err[-2000:]
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists(), "nothing is written for a bad configuration"


def test_single_stage_without_its_upstream_says_what_to_run(tmp_path):
    out = subprocess.run([sys.executable, "-m", "flows.score", "--root", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "score needs the output of the harvest stage" in out.stderr
    assert "Traceback" not in out.stderr
