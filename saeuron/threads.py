"""Torch's intra-op thread count, set for a block of work.

Float sums depend on how many threads share them, so stages that must give bit-identical
results across resumes and machines run at a thread count fixed in their configuration.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with n intra-op threads, then restore the previous setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
