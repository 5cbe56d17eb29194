"""How much the public reference code's error sign changes UA / IRA / CRA.

The correct hook returns x + decode(z') - decode(z); the reference code returns
decode(z') + decode(z) - x (its no-op is 2 decode(z) - x, not x). Both are run on the same
targets with the run's SAE and feature store, and the per-target metrics printed side by side.

    .venv/bin/python bench/error_sign.py --root runs/default --styles neon pop --objects star
"""

from __future__ import annotations

import argparse

from saeuron.minicanvas import JUDGE_DIR
from saeuron.minicanvas.classifier import Judge
from saeuron.diffusion import load_pipeline
from saeuron.run import PipelineConfig
from saeuron.sae import SparseAutoencoder
from saeuron.metrics import METRICS, unlearning_metrics
from saeuron.unlearning import concept_edit, unlearned_grid
from storage.features import read_features, sae_fingerprint
from storage.layout import RunLayout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/default")
    parser.add_argument("--styles", nargs="*", default=["neon", "pop", "granite"])
    parser.add_argument("--objects", nargs="*", default=["star", "moon", "house"])
    args = parser.parse_args()
    config = PipelineConfig.from_yaml(f"{args.root}/config.yaml")
    layout = RunLayout(root=args.root, stores=config.run.stores)
    ev = config.evaluate
    pipe, judge = load_pipeline(config.harvest.model_path()), Judge.load(JUDGE_DIR)
    print("| target | " + " | ".join(f"{m} ({s:+d})" for m in METRICS for s in (1, -1)) + " |")
    print("|---|" + "---|" * 2 * len(METRICS))
    totals = {sign: {m: 0.0 for m in METRICS} for sign in (1, -1)}
    targets = [("style", s) for s in args.styles] + [("object", o) for o in args.objects]
    for domain, concept in targets:
        hook = getattr(config.score.hooks, domain)
        folder = layout.sae_dir / hook
        sae = SparseAutoencoder.load(folder)
        _, mean_all, domains = read_features(layout.features(hook), sae_fingerprint(folder))
        edit = concept_edit(mean_all, domains, domain, [concept])
        got = {}
        for sign in (1, -1):
            result = unlearned_grid(pipe, judge, sae, hook, edit, tuple(ev.seeds()),
                                    num_steps=ev.num_steps, guidance=ev.guidance, error_sign=sign,
                                    grid=ev.concept_grid())
            got[sign] = unlearning_metrics(result.judged(), domain, [concept])
            for m in METRICS:
                totals[sign][m] += got[sign][m] / len(targets)
        print(f"| {concept} | " + " | ".join(f"{got[s][m]:.3f}" for m in METRICS for s in (1, -1))
              + " |", flush=True)
    print("| **mean** | " + " | ".join(f"{totals[s][m]:.3f}" for m in METRICS for s in (1, -1)) + " |")


if __name__ == "__main__":
    main()
