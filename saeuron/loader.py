"""Streaming shuffled batches of activation vectors from a store, never loading it whole.

Whole chunks (write units) are read in a random order by a background thread (reading and
decompression overlap training), mixed in a shuffle buffer, and served as float32 batches.
Every vector of the selected samples and timesteps is served exactly once per epoch. The order
depends only on (seed, epoch), so a resumed run can skip to where it stopped. Memory is bounded
by the buffer plus the prefetched chunks, not by the store.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator

import numpy as np
import torch

from storage.activations import ActivationStore


class VectorStream:
    def __init__(self, store: ActivationStore, hook: str, *, batch_size: int,
                 buffer_size: int = 1 << 16, seed: int = 0, samples: np.ndarray | None = None,
                 timesteps: list[int] | None = None, prefetch: int = 2):
        store.require_hooks([hook])
        if timesteps is not None:
            bad = [t for t in timesteps if t not in store.spec.timesteps]
            if bad or not timesteps:
                raise ValueError(f"timestep(s) {bad or timesteps} are not in the store; it holds "
                                 f"{store.spec.timesteps}")
        selected = np.arange(store.n_samples) if samples is None else np.unique(samples)
        if len(selected) == 0:
            raise ValueError("the split selects no sample: nothing to stream")
        missing = [u for u in store.missing_units()
                   if np.isin(np.arange(store.n_samples)[store.unit_samples(u)], selected).any()]
        if missing:
            raise ValueError(f"the store's units {missing[:10]} are not written yet: finish the "
                             "harvest first")
        self.store, self.hook, self.batch_size = store, hook, batch_size
        self.buffer_size, self.seed, self.prefetch = buffer_size, seed, prefetch
        self.timesteps = timesteps
        self.samples = selected
        self.units = sorted({int(s) // store.spec.samples_per_chunk for s in selected})
        n_t = len(timesteps) if timesteps is not None else len(store.spec.timesteps)
        positions, self.width = store.spec.hooks[hook]
        self.vectors_per_epoch = len(selected) * n_t * positions

    @property
    def batches_per_epoch(self) -> int:
        return -(-self.vectors_per_epoch // self.batch_size)

    def _chunks(self, order: list[int]) -> Iterator[np.ndarray]:
        """Read units in `order` on a background thread, at most `prefetch` ahead."""
        out: queue.Queue = queue.Queue(maxsize=max(1, self.prefetch))
        stop = threading.Event()

        def read() -> None:
            try:
                for unit in order:
                    if stop.is_set():
                        return
                    rows = np.arange(self.store.n_samples)[self.store.unit_samples(unit)]
                    keep = np.isin(rows, self.samples)
                    data = self.store.read_unit(self.hook, unit, self.timesteps)[keep]
                    out.put(data.reshape(-1, data.shape[-1]))
                out.put(None)
            except BaseException as err:  # handed to the consumer, which re-raises it
                out.put(err)

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        try:
            while (item := out.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    out.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[torch.Tensor]:
        """The batches of one epoch, float32 (batch, width); the first `skip` are not served."""
        rng = np.random.default_rng([self.seed, epoch])
        order = [self.units[i] for i in rng.permutation(len(self.units))]
        buffer = np.empty((0, self.width), dtype=self.store.spec.dtype)
        served = 0

        def serve(batch: np.ndarray) -> Iterator[torch.Tensor]:
            nonlocal served
            served += 1
            if served > skip:
                yield torch.from_numpy(batch.astype(np.float32))

        for chunk in self._chunks(order):
            buffer = np.concatenate([buffer, chunk])
            buffer = buffer[rng.permutation(len(buffer))]
            while len(buffer) >= self.buffer_size + self.batch_size:
                yield from serve(buffer[:self.batch_size])
                buffer = buffer[self.batch_size:]
        while len(buffer):
            yield from serve(buffer[:self.batch_size])
            buffer = buffer[self.batch_size:]
