"""Harvest overhead: wall time of sampling with capture and store writes / plain sampling.

Both sides sample the same prompts in the same batches (one batch per write unit), alternating
A, B, A, B... so drift of this noisy machine hits both; the ratio of medians is reported, with
bytes per stored vector.

    .venv/bin/python bench/harvest_overhead.py [--model DIR] [--seeds 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from saeuron.harvest import HarvestConfig, open_store, prepare, run_units
from saeuron.threads import torch_threads
from saeuron.sampling import sample


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="minicanvas")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on both sides")
    args = parser.parse_args()
    cfg = HarvestConfig(model=args.model, n_seeds=args.seeds, templates=1, threads=args.threads)
    h = prepare(cfg)
    spc = cfg.samples_per_chunk
    prompts, seeds = list(h.table.prompt), list(h.table.seed)

    def plain() -> float:
        start = time.perf_counter()
        with torch_threads(cfg.threads):
            for i in range(0, len(prompts), spc):
                sample(h.pipe, prompts[i:i + spc], seeds[i:i + spc], num_steps=cfg.num_steps,
                       guidance=cfg.guidance, batch_size=spc)
        return time.perf_counter() - start

    def harvested() -> tuple[float, int, int]:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            store = open_store(h, f"{tmp}/acts.zarr")
            run_units(h, store, list(range(store.n_units)))
            wall = time.perf_counter() - start
            return wall, store.nbytes_stored(), store.vectors_written()

    plain()  # warm-up
    a, b = [], []
    for _ in range(args.repeats):
        a.append(plain())
        wall, nbytes, vectors = harvested()
        b.append(wall)
    ratio = statistics.median(b) / statistics.median(a)
    print(f"samples {len(prompts)}, timesteps {len(h.spec.timesteps)}, hook {cfg.hooks[0]} "
          f"{h.spec.hooks[cfg.hooks[0]]}")
    print(f"plain sampling  s: {[round(x, 2) for x in a]}")
    print(f"harvest         s: {[round(x, 2) for x in b]}")
    print(f"harvest / plain (ratio of medians): {ratio:.3f}   goal <= 1.10")
    print(f"vectors {vectors}, bytes on disk {nbytes}, bytes per vector {nbytes / vectors:.1f} "
          f"(raw float16: {2 * h.spec.hooks[cfg.hooks[0]][1]})")


if __name__ == "__main__":
    main()
