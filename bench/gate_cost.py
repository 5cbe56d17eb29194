"""What each gate costs in sampling time, as ratios to sampling without a hook.

Samples the whole MiniCanvas grid (110 prompts, one seed) with no hook, then with one target's
edit under each gate, from a run's SAE and feature store, interleaving the repeats so that the
machine's drift falls on every variant alike; prints the median time of each as a ratio to the
unhooked one (after an untimed warm-up).

    .venv/bin/python bench/gate_cost.py --root runs/default --concept neon --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

from saeuron.intervention import Unlearn
from saeuron.minicanvas.data import cells
from saeuron.minicanvas.prompts import prompt_for
from saeuron.diffusion import load_pipeline
from saeuron.run import PipelineConfig
from saeuron.sae import SparseAutoencoder
from saeuron.sampling import sample
from saeuron.threads import torch_threads
from saeuron.unlearning import concept_edit
from storage.features import read_features, sae_fingerprint
from storage.layout import RunLayout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/default")
    parser.add_argument("--domain", default="style", choices=["style", "object"])
    parser.add_argument("--concept", default="neon")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = PipelineConfig.from_yaml(f"{args.root}/config.yaml")
    layout = RunLayout(root=args.root, stores=config.run.stores)
    hook = getattr(config.score.hooks, args.domain)
    folder = layout.sae_dir / hook
    sae = SparseAutoencoder.load(folder)
    _, mean_all, domains = read_features(layout.features(hook), sae_fingerprint(folder))
    pipe = load_pipeline(config.harvest.model_path())
    prompts = [prompt_for(*cell) for cell in cells()]
    ev = config.evaluate
    variants = {"none": None, **{gate: concept_edit(mean_all, domains, args.domain,
                                                    [args.concept], gate=gate)
                                 for gate in ("mean", "others", "detect")}}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch_threads(ev.threads):
        sample(pipe, prompts, [0] * len(prompts), num_steps=ev.num_steps,  # warm-up, not timed
               guidance=ev.guidance, batch_size=ev.batch_size)
        for _ in range(args.repeats):
            for name, edit in variants.items():
                start = time.perf_counter()
                with Unlearn(pipe.unet, hook, sae, edit):
                    sample(pipe, prompts, [0] * len(prompts), num_steps=ev.num_steps,
                           guidance=ev.guidance, batch_size=ev.batch_size)
                times[name].append(time.perf_counter() - start)
    base = statistics.median(times["none"])
    print(f"{args.domain} {args.concept}, {len(prompts)} pictures x {ev.num_steps} steps, "
          f"{args.repeats} repeats, {ev.threads} torch thread(s)")
    print("| hook | time / no hook |")
    print("|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values) / base:.3f} |")


if __name__ == "__main__":
    main()
