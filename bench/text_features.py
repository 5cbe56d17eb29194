"""Probe (issue 16): does an SAE edit of the *prompt encoder's output* remove a MiniCanvas style
and keep the object, where the edits of one UNet block's output do not?

The probes in BENCHMARKS.md ("What removes a style") found that the style enters the UNet by
several paths (every cross-attention block, and MiniCanvas's text-conditioned time embedding),
so an edit of one block must undo what the others put in and destroys the object first; the
benchmark found that UCE, which edits how the prompt's tokens enter *every* cross-attention
block, removes styles and keeps the objects. This probe edits where all those paths start: an
SAE (TopK, trained here in seconds) on the prompt encoder's output tokens; a style's features
are scored as the UNet blocks' are (share of activation against the most active other style,
exclusive), and at sampling the prompt's tokens are encoded, the style's top-n features set to
the unstyled prompts' mean activation (or zero), and decoded with the SAE's error added back,
so that an edit of nothing is the prompt itself. Judged as the evaluation counts them (UA, IRA,
CRA, kept), on validation seeds (500,100 on) while choosing, or with `--split eval` on the
evaluation's seeds (1,000,000 on) for the setting chosen; the last lines give the mean over the
styles with 95% bootstrap intervals over pictures.

    .venv/bin/python bench/text_features.py [--styles sketch pastel forest ember] [--n 1 3 10]
        [--to mean zero] [--split val|eval] [--seeds 2]
        [--save DIR]   # each style's row (first seed) before and after each edit, as PNG
"""

from __future__ import annotations

import argparse

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from saeuron.diffusion import Pipeline, load_pipeline
from saeuron.judging import predict_in
from saeuron.metrics import Judged, counts, interval, rates
from saeuron.minicanvas import MODEL_DIR
from saeuron.minicanvas.world import minicanvas_grid
from saeuron.names import NO_STYLE, SPLIT_SEED_BASE
from saeuron.sae import SAEConfig, SparseAutoencoder
from saeuron.sampling import SamplingConfig, sample
from saeuron.threads import torch_threads
from saeuron.worlds import world

FIRST_SEED = {"val": SPLIT_SEED_BASE["val"] + 100, "eval": SPLIT_SEED_BASE["eval"]}
"""Validation seeds no sweep uses; the evaluation's own seeds."""
METRICS = ("UA", "IRA", "CRA", "kept")


def prompt_tokens(pipe: Pipeline, grid) -> tuple[torch.Tensor, np.ndarray]:
    """(prompts, tokens, d) encoder outputs of every prompt of the grid (all templates), and
    each prompt's style."""
    table = grid.table([0])
    texts = list(dict.fromkeys(table.prompt))
    style = table.drop_duplicates("prompt").set_index("prompt").loc[texts, "style"].to_numpy()
    with torch.no_grad():
        return pipe.encode_prompts(texts), style


def train_sae(vectors: torch.Tensor, latents: int, k: int, steps: int = 3000) -> SparseAutoencoder:
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=vectors.shape[1], expansion_factor=latents //
                                      vectors.shape[1], k=k))
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-3)
    for step in range(steps):
        batch = vectors[torch.randint(0, len(vectors), (1024,))]
        out = sae(batch)
        optimizer.zero_grad()
        out.fvu.backward()
        optimizer.step()
        sae.normalize_decoder()
    return sae.eval()


def style_scores(sae: SparseAutoencoder, tokens: torch.Tensor, style: np.ndarray,
                 styles: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(style, latent) scores against the most active other style (exclusive), and the
    unstyled prompts' mean activation per latent."""
    with torch.no_grad():
        dense = sae.dense_latents(tokens.reshape(-1, tokens.shape[-1])).reshape(
            tokens.shape[0], tokens.shape[1], -1).mean(1).numpy()
    means = np.stack([dense[style == s].mean(0) for s in styles])
    share = means / (means.sum(1, keepdims=True) + 1e-9)
    top2 = np.sort(share, 0)[-2:]
    lead = share == top2[1][None]
    scores = np.where(lead, share - top2[0][None], -1.0)
    return scores, dense[style == NO_STYLE].mean(0)


class EditedPrompts:
    """The pipeline's prompt encoder with `latents` of the SAE set to `to` (per latent) on
    every token of every prompt, the SAE's error added back."""

    def __init__(self, pipe: Pipeline, sae: SparseAutoencoder, latents: np.ndarray,
                 to: np.ndarray):
        self.pipe, self.sae, self.encode = pipe, sae, pipe.encode_prompts
        self.latents = torch.from_numpy(latents)
        self.to = torch.from_numpy(to).float()

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        x = self.encode(prompts)
        if prompts == [""]:  # the unconditional branch of guidance stays as it is
            return x
        flat = x.reshape(-1, x.shape[-1])
        with torch.no_grad():
            z = self.sae.dense_latents(flat)
            edited = z.clone()
            edited[:, self.latents] = self.to[self.latents]
            out = flat + edited @ self.sae.W_dec - z @ self.sae.W_dec
        return out.reshape(x.shape)

    def __enter__(self) -> "EditedPrompts":
        self.pipe.encode_prompts = self
        return self

    def __exit__(self, *exc: object) -> None:
        self.pipe.encode_prompts = self.encode


def grid_pictures(pipe: Pipeline, grid, seeds: list[int]) -> tuple[np.ndarray, object]:
    """Every cell of the grid (first template) on `seeds`, with the project's sampling
    defaults."""
    table = grid.table(seeds, templates=1)
    return sample(pipe, list(table.prompt), list(table.seed), **SamplingConfig().options()), table


def judge_rows(judge, grid, images: np.ndarray, table, target: str) -> dict[str, list[int]]:
    """[passed, counted] of UA, IRA, CRA and kept of a style target, as the evaluation counts
    them."""
    styles = grid.styles + (NO_STYLE,)
    style, obj = predict_in(judge, images, grid)
    judged = Judged(np.array([styles.index(s) for s in table["style"]]),
                    np.array([grid.objects.index(o) for o in table["object"]]), style, obj,
                    styles, grid.objects)
    return counts(judged, "style", [target])


def save_rows(before: np.ndarray, after: np.ndarray, grid, target: str, path: Path) -> None:
    """The target's row at the first seed, unedited above edited, as one PNG."""
    shape = (-1, len(grid.styles) + 1, len(grid.objects)) + before.shape[1:]
    i = grid.styles.index(target)
    rows = [np.concatenate(list(x.reshape(shape)[0, i]), axis=1) for x in (before, after)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def row(target: str, edit: str, counted: dict[str, list[int]]) -> str:
    shares = rates(counted)
    return f"| {target} | {edit} | " + " | ".join(f"{shares[m]:.3f}" for m in METRICS) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--styles", nargs="+", default=["sketch", "pastel", "forest", "ember"])
    parser.add_argument("--n", nargs="+", type=int, default=[1, 3, 10])
    parser.add_argument("--to", nargs="+", choices=["mean", "zero"], default=["mean", "zero"],
                        help="Set the features to the unstyled prompts' mean, or to zero.")
    parser.add_argument("--latents", type=int, default=256)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--split", choices=list(FIRST_SEED), default="val")
    parser.add_argument("--seeds", type=int, default=2, help="Seeds per cell.")
    parser.add_argument("--save", type=Path, help="Folder for each edit's before/after row.")
    args = parser.parse_args()
    seeds = [FIRST_SEED[args.split] + i for i in range(args.seeds)]
    pipe, grid = load_pipeline(MODEL_DIR), minicanvas_grid()
    judge = world().judge("cpu")
    with torch_threads(2):
        tokens, style = prompt_tokens(pipe, grid)
        sae = train_sae(tokens.reshape(-1, tokens.shape[-1]), args.latents, args.k)
        with torch.no_grad():
            flat = tokens.reshape(-1, tokens.shape[-1])
            fvu = float((sae(flat).sae_out - flat).pow(2).sum() / (flat - flat.mean(0)).pow(2).sum())
        print(f"prompt-token SAE: {args.latents} latents, k {args.k}, FVU {fvu:.4f} on "
              f"{len(flat)} tokens of {len(tokens)} prompts; {args.split} seeds {seeds}")
        styles = list(grid.styles) + [NO_STYLE]
        scores, unstyled = style_scores(sae, tokens, style, styles)
        targets = {"mean": unstyled, "zero": np.zeros_like(unstyled)}
        plain_pictures = grid_pictures(pipe, grid, seeds)
        per_edit: dict[str, list[dict]] = {}
        print("| style | edit | " + " | ".join(METRICS) + " |\n|---|---|" + "---|" * len(METRICS))
        for target in args.styles:
            print(row(target, "none", judge_rows(judge, grid, *plain_pictures, target)), flush=True)
            order = np.argsort(-scores[styles.index(target)])
            for n in args.n:
                for to in args.to:
                    with EditedPrompts(pipe, sae, order[:n], targets[to]):
                        images, table = grid_pictures(pipe, grid, seeds)
                    counted = judge_rows(judge, grid, images, table, target)
                    edit = f"{n} features to the {'unstyled mean' if to == 'mean' else 'zero'}"
                    per_edit.setdefault(edit, []).append(counted)
                    if args.save:
                        save_rows(plain_pictures[0], images, grid, target,
                                  args.save / f"{target}-{n}-{to}.png")
                    print(row(target, edit, counted), flush=True)
        print(f"\nmean over {len(args.styles)} styles (95% bootstrap interval over pictures):")
        for edit, rows in per_edit.items():
            cells = []
            for m in METRICS:
                low, high = interval([r[m] for r in rows])
                cells.append(f"{np.mean([rates(r)[m] for r in rows]):.3f} ({low:.2f}-{high:.2f})")
            print(f"| {edit} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
