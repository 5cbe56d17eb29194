"""What the activation stores' CRC32C checksums cost: the time to checksum every chunk of a run's
stores (each chunk is checksummed once when written and once per read), against the harvest and
training times in the run's manifests.

    .venv/bin/python bench/checksum_cost.py --root runs/default
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import google_crc32c


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/default")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.root)
    chunks = [p.read_bytes() for p in sorted((root / "activations").rglob("c/*/0/0/0"))]
    start = time.perf_counter()
    for _ in range(args.repeats):
        for chunk in chunks:
            google_crc32c.value(chunk)
    seconds = (time.perf_counter() - start) / args.repeats
    size = sum(map(len, chunks))
    seconds_of = {s: json.loads((root / "manifests" / f"{s}.json").read_text())["seconds"]
                  for s in ("harvest", "train")}
    print(f"{len(chunks)} chunks, {size / 1e6:.0f} MB: checksummed in {seconds:.3f} s "
          f"({size / seconds / 1e9:.1f} GB/s)")
    print(f"written once: {100 * seconds / seconds_of['harvest']:.3f}% of the harvest "
          f"({seconds_of['harvest']} s)")
    epochs = 10  # an upper bound: every chunk of both stores read as often as the object SAE's epochs
    print(f"read {epochs} times: at most {100 * epochs * seconds / seconds_of['train']:.3f}% of "
          f"training ({seconds_of['train']} s)")

if __name__ == "__main__":
    main()
