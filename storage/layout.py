"""The run layout and stage manifests: where a run's artifacts live, and which are complete.

    <root>/                       a local folder
      config.yaml                 the resolved pipeline configuration
      sae/<hook>/                 SAE weights, training checkpoints and metrics
      eval/<target>/              metrics.json and image grid per target; eval/report.md
      manifests/<stage>.json      written last, atomically: the stage is complete for its fingerprint
                                  (outputs inside the root recorded relative to it: a moved root works)
      manifests/<stage>.started   the fingerprint a stage was started with (removed once complete)
      manifests/pipeline.json     the last pipeline command's inputs digest and result (replay)
    <stores>/                     <root> by default, or any fsspec URL (s3://..., memory://...)
      activations/<split>.zarr
      features/<hook>.zarr

A stage is complete when its manifest's fingerprint equals the one its inputs give now and its
outputs exist. A stage found started with another fingerprint (or forced) has its outputs
cleared before it runs, so a killed run resumes only work of the same inputs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import fsspec

from storage.arrays import StoreCorruptError

log = logging.getLogger("saeuron.storage")
"""Warnings about damaged state (shown in Prefect's run logs: PREFECT_LOGGING_EXTRA_LOGGERS)."""

LIBRARIES = ("saeuron", "torch", "diffusers", "transformers", "zarr", "dask", "prefect")
STAGES = ("harvest", "train", "score", "evaluate")
DEFAULT_ROOT = "runs/default"


def fingerprint(*parts: Any) -> str:
    """A stable hash of JSON-able parts (configurations, upstream fingerprints, code version)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


SMALL = 4 << 20
"""Files up to this size are digested by their bytes, larger ones by size and modification
time (activation chunks, an SD-sized SAE): a truncated or replaced file is still seen."""


NOT_MADE = ("checkpoint", "metrics.jsonl")
"""Files of an output that are not its result: resume state and logs (with timings); compiled
Python (__pycache__) is left out too."""


def content_digest(url: str) -> str:
    """A digest of what a stage made at `url` (a file, or every file under a folder or store,
    NOT_MADE aside)."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return "missing"
    files = fs.find(path, detail=True) if fs.isdir(path) else {path: fs.info(path)}
    h = hashlib.sha256()
    for name in sorted(files):
        if name.rsplit("/", 1)[-1].startswith(NOT_MADE) or "/__pycache__/" in name:
            continue
        info = files[name]
        h.update(f"{name[len(path):]}:{info.get('size')}".encode())
        if info.get("size", SMALL + 1) <= SMALL:
            h.update(fs.cat_file(name))
        else:
            h.update(str(info.get("mtime") or info.get("LastModified") or info.get("ETag")).encode())
    return h.hexdigest()[:16]


def made(manifest: dict) -> str:
    """What a finished stage made, for the fingerprints of the stages that read it: its inputs'
    fingerprint and its outputs' digests (a forced rerun that made something else, or an output
    changed since, then reruns them)."""
    return fingerprint(manifest["fingerprint"], manifest.get("digests"))


class RootBusyError(RuntimeError):
    """Another process is running on the same run root."""


_HELD: dict[str, list] = {}
"""Run roots this process holds: resolved path -> [lock file, depth] (hold is reentrant)."""


class ManifestError(ValueError):
    """A manifest that exists but cannot be read (damaged, or not written by this project)."""


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a kill leaves the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> Any | None:
    """A JSON file's contents, or None if it is missing or unreadable (a resume file damaged:
    the work it records is done again, with a warning naming it)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning(f"{path} cannot be read ({error}); taken as absent, its work is done again")
        return None


def versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def inputs_digest(command: Any, paths: list[Path]) -> str:
    """A hash of everything a pipeline command's result can depend on, computed without
    importing torch or starting Prefect: the command (its configuration file's text and
    options), the content digest of every path (the project's code and shipped weights, the
    files a configuration names), the library versions and the CPU's flags (the precision
    "auto" resolves to depends on them)."""
    return fingerprint(command, versions(), _cpu_flags(),
                       [content_digest(str(path)) for path in paths])


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.processor()


@dataclass(frozen=True)
class RunLayout:
    root: str
    """Local folder of the run."""
    stores: str | None = None
    """Folder or fsspec URL of the Zarr stores (default: the root)."""

    @property
    def _stores(self) -> str:
        return (self.stores or self.root).rstrip("/")

    def activations(self, split: str) -> str:
        return f"{self._stores}/activations/{split}.zarr"

    def features(self, hook: str) -> str:
        return f"{self._stores}/features/{hook}.zarr"

    @property
    def sae_dir(self) -> Path:
        return Path(self.root) / "sae"

    @property
    def eval_dir(self) -> Path:
        return Path(self.root) / "eval"

    def owns(self, url: str) -> bool:
        """Whether `url` lies in this run's root or stores: a manifest copied with its root
        (cp -a) names the original's outputs, which are not this run's."""
        for base in {self.root, self._stores}:
            if "://" in base or "://" in url:
                if url.startswith(base.rstrip("/") + "/"):
                    return True
            elif Path(url).resolve().is_relative_to(Path(base).resolve()):
                return True
        return False

    def manifest_path(self, stage: str) -> Path:
        return Path(self.root) / "manifests" / f"{stage}.json"

    def read_manifest(self, stage: str) -> dict | None:
        """The stage's manifest, None if there is none; ManifestError if it is unreadable."""
        path = self.manifest_path(stage)
        if not path.is_file():
            return None
        manifest = read_json(path)
        if not isinstance(manifest, dict) or not {"fingerprint", "outputs"} <= set(manifest):
            raise ManifestError(f"{path} is damaged (not a manifest this project wrote): run the "
                                f"{stage} stage again (the pipeline reruns it by itself)")
        for name in manifest.get("in_root", []):  # stored relative to the root: a moved root works
            manifest["outputs"][name] = str(Path(self.root) / manifest["outputs"][name])
        return manifest

    def complete(self, stage: str, fp: str) -> dict | None:
        """The stage's manifest if it is complete for fingerprint `fp` and its outputs are there
        as it made them (their digests); None too if the manifest is damaged (then it runs)."""
        try:
            manifest = self.read_manifest(stage)
        except ManifestError as error:
            log.warning(str(error))
            return None
        if manifest is None or manifest["fingerprint"] != fp:
            return None
        return None if self.changed(manifest) else manifest

    def changed(self, manifest: dict) -> list[str]:
        """The outputs of a manifest that are not as its stage made them: another root's,
        missing, or with another digest than the one recorded."""
        digests = manifest.get("digests", {})
        return [p for k, p in manifest["outputs"].items()
                if not (self.owns(p) and exists(p)) or (k in digests and content_digest(p) != digests[k])]

    def upstream(self, stage: str, needed_by: str) -> dict:
        """The manifest of a finished upstream stage, or a clear error naming what to run."""
        manifest = self.read_manifest(stage)
        if manifest is None:
            raise FileNotFoundError(
                f"{needed_by} needs the output of the {stage} stage, but {self.root} has no "
                f"{self.manifest_path(stage).relative_to(self.root)}: run the {stage} stage "
                f"(or the whole pipeline) on this root first")
        missing = [p for p in manifest["outputs"].values() if not exists(p)]
        if missing:
            raise FileNotFoundError(f"{needed_by} needs the {stage} stage's outputs, but "
                                    f"{', '.join(missing)} no longer exist: run {stage} again")
        if foreign := [p for p in manifest["outputs"].values() if not self.owns(p)]:
            raise FileNotFoundError(
                f"{needed_by} needs the {stage} stage's outputs in this run, but its manifest "
                f"names {', '.join(dict.fromkeys(foreign))}, outside {self.root} and its stores "
                f"(a copied root names the original's): run {stage} again on this root")
        if changed := self.changed(manifest):
            raise StoreCorruptError(
                f"{needed_by} needs the {stage} stage's outputs as it made them, but "
                f"{', '.join(dict.fromkeys(changed))} changed since it finished (damaged, or "
                f"written by something else): run {stage} again (the pipeline does so by "
                "itself; a harvest re-harvests just the damaged units)")
        return manifest

    def begin(self, stage: str, fp: str, outputs: list[str], force: bool = False) -> bool:
        """Record that `stage` starts with fingerprint `fp`; clear `outputs` first if the stage's
        last output or start was from other inputs (or `force`). Returns whether it was."""
        started = Path(self.root) / "manifests" / f"{stage}.started"
        try:
            before = self.read_manifest(stage)
        except ManifestError:  # damaged: whatever it described is not to be trusted
            before = {"fingerprint": None}
        stale = force or (before is not None and before["fingerprint"] != fp) or (
            started.is_file() and started.read_text() != fp)
        self.manifest_path(stage).unlink(missing_ok=True)
        if stale:
            for path in outputs:
                remove(path)
        started.parent.mkdir(parents=True, exist_ok=True)
        started.write_text(fp)
        return stale

    def finish(self, stage: str, fp: str, outputs: dict[str, str], metrics: dict,
               seconds: float, upstream: dict[str, str]) -> dict:
        """Write the stage's manifest, atomically and last."""
        root = Path(self.root).resolve()
        in_root = [k for k, v in outputs.items()
                   if "://" not in v and Path(v).resolve().is_relative_to(root)]
        stored = {k: str(Path(v).resolve().relative_to(root)) if k in in_root else v
                  for k, v in outputs.items()}
        manifest = {"stage": stage, "fingerprint": fp, "upstream": upstream, "outputs": stored,
                    "in_root": in_root, "digests": {k: content_digest(v) for k, v in outputs.items()},
                    "metrics": metrics, "seconds": round(seconds, 1),
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": versions()}
        write_json(self.manifest_path(stage), manifest)
        (Path(self.root) / "manifests" / f"{stage}.started").unlink(missing_ok=True)
        return {**manifest, "outputs": outputs}


    @contextmanager
    def hold(self) -> Iterator[None]:
        """Exclusive use of the run root while the block runs (a lock on manifests/.lock,
        released when the process ends, even by kill -9); reentrant in one process. Another
        process holding it is a RootBusyError naming it, before any work."""
        key = str(Path(self.root).resolve())
        if key in _HELD:
            _HELD[key][1] += 1
        else:
            path = Path(self.root) / "manifests" / ".lock"
            path.parent.mkdir(parents=True, exist_ok=True)
            file = open(path, "a+")
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                file.seek(0)
                holder = file.read().strip() or "another process"
                file.close()
                raise RootBusyError(f"{self.root} is in use by {holder}: wait for it to end, or "
                                    "use another run root (--root)") from None
            file.truncate(0)
            file.write(f"pid {os.getpid()} (since {time.strftime('%Y-%m-%dT%H:%M:%S%z')})")
            file.flush()
            _HELD[key] = [file, 1]
        try:
            yield
        finally:
            _HELD[key][1] -= 1
            if not _HELD[key][1]:
                file = _HELD.pop(key)[0]
                file.truncate(0)
                fcntl.flock(file, fcntl.LOCK_UN)
                file.close()

    def record_pipeline(self, digest: str, result: dict) -> None:
        """Keep a finished pipeline command's result with its inputs digest (inputs_digest) and
        the fingerprints its stages finished with, for `replay`."""
        stages = {stage: self.read_manifest(stage)["fingerprint"] for stage in STAGES}
        write_json(self.manifest_path("pipeline"), {
            "digest": digest, "stages": stages, "result": result,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})

    def replay(self, digest: str) -> dict | None:
        """The recorded result of the last pipeline command, if its inputs digest is `digest`
        and every stage is still complete with the fingerprint it finished with (outputs
        there); None otherwise, or if the record cannot be read (then the pipeline runs)."""
        try:
            record = read_json(self.manifest_path("pipeline"))
            if record["digest"] != digest:
                return None
            if all(self.complete(s, record["stages"][s]) for s in STAGES):
                return record
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return None


class UnitResults:
    """Results of a stage that finishes unit by unit (the evaluation's targets): each unit's in
    <folder>/<name>/metrics.json with the stage's fingerprint, written atomically, so that a
    kill loses at most the units in progress; a result of another fingerprint, or unreadable,
    is not done."""

    def __init__(self, folder: Path, fp: str):
        self.folder, self.fp = Path(folder), fp

    def path(self, name: str) -> Path:
        return self.folder / name / "metrics.json"

    def done(self, names: list[str]) -> dict[str, dict]:
        """Name -> result of the units of `names` finished for this fingerprint."""
        out = {}
        for name in names:
            record = read_json(self.path(name))
            if isinstance(record, dict) and record.get("fingerprint") == self.fp and "row" in record:
                out[name] = record["row"]
        return out

    def add(self, name: str, row: dict) -> None:
        write_json(self.path(name), {"fingerprint": self.fp, "row": row})


def exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)


def remove(url: str) -> None:
    fs, path = fsspec.core.url_to_fs(url)
    if fs.exists(path):
        if fs.isdir(path):
            fs.rm(path, recursive=True)
        else:
            fs.rm(path)
