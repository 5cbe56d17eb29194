"""How many pictures the evaluation samples for its targets, reusing the unedited baseline.

From a finished run: each target's edit (as the evaluate stage builds it) against the
baseline's record (eval/baseline/unedited.npz), the pictures it touches, which are all a
target samples, against the whole grid it sampled before (reuse_unedited: false).

    .venv/bin/python bench/reuse.py --root runs/default
"""

from __future__ import annotations

import argparse

from saeuron.edited import Unedited
from saeuron.intervention import touched_pictures
from saeuron.run import PipelineConfig
from saeuron.unlearning import concept_edit
from storage.features import read_features
from storage.layout import RunLayout
from tasks.evaluate import UNEDITED


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/default")
    args = parser.parse_args()
    config = PipelineConfig.from_yaml(f"{args.root}/config.yaml")
    layout = RunLayout(root=args.root, stores=config.run.stores)
    unedited = Unedited.load(layout.eval_dir / "baseline" / UNEDITED)
    pictures = len(unedited.images)
    stores = {d: read_features(layout.features(getattr(config.score.hooks, d)))
              for d in ("style", "object")}
    domains = {d: stores[d][2][d] for d in stores}
    targets = config.evaluate.targets(domains, config.evaluate.concept_grid())
    print("| target | gate | pictures sampled |\n|---|---|---|")
    sampled = 0
    for domain, concepts, name in targets:
        _, mean_all, features = stores[domain]
        edit = concept_edit(mean_all, features, domain, concepts)
        hook = getattr(config.score.hooks, domain)
        n = int(touched_pictures(edit, unedited.recorded[hook]).sum())
        gates = "+".join(sorted({features[domain].gate[features[domain].index(c)] for c in concepts}))
        print(f"| {name} | {gates} | {n} / {pictures} |")
        sampled += n
    total = pictures * len(targets)
    print(f"\ntargets sample {sampled} of {total} pictures ({sampled / total:.1%}); with the "
          f"baseline's {pictures}: {sampled + pictures} of {total + pictures} "
          f"({(sampled + pictures) / (total + pictures):.1%})")


if __name__ == "__main__":
    main()
