"""Shared fixtures: a freshly built MiniCanvas pipeline on disk, the shipped weights."""

from __future__ import annotations

import pytest

from saeuron.minicanvas import JUDGE_DIR, MODEL_DIR
from saeuron.minicanvas.classifier import Judge
from saeuron.minicanvas.model import build_pipeline
from saeuron.pipeline import Pipeline, load_pipeline


@pytest.fixture(scope="session")
def fresh_pipeline_dir(tmp_path_factory: pytest.TempPathFactory):
    """An untrained MiniCanvas pipeline saved in diffusers' layout."""
    path = tmp_path_factory.mktemp("pipeline") / "minicanvas"
    build_pipeline(seed=0).save(path)
    return path


@pytest.fixture(scope="session")
def shipped_pipeline() -> Pipeline:
    return load_pipeline(MODEL_DIR)


@pytest.fixture(scope="session")
def judge() -> Judge:
    return Judge.load(JUDGE_DIR)
