"""SAE training throughput: streaming from the Zarr store vs the same data in memory.

Both sides run the same training step (SAETrainer._train_step) on the same vectors: one epoch
streamed from the store (chunks read and decompressed on a background thread, shuffle buffer,
float16 -> float32), or one epoch of random batches from a single float32 tensor. Repeats
alternate the two sides; the ratio of median throughputs is reported. A second part times
training steps at the Stable Diffusion scale (d 1280, 20,480 latents, k 32, batch 4096).

    .venv/bin/python bench/sae_throughput.py [--store URL] [--repeats 3] [--sd-steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import pandas as pd
import torch

from saeuron.sae import SAEConfig, SparseAutoencoder
from saeuron.sae_train import SAETrainConfig, SAETrainer
from storage.activations import ActivationStore, StoreSpec

HOOK = "up_blocks.1.attentions.1"


def synthetic_store(url: str, samples: int = 512, timesteps: int = 20, positions: int = 64,
                    width: int = 64) -> ActivationStore:
    """MiniCanvas-shaped activations: sparse non-negative mixtures of random directions."""
    table = pd.DataFrame({"prompt": ["x"] * samples, "object": ["circle"] * samples,
                          "style": ["none"] * samples, "template": [0] * samples,
                          "seed": list(range(samples))})
    spec = StoreSpec(hooks={HOOK: (positions, width)}, timesteps=list(range(timesteps)),
                     samples_per_chunk=32)
    store = ActivationStore.create(url, spec, table, fingerprint="bench", config={})
    rng = np.random.default_rng(0)
    atoms = rng.normal(size=(16 * width, width)).astype(np.float32)
    for unit in range(store.n_units):
        n = store.unit_samples(unit).stop - store.unit_samples(unit).start
        codes = rng.exponential(size=(n, timesteps, positions, 16 * width)).astype(np.float32)
        codes *= rng.random(codes.shape, dtype=np.float32) < 0.01
        store.write_unit(unit, {HOOK: codes @ atoms})
    return store


def streamed(store: ActivationStore, cfg: SAETrainConfig, workdir: str) -> float:
    trainer = SAETrainer(store, cfg, HOOK, workdir, log=lambda _: None)
    start = time.perf_counter()
    trainer.run()
    return trainer.stream.vectors_per_epoch / (time.perf_counter() - start)


def in_memory(store: ActivationStore, cfg: SAETrainConfig, workdir: str) -> float:
    trainer = SAETrainer(store, cfg, HOOK, workdir, log=lambda _: None)
    train = store.group[HOOK][:][trainer.stream.samples]
    data = torch.from_numpy(train.reshape(-1, trainer.sae_cfg.d_in).astype(np.float32))
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for batch in torch.randperm(len(data), generator=g).split(cfg.batch_size):
        trainer._train_step(data[batch])
    return len(data) / (time.perf_counter() - start)


def sd_scale(steps: int) -> float:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=1280, expansion_factor=16, k=32))
    opt = torch.optim.Adam(sae.parameters(), lr=4e-4, eps=6.25e-10)
    x = torch.randn(4096, 1280)
    dead = torch.zeros(sae.cfg.n_latents, dtype=torch.bool)
    dead[:1000] = True
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        out = sae(x, dead_mask=dead, batch_topk=True)
        (out.fvu + out.auxk_loss / 32).backward()
        sae.remove_parallel_gradient()
        opt.step()
        opt.zero_grad()
        sae.normalize_decoder()
        times.append(time.perf_counter() - start)
    return 4096 / statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", help="existing activation store (default: a synthetic one)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sd-steps", type=int, default=5)
    args = parser.parse_args()
    cfg = SAETrainConfig(expansion_factor=16, k=32, batch_size=4096, epochs=1, holdout=0.1,
                         metrics_every=10_000, checkpoint_every=10_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore.open(args.store) if args.store else synthetic_store(f"{tmp}/s.zarr")
        width = store.spec.hooks[HOOK][1]
        print(f"store: {store.n_samples} samples x {len(store.spec.timesteps)} timesteps x "
              f"{store.spec.hooks[HOOK][0]} positions, width {width}; SAE {16 * width} latents, "
              f"k 32, batch 4096")
        a, b = [], []
        for r in range(args.repeats):
            b.append(in_memory(store, cfg, f"{tmp}/mem{r}"))
            a.append(streamed(store, cfg, f"{tmp}/stream{r}"))
    print(f"streamed  vectors/s: {[round(x) for x in a]}")
    print(f"in memory vectors/s: {[round(x) for x in b]}")
    print(f"streamed / in memory (ratio of medians): {statistics.median(a) / statistics.median(b):.3f}"
          "   goal >= 0.90")
    print(f"SD scale (d 1280, 20480 latents, k 32, batch 4096): {sd_scale(args.sd_steps):.0f} vectors/s")


if __name__ == "__main__":
    main()
