"""Codecs for the activation store: compression ratio, write and read speed on real activations.

Harvests one MiniCanvas store, then rewrites its activations with each codec in storage.CODECS.
Times are relative to the uncompressed store, measured in the same run.

    .venv/bin/python bench/store_codecs.py [--model DIR] [--seeds 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import zarr

from saeuron.harvest import HarvestConfig, open_store, prepare, run_units
from storage.activations import CODECS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="minicanvas")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    cfg = HarvestConfig(model=args.model, n_seeds=args.seeds, templates=1)
    h = prepare(cfg)
    hook = cfg.hooks[0]
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(h, f"{tmp}/src.zarr")
        run_units(h, store, list(range(store.n_units)))
        data = store.group[hook][:]
        chunks = store.group[hook].chunks
        rows = []
        for name, codec in CODECS.items():
            arr = zarr.create_array(f"{tmp}/{name}.zarr", shape=data.shape, chunks=chunks,
                                    dtype=data.dtype, compressors=codec)
            start = time.perf_counter()
            arr[...] = data
            write = time.perf_counter() - start
            start = time.perf_counter()
            back = arr[...]
            read = time.perf_counter() - start
            assert np.array_equal(back.view(np.uint16), data.view(np.uint16))
            rows.append((name, arr.nbytes_stored(), write, read))
    raw = data.nbytes
    vectors = data.shape[0] * data.shape[1] * data.shape[2]
    base = {r[0]: r for r in rows}["none"]
    print(f"{vectors} vectors of {data.shape[3]} float16 features, {raw} bytes raw")
    print("| codec | bytes/vector | ratio | write time vs none | read time vs none |")
    print("|---|---|---|---|---|")
    for name, nbytes, write, read in rows:
        print(f"| {name} | {nbytes / vectors:.1f} | {raw / nbytes:.2f} | "
              f"{write / base[2]:.2f} | {read / base[3]:.2f} |")


if __name__ == "__main__":
    main()
