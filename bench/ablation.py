"""The ablation table of BENCHMARKS.md ("Ablation"): the paper's recipe, the default, and the
default with each addition switched off in turn, each a pipeline run with its own score stage
(and sweep) and evaluation on one evaluation seed (1,000,000).

The variants on the default's hooks start from a copy of the base run's stores, SAEs and
manifests, so their harvest and train stages are cached: they score the same SAEs (`default`
also its feature store: only its evaluation runs). `style-block` (styles at the UNet block
`up_blocks.1.attentions.1`, the default before the `text` hook, with that default's sweep)
harvests and trains its own, and `paper-block` (the paper's recipe on its blocks) starts from
it; their object SAE is the default's, bit for bit (the same activations, the same training).

    .venv/bin/python bench/ablation.py [--base runs/default] [--out runs/ablate]
        [--variants default style-block paper contrast-mean inclusive gate-mean paper-block]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from saeuron.config import merged
from saeuron.minicanvas import OBJECT_HOOK, STYLE_BLOCK

BLOCK = {
    "harvest": {"hooks": [STYLE_BLOCK, OBJECT_HOOK]},
    "train": {"hooks": [STYLE_BLOCK, OBJECT_HOOK],
              "overrides": {OBJECT_HOOK: {"batch_size": 1024, "epochs": 10}}},
    "score": {"hooks": {"style": STYLE_BLOCK}}}
"""Styles at the UNet block, as the default before the `text` hook."""
BLOCK_SWEEP = {"style": {"top_n": [1, 3, 10, 20], "multipliers": [-3, -10, -30, -60],
                         "objective": ["UA", "IRA", "CRA_grid"]},
               "object": {"top_n": [10, 20, 40], "multipliers": [-5, -10, -20],
                          "prefer": "stronger"}}
"""That default's sweep (the object sweep restated: a sweep section replaces the default's)."""
VARIANTS = {
    "default": {},
    "style-block": merged(BLOCK, {"score": {"sweep": BLOCK_SWEEP}}),
    "paper": {"method": "paper"},
    "contrast-mean": {"score": {"contrast": "mean"}},
    "inclusive": {"score": {"exclusive": False}},
    "gate-mean": {"score": {"gate": "mean"}},
    "paper-block": merged(BLOCK, {"method": "paper"}),
}
"""Each variant's options beside the default's."""
STARTS_FROM = {"style-block": None, "paper-block": "style-block"}
"""The run whose stores, SAEs and manifests a variant copies: the base run's unless named here
(None: it harvests and trains its own)."""


def run_variant(name: str, base: Path, out: Path) -> dict:
    """Run one variant (its harvest and train cached where it copies another run's) and return
    its pipeline manifest's result."""
    root = out / name
    source = STARTS_FROM.get(name, base)
    if source is not None and not (root / "manifests").exists():
        source = out / source if isinstance(source, str) else source
        for part in ("activations", "sae", "manifests") + (("features",) if name == "default"
                                                           else ()):
            shutil.copytree(source / part, root / part)
    config = merged(VARIANTS[name], {"run": {"root": str(root)}, "evaluate": {"n_seeds": 1}})
    path = out / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    print(f"{name}: python -m flows.launch --config {path}", flush=True)
    subprocess.run([sys.executable, "-m", "flows.launch", "--config", str(path)], check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads((root / "manifests" / "pipeline.json").read_text())["result"]


def cells(row: dict) -> list[str]:
    return [f"{row['UA']:.3f} ({row['UA_95']})", f"{row['IRA']:.3f}", f"{row['CRA']:.3f}",
            f"{row['kept']:.3f} ({row['kept_95']})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, default=Path("runs/default"))
    parser.add_argument("--out", type=Path, default=Path("runs/ablate"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    if not (args.base / "sae").is_dir():
        raise SystemExit(f"{args.base} has no trained SAEs: run the pipeline first "
                         "(python3 dev.py run)")
    args.out.mkdir(parents=True, exist_ok=True)
    head = ["UA", "IRA", "CRA", "kept"]
    print("| variant | " + " | ".join(f"{t} {m}" for t in ("style", "object", "set") for m in head)
          + " | score s | evaluate s |\n|---|" + "---|" * 14)
    for name in args.variants:
        result = run_variant(name, args.base, args.out)
        rows = {r["targets"]: r for r in result["summary"]}
        seconds = {s["stage"]: s["seconds_when_run"] for s in result["stages"]}
        print(f"| {name} | " + " | ".join(c for t in ("style", "object", "style sets")
                                          for c in cells(rows[t]))
              + f" | {seconds['score']:.1f} | {seconds['evaluate']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
