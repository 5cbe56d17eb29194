"""MiniCanvas: the embedded default world (renderer, text-to-image model, judge, weights)."""

from pathlib import Path

from saeuron.names import TEXT_HOOK

WEIGHTS = Path(__file__).parent / "weights"
MODEL_DIR = WEIGHTS / "model"
"""The shipped text-to-image pipeline, in diffusers' folder layout."""
JUDGE_DIR = WEIGHTS / "judge"
"""The shipped style/object classifier."""
STYLE_HOOK = TEXT_HOOK
"""Where MiniCanvas's styles are removed: the prompt's encoding (saeuron.names.TEXT_HOOK), which
every path of the style into the UNet reads. Edits of the block that carries the style
(STYLE_BLOCK) removed styles by destroying the object first (BENCHMARKS.md, "What removes a
style")."""
STYLE_BLOCK = "up_blocks.1.attentions.1"
"""The UNet block that carries the style: 8x8, where swapping the block's output swaps the
style."""
OBJECT_HOOK = "up_blocks.0.attentions.0"
"""The block whose SAE removes objects: 4x4, the up path's lowest resolution, where the object
is readable from position-averaged activations (at 8x8 it is only a spatial pattern). The
paper likewise edits different blocks for objects and for styles (BENCHMARKS.md)."""
