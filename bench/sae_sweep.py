"""Held-out FVU, L0 and dead fraction of SAEs against k and expansion factor, on one store.

    .venv/bin/python bench/sae_sweep.py --store runs/default/activations/harvest.zarr \
        --k 4 8 16 32 --expansion 4 16 --epochs 1
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time

from saeuron.minicanvas import STYLE_BLOCK
from saeuron.sae_train import SAETrainConfig, SAETrainer
from storage.activations import ActivationStore


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--hook", default=STYLE_BLOCK)
    parser.add_argument("--k", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--expansion", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, nargs="+", default=[4e-4])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--dead-after", type=int, default=1_000_000)
    args = parser.parse_args()
    store = ActivationStore.open(args.store)
    print(f"store {args.store}: {store.n_samples} samples, hook {args.hook}, width {store.spec.hooks[args.hook][1]}")
    print("| expansion | latents | k | lr | batch | epochs | held-out FVU | L0 | dead | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for expansion, k, lr in itertools.product(args.expansion, args.k, args.lr):
        cfg = SAETrainConfig(expansion_factor=expansion, k=k, epochs=args.epochs, lr=lr,
                             batch_size=args.batch_size,
                             dead_after=args.dead_after, metrics_every=10_000,
                             checkpoint_every=10_000_000)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            trainer = SAETrainer(store, cfg, args.hook, tmp, log=lambda _: None)
            trainer.run()
            wall = time.perf_counter() - start
            m = trainer.evaluate()
        print(f"| {expansion} | {trainer.sae_cfg.n_latents} | {k} | {lr:g} | {args.batch_size} | "
              f"{args.epochs} | "
              f"{m.fvu:.4f} | {m.l0:.1f} | {m.dead_fraction:.3f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
