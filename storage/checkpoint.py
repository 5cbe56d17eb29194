"""Atomic checkpoints: a checkpoint on disk is always a complete one, whenever a run is killed,
and loading one never runs code (tensors and plain values only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` next to `path`, flush it to disk, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The state saved at `path`, or None when there is none yet."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only: a pickled object (code) in it is refused too
        raise ValueError(f"checkpoint {path} is unreadable or holds more than tensors and plain "
                         f"values ({str(err).splitlines()[0]}); delete it to start over") from None


def default_permissions(path: str | Path) -> None:
    """Give a file the user's default permissions (0666 less the umask): some writers (the
    safetensors library) create files readable by their owner only."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
