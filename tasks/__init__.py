"""Prefect tasks: units of work that adapt configs to calls into saeuron/ and storage/."""

import re


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key from names such as block paths: lowercase letters, digits and
    dashes only, which is all a key may hold ('up_blocks.1.attentions.1' -> 'up-blocks-1-attentions-1')."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
