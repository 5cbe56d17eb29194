"""Which UNet block carries styles and which carries objects: the evidence for `score.hooks`.

For each cross-attention block of the model, on held-out prompts (scoring split seeds):
- **readable**: nearest-centroid accuracy of the prompted object / style from the block's
  position-averaged output (what SAeUron's scoring sees), trained on even samples, tested on odd
  ones, averaged over every 4th DDIM step;
- **causal**: sample pairs of prompts that differ in the object (or the style) with the same
  seed, and replace the block's output for the first prompt with the second's at every step;
  the share of first-prompt pictures the judge then sees with the second prompt's concept.

    .venv/bin/python bench/concept_blocks.py --pairs 40
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np
import torch

from saeuron.capture import feature_map, resolve_blocks, with_feature_map
from saeuron.harvest import HarvestConfig, open_store, prepare, run_units
from saeuron.minicanvas import JUDGE_DIR, MODEL_DIR
from saeuron.minicanvas.classifier import Judge
from saeuron.minicanvas.data import ALL_STYLES
from saeuron.minicanvas.prompts import prompt_for
from saeuron.minicanvas.render import NO_STYLE, OBJECTS
from saeuron.diffusion import Pipeline, load_pipeline
from saeuron.sampling import sample

BLOCKS = ("down_blocks.1.attentions.0", "down_blocks.2.attentions.0", "mid_block.attentions.0",
          "up_blocks.0.attentions.0", "up_blocks.0.attentions.1", "up_blocks.1.attentions.0",
          "up_blocks.1.attentions.1")


def readable(blocks: tuple[str, ...], templates: int) -> dict[str, dict[str, float]]:
    """Block -> {domain: nearest-centroid accuracy from position-averaged activations}."""
    cfg = HarvestConfig(split="score", n_seeds=1, templates=templates, hooks=list(blocks),
                        threads=torch.get_num_threads(), samples_per_chunk=64)
    h = prepare(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(h, f"{tmp}/probe.zarr")
        run_units(h, store, list(range(store.n_units)))
        labels = store.labels()
        out = {}
        for block in blocks:
            acts = np.asarray(store.group[block][:], np.float32).mean(2)  # (sample, timestep, F)
            out[block] = {d: _centroid_accuracy(acts, labels[d].to_numpy()) for d in ("object", "style")}
    return out


def _centroid_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    train = np.arange(len(y)) % 2 == 0
    names = sorted(set(y))
    centroids = np.stack([x[train & (y == c)].mean(0) for c in names])  # (C, T, F)
    hits = []
    for t in range(0, x.shape[1], 4):
        d = ((x[~train, t][:, None] - centroids[None, :, t]) ** 2).sum(-1)
        hits.append(np.mean(np.array(names)[d.argmin(1)] == y[~train]))
    return float(np.mean(hits))


def causal(pipe: Pipeline, judge: Judge, blocks: tuple[str, ...], pairs: int,
           seed: int) -> dict[str, dict[str, float]]:
    """Block -> {domain: share of pictures showing the swapped-in concept}."""
    rng = np.random.default_rng(seed)
    styles = [s for s in ALL_STYLES if s != NO_STYLE]
    first = [(OBJECTS[rng.integers(len(OBJECTS))], styles[rng.integers(len(styles))])
             for _ in range(pairs)]
    seeds = list(range(seed, seed + pairs)) * 2
    out: dict[str, dict[str, float]] = {b: {} for b in blocks}
    for domain, labels, k in (("object", OBJECTS, 0), ("style", ALL_STYLES, 1)):
        pool = OBJECTS if domain == "object" else styles
        second = []
        for cell in first:
            others = [c for c in pool if c != cell[k]]
            swapped = others[rng.integers(len(others))]
            second.append((swapped, cell[1]) if k == 0 else (cell[0], swapped))
        prompts = [prompt_for(*c) for c in first + second]
        for block in blocks:
            handle = resolve_blocks(pipe.unet, [block])[block].register_forward_hook(
                lambda _m, _a, output: _swap(output, pairs))
            try:
                images = sample(pipe, prompts, seeds, num_steps=20, guidance=4.0)
            finally:
                handle.remove()
            style, obj = judge.predict(images[:pairs])
            seen = obj if domain == "object" else style
            out[block][domain] = float(np.mean([labels[p] == c[k] for p, c in zip(seen, second)]))
    return out


def _swap(output: object, n: int) -> object:
    """Batch [uncond A, uncond B, cond A, cond B]: A's rows get B's."""
    x = feature_map(output).clone()
    x[:n], x[2 * n:3 * n] = x[n:2 * n], x[3 * n:]
    return with_feature_map(output, x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=40)
    parser.add_argument("--templates", type=int, default=2)
    parser.add_argument("--seed", type=int, default=777)
    args = parser.parse_args()
    pipe, judge = load_pipeline(MODEL_DIR), Judge.load(JUDGE_DIR)
    read = readable(BLOCKS, args.templates)
    swap = causal(pipe, judge, BLOCKS, args.pairs, args.seed)
    print("| block | object readable | style readable | object swapped | style swapped |")
    print("|---|---|---|---|---|")
    for block in BLOCKS:
        print(f"| {block} | {read[block]['object']:.2f} | {read[block]['style']:.2f} | "
              f"{swap[block]['object']:.2f} | {swap[block]['style']:.2f} |")


if __name__ == "__main__":
    main()
