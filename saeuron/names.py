"""Names every world shares, defined once: the concept domains, the style of an unstyled
prompt, the hook that is no UNet block, and where each split's seeds start (so that no two
splits share a picture)."""

from storage.features import DOMAINS

NO_STYLE = "none"
"""The style label of prompts without a style (the plain templates)."""

TEXT_HOOK = "text"
"""The hook of the prompt's encoding as the UNet receives it (saeuron.capture)."""

SPLIT_SEED_BASE = {"harvest": 0, "score": 100_000, "val": 500_000, "eval": 1_000_000}
"""First seed of each split: harvest (SAE training), score, the sweep's validation, evaluation."""

__all__ = ["DOMAINS", "NO_STYLE", "SPLIT_SEED_BASE", "TEXT_HOOK"]
