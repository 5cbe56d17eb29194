"""MiniCanvas: the embedded default world (renderer, text-to-image model, judge, weights)."""

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
MODEL_DIR = WEIGHTS / "model"
"""The shipped text-to-image pipeline, in diffusers' folder layout."""
JUDGE_DIR = WEIGHTS / "judge"
"""The shipped style/object classifier."""
