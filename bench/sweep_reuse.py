"""The sweep with and without reusing unedited pictures: the same choices, fewer pictures.

For some concepts of one domain of a run (its SAE and scoring store), the per-concept sweep is
run twice, `reuse_unedited` true and false, sides alternating per concept; printed per concept:
the choice (n, gamma, gate) of each, the pictures each sampled and its time.

    .venv/bin/python bench/sweep_reuse.py --root runs/default --domain style --concepts neon sketch
"""

from __future__ import annotations

import argparse
import time

import saeuron.edited
from saeuron.minicanvas.world import minicanvas_grid
from saeuron.minicanvas import JUDGE_DIR
from saeuron.minicanvas.classifier import Judge
from saeuron.diffusion import load_pipeline
from saeuron.run import PipelineConfig
from saeuron.sae import SparseAutoencoder
from saeuron.scoring import concept_means
from saeuron.selection import select
from saeuron.sweep import sweep_concept
from saeuron.threads import torch_threads
from saeuron.unlearning import concept_edit
from storage.activations import ActivationStore
from storage.layout import RunLayout

SAMPLED = [0]


def counting(sample):
    def wrapped(pipe, prompts, *args, **kwargs):
        SAMPLED[0] += len(prompts)
        return sample(pipe, prompts, *args, **kwargs)
    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/default")
    parser.add_argument("--domain", default="style", choices=["style", "object"])
    parser.add_argument("--concepts", nargs="+", default=["neon", "sketch"])
    args = parser.parse_args()
    config = PipelineConfig.from_yaml(f"{args.root}/config.yaml")
    layout = RunLayout(root=args.root, stores=config.run.stores)
    hook = getattr(config.score.hooks, args.domain)
    sae = SparseAutoencoder.load(layout.sae_dir / hook)
    means = concept_means(ActivationStore.open(layout.activations("score")), hook, sae)
    domains = {d: select(m, config.score, hook) for d, m in means.items()}
    mean_all = means[args.domain].mean_all
    sweep = getattr(config.score.sweep, args.domain)
    candidates = {n: select(means[args.domain], config.score, hook, top_n=n).selected
                  for n in sweep.top_n}
    pipe, judge = load_pipeline(config.harvest.model_path()), Judge.load(JUDGE_DIR)
    saeuron.edited.sample = counting(saeuron.edited.sample)
    d = domains[args.domain]
    print("| concept | reuse | choice (n, gamma, gate) | pictures sampled | seconds |")
    print("|---|---|---|---|---|")
    for concept in args.concepts:
        c = d.index(concept)

        def edit(n, gamma, gate):
            return concept_edit(mean_all, domains, args.domain, [concept], multiplier=gamma,
                                gate=gate, selected=candidates[n][[c]])

        for reuse in (True, False):
            SAMPLED[0] = 0
            start = time.perf_counter()
            with torch_threads(1):
                n, gamma, gate, _ = sweep_concept(
                    pipe, judge, minicanvas_grid(), sae, hook, args.domain, concept, edit,
                    sweep.model_copy(update={"reuse_unedited": reuse}), config.score.gate)
            print(f"| {concept} | {reuse} | {n}, {gamma}, {gate} | {SAMPLED[0]} | "
                  f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
