"""MiniCanvas: the embedded default world (renderer, text-to-image model, judge, weights)."""

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
MODEL_DIR = WEIGHTS / "model"
"""The shipped text-to-image pipeline, in diffusers' folder layout."""
JUDGE_DIR = WEIGHTS / "judge"
"""The shipped style/object classifier."""
STYLE_HOOK = "up_blocks.1.attentions.1"
"""The block whose SAE removes styles: 8x8, where swapping the block's output swaps the style."""
OBJECT_HOOK = "up_blocks.0.attentions.0"
"""The block whose SAE removes objects: 4x4, the up path's lowest resolution, where the object
is readable from position-averaged activations (at 8x8 it is only a spatial pattern). The
paper likewise edits different blocks for objects and for styles (BENCHMARKS.md)."""
