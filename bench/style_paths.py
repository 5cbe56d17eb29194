"""Where the prompt's style enters MiniCanvas's UNet (issue 16's probe): the conditional half's
text is replaced by the empty prompt's at a subset of the cross-attention blocks and/or in the
time embedding (`addition_embed_type: text`), and the style and object of the pictures are
judged. Validation seeds 500,100+, the style's whole row (10 objects).

    .venv/bin/python bench/style_paths.py --styles sketch pastel forest
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np
import torch

from saeuron.capture import resolve_blocks
from saeuron.minicanvas import JUDGE_DIR, MODEL_DIR
from saeuron.minicanvas.classifier import Judge
from saeuron.minicanvas.prompts import prompt_for
from saeuron.minicanvas.render import OBJECTS
from saeuron.diffusion import load_pipeline
from saeuron.sampling import sample
from saeuron.sweep import VAL_SEED_BASE

BLOCKS = ["down_blocks.1.attentions.0", "down_blocks.2.attentions.0", "mid_block.attentions.0",
          "up_blocks.0.attentions.0", "up_blocks.0.attentions.1", "up_blocks.1.attentions.0",
          "up_blocks.1.attentions.1"]
TIME = "time embedding"
VARIANTS = {
    "nothing": [],
    "time embedding": [TIME],
    "up_blocks.1 (8x8)": BLOCKS[5:],
    "up_blocks.1 + time": BLOCKS[5:] + [TIME],
    "up_blocks.0 and .1": BLOCKS[3:],
    "up_blocks.0 and .1 + time": BLOCKS[3:] + [TIME],
    "every cross-attention": BLOCKS,
    "every cross-attention + time": BLOCKS + [TIME],
    "all but up_blocks.1 (+ time)": BLOCKS[:5] + [TIME],
}


def unconditioned(removed: set[str]):
    """Forward hooks that give the CFG batch's conditional half the unconditional half's text."""
    def on(name: str):
        def text(_m, args, kwargs):
            if name not in removed:
                return None
            e = kwargs["encoder_hidden_states"].clone()
            e[len(e) // 2:] = e[:len(e) // 2]
            return args, {**kwargs, "encoder_hidden_states": e}
        return text
    return on


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--styles", nargs="*", default=["sketch", "pastel", "forest"])
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipe, judge = load_pipeline(MODEL_DIR), Judge.load(JUDGE_DIR)
    removed: set[str] = set()
    hook = unconditioned(removed)
    for name, block in resolve_blocks(pipe.unet, BLOCKS).items():
        for module in block.modules():
            if getattr(module, "is_cross_attention", False):
                module.register_forward_pre_hook(hook(name), with_kwargs=True)

    def time_text(_m, _args, out):
        if TIME not in removed:
            return out
        out = out.clone()
        out[len(out) // 2:] = out[:len(out) // 2]
        return out

    pipe.unet.add_embedding.register_forward_hook(time_text)
    seeds = [VAL_SEED_BASE + 100 + i for i in range(args.seeds)]
    print("| style | prompt removed from | style kept | object kept | judged style |")
    print("|---|---|---|---|---|")
    for style in args.styles:
        cells = [(o, s) for o in OBJECTS for s in seeds]
        for name, parts in VARIANTS.items():
            removed.clear()
            removed.update(parts)
            images = sample(pipe, [prompt_for(o, style) for o, _ in cells], [s for _, s in cells],
                            num_steps=20, guidance=4.0)
            styles, objects = judge.predict(images)
            judged = Counter(judge.style_labels[i] for i in styles)
            kept = np.mean([judge.object_labels[i] == o for i, (o, _) in zip(objects, cells)])
            top = ", ".join(f"{k} {v}" for k, v in judged.most_common(3))
            print(f"| {style} | {name} | {judged[style] / len(cells):.2f} | {kept:.2f} | {top} |",
                  flush=True)


if __name__ == "__main__":
    main()
