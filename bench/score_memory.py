"""Dask scoring: peak memory on a store larger than the memory it gets, and speed vs in-memory.

Each measurement runs in a fresh process (peak RSS = its ru_maxrss). The Dask pass
(`saeuron.scoring.concept_means`, threaded scheduler) streams chunk by chunk, so its peak should
not grow with the store; the in-memory pass loads the store as one float32 array, encodes it
with the SAE in large batches and reduces with NumPy, which needs the store to fit.

    .venv/bin/python bench/score_memory.py [--large-samples 12000] [--small-samples 1200] \
        [--limit-mb 3072]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from saeuron.minicanvas.render import OBJECTS, STYLES
from saeuron.sae import SAEConfig, SparseAutoencoder
from storage.activations import ActivationStore, StoreSpec

HOOK = "up_blocks.1.attentions.1"
T, P, F = 20, 64, 64


def make_store(url: str, samples: int) -> None:
    table = pd.DataFrame({"prompt": ["x"] * samples,
                          "object": [OBJECTS[i % len(OBJECTS)] for i in range(samples)],
                          "style": [STYLES[(i // 10) % len(STYLES)] for i in range(samples)],
                          "template": [0] * samples, "seed": list(range(samples))})
    spec = StoreSpec(hooks={HOOK: (P, F)}, timesteps=list(range(T)), samples_per_chunk=32)
    store = ActivationStore.create(url, spec, table, fingerprint="bench", config={}, codec="none")
    rng = np.random.default_rng(0)
    for unit in range(store.n_units):
        rows = store.unit_samples(unit)
        data = rng.standard_normal((rows.stop - rows.start, T, P, F), dtype=np.float32)
        store.write_unit(unit, {HOOK: data.astype(np.float16)})


def measure(mode: str, url: str, sae_dir: str) -> dict:
    torch.set_num_threads(2)
    store = ActivationStore.open(url)
    sae = SparseAutoencoder.load(sae_dir)
    start = time.perf_counter()
    if mode == "dask":
        from saeuron.scoring import concept_means

        concept_means(store, HOOK, sae)
    else:
        x = torch.from_numpy(store.group[HOOK][:].astype(np.float32))
        with torch.no_grad():
            latents = torch.cat([sae.dense_latents(b.reshape(-1, F)).reshape(len(b), T, P, -1).mean(2)
                                 for b in x.split(32)])
        labels = store.labels()
        for domain in ("style", "object"):
            names = sorted(labels[domain].unique())
            onehot = (labels[domain].to_numpy()[:, None] == np.array(names)[None]).astype(np.float32)
            np.einsum("nc,ntl->ctl", onehot, latents.numpy())
    seconds = time.perf_counter() - start
    vectors = store.n_samples * T * P
    return {"mode": mode, "raw_mb": round(vectors * F * 2 / 2**20), "vectors": vectors,
            "seconds": round(seconds, 1), "vectors_per_s": round(vectors / seconds),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run(mode: str, url: str, sae_dir: str, limit_mb: int | None = None) -> dict:
    """One pass in a fresh process; `limit_mb` caps its address space (RLIMIT_AS)."""
    def cap() -> None:
        if limit_mb:
            resource.setrlimit(resource.RLIMIT_AS, (limit_mb << 20, limit_mb << 20))

    out = subprocess.run([sys.executable, __file__, "--measure", mode, url, sae_dir],
                         capture_output=True, text=True, check=True, preexec_fn=cap)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--large-samples", type=int, default=12_000)
    parser.add_argument("--small-samples", type=int, default=1_200)
    parser.add_argument("--limit-mb", type=int, default=None,
                        help="address-space cap of the Dask pass over the large store")
    parser.add_argument("--measure", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        sae_dir = str(Path(tmp) / "sae")
        SparseAutoencoder(SAEConfig(d_in=F, expansion_factor=16, k=8)).save(sae_dir)
        rows = []
        for name, samples in (("small", args.small_samples), ("large", args.large_samples)):
            url = str(Path(tmp) / f"{name}.zarr")
            make_store(url, samples)
            if name == "small":
                rows += [{"store": name, **run(mode, url, sae_dir)} for mode in ("dask", "memory")]
            else:
                rows.append({"store": name, **run("dask", url, sae_dir, args.limit_mb)})
        print("| store | pass | raw store MB | vectors | seconds | vectors/s | peak RSS MB |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['store']} | {r['mode']} | {r['raw_mb']} | {r['vectors']} | {r['seconds']} "
                  f"| {r['vectors_per_s']} | {r['peak_rss_mb']} |")
        dask_small, memory_small = rows[0], rows[1]
        if args.limit_mb:
            print(f"the Dask pass over the large store ran under an address-space cap of "
                  f"{args.limit_mb} MB")
        print(f"dask / in-memory throughput on the small store: "
              f"{dask_small['vectors_per_s'] / memory_small['vectors_per_s']:.2f}")


if __name__ == "__main__":
    main()
