"""MiniCanvas command line: train the judge and the model, sample and judge the grid.

    python -m saeuron.minicanvas train-judge
    python -m saeuron.minicanvas train-model --workdir runs/minicanvas-train
    python -m saeuron.minicanvas grid --out minicanvas-grid.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from saeuron.minicanvas import JUDGE_DIR, MODEL_DIR
from saeuron.minicanvas.classifier import Judge, JudgeTrainConfig, train_judge
from saeuron.minicanvas.data import EVAL_SEED_BASE, RenderBank
from saeuron.judging import grid_picture
from saeuron.minicanvas.report_card import DEFAULT_GUIDANCE, DEFAULT_STEPS, sample_grid
from saeuron.minicanvas.train import DiffusionTrainConfig, Trainer
from saeuron.diffusion import Pipeline, load_pipeline


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def render_accuracy(judge: Judge, seeds: int = 20) -> tuple[float, float]:
    """(style, object) accuracy of the judge on fresh renders (evaluation seeds)."""
    bank = RenderBank(seeds, first_seed=EVAL_SEED_BASE)
    images = bank.images.numpy()
    s, o = judge.predict(images)
    return float((s == bank.styles.numpy()).mean()), float((o == bank.objects.numpy()).mean())


def cmd_train_judge(args: argparse.Namespace) -> None:
    cfg = JudgeTrainConfig.from_yaml(args.config) if args.config else JudgeTrainConfig()
    start = time.time()
    judge = train_judge(cfg, log=_log)
    judge.save(args.out)
    style, obj = render_accuracy(judge)
    _log(f"judge saved to {args.out} after {time.time() - start:.0f} s; accuracy on fresh "
         f"renders: style {style:.4f}, object {obj:.4f}")


def _export(pipe: Pipeline, out: Path) -> None:
    """Ship the model in half precision: half the bytes, the same pictures."""
    pipe.unet.to(torch.float16)
    pipe.text_encoder.to(torch.float16)
    pipe.save(out)
    pipe.unet.to(torch.float32)
    pipe.text_encoder.to(torch.float32)


def cmd_train_model(args: argparse.Namespace) -> None:
    cfg = DiffusionTrainConfig.from_yaml(args.config) if args.config else DiffusionTrainConfig()
    judge = Judge.load(args.judge) if Path(args.judge).is_dir() else None

    def evaluate(pipe: Pipeline) -> dict:
        return sample_grid(pipe, judge, seeds=(EVAL_SEED_BASE + 100,)).summary()

    start = time.time()
    trainer = Trainer(cfg, args.workdir, log=_log)
    pipe = trainer.run(evaluate if judge else None)
    _export(pipe, Path(args.out))
    _log(f"model saved to {args.out}; this session trained for {time.time() - start:.0f} s")


def cmd_grid(args: argparse.Namespace) -> None:
    pipe = load_pipeline(args.model)
    judge = Judge.load(args.judge)
    seeds = tuple(args.first_seed + i for i in range(args.seeds))
    start = time.time()
    result = sample_grid(pipe, judge, seeds, num_steps=args.steps, guidance=args.guidance,
                         precision=args.precision, progress=lambda d, n: _log(f"sampled {d}/{n}"))
    wall = time.time() - start
    grid_picture(result.images[0], args.out)
    print(result.table())
    summary = {**result.summary(), "images": int(np.prod(result.style_ok.shape)),
               "seconds": round(wall, 1), "ddim_steps": args.steps, "guidance": args.guidance,
               "precision": args.precision, "seeds": list(seeds)}
    print(json.dumps(summary))
    _log(f"grid of seed {seeds[0]} written to {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m saeuron.minicanvas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train-judge", help="train the style/object classifier on renders")
    p.add_argument("--config", help="YAML file of JudgeTrainConfig options")
    p.add_argument("--out", default=str(JUDGE_DIR), help="folder to write the judge to")
    p.set_defaults(func=cmd_train_judge)
    p = sub.add_parser("train-model", help="train the text-to-image model (resumable)")
    p.add_argument("--config", help="YAML file of DiffusionTrainConfig options")
    p.add_argument("--workdir", default="runs/minicanvas-train",
                   help="checkpoints and log; rerun with the same folder to resume")
    p.add_argument("--out", default=str(MODEL_DIR), help="folder to write the pipeline to")
    p.add_argument("--judge", default=str(JUDGE_DIR),
                   help="judge used to report accuracy while training (skipped if absent)")
    p.set_defaults(func=cmd_train_model)
    p = sub.add_parser("grid", help="sample the objects x styles grid, judge it, write a PNG")
    p.add_argument("--model", default=str(MODEL_DIR), help="pipeline folder")
    p.add_argument("--judge", default=str(JUDGE_DIR), help="judge folder")
    p.add_argument("--seeds", type=int, default=1, help="evaluation seeds per cell")
    p.add_argument("--first-seed", type=int, default=EVAL_SEED_BASE,
                   help="first of the consecutive seeds (default: the evaluation split's)")
    p.add_argument("--precision", choices=["auto", "bfloat16", "float32"], default="auto",
                   help="what the UNet computes in")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="CFG scale")
    p.add_argument("--out", default="minicanvas-grid.png", help="PNG to write")
    p.set_defaults(func=cmd_grid)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
