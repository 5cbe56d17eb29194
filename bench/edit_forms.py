"""Which form of the SAE edit removes a style and keeps the picture (issue 16's first probe).

For each style target of a finished run, edits of its concept's features are compared on the
full grid at validation seeds (never the evaluation seeds): the run's chosen edit (n, gamma);
zero ablation (a selected latent above its gate set to 0, gamma 0) at the chosen n and at
larger n, also with features other concepts lead (`--shared`); and the paper's gamma -1. Every candidate is judged with saeuron.metrics (UA, IRA,
own content kept, CRA_grid, FD_own against the unstyled row, what the pictures were judged as).
Only the pictures an edit touches are sampled (saeuron.edited).

`--moves` adds edits that move the SAE code towards the unstyled concept ('none') instead of
scaling it, in the pictures the chosen edit's detector fires on: `shift` adds the difference
of the two concepts' mean codes to every latent at every position; `replace40` sets the 40
latents whose means differ most to the unstyled mean; `zero-all` removes every latent, leaving
the block the SAE's error term and decoder bias.

    .venv/bin/python bench/edit_forms.py --root runs/default --styles sketch pastel forest
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from saeuron import intervention

from saeuron.metrics import assess, describe
from saeuron.minicanvas import JUDGE_DIR
from saeuron.minicanvas.classifier import Judge
from saeuron.diffusion import load_pipeline
from saeuron.run import PipelineConfig
from saeuron.sae import SparseAutoencoder
from saeuron.scoring import select_features
from saeuron.sweep import VAL_SEED_BASE
from saeuron.unlearning import concept_edit, reference_features, unedited_grid, unlearned_grid
from storage.features import read_features, sae_fingerprint
from storage.layout import RunLayout


@contextmanager
def moved(form: str, reference: np.ndarray, target: np.ndarray):
    """Unlearn's edit replaced by `form` (see the module's docstring) while the block runs;
    `reference`, `target`: (timestep, latent) mean codes of 'none' and of the style."""
    plain = intervention.Unlearn._edited

    def edited(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        vectors = x.permute(0, 2, 3, 1).reshape(-1, c).float()
        acts, idx = self.sae.encode(vectors)
        n = self.sae.cfg.n_latents
        row = self.edit.row(self._t)
        factor = self._detected_factor(self.edit.detector, 0,
                                       intervention.picture_means(acts, idx, b, n), row)
        where = torch.isfinite(factor).any(1).repeat_interleave(h * w)[:, None]
        dense = torch.zeros(len(vectors), n).scatter_(1, idx, acts)
        ref, own = torch.from_numpy(reference[row]).float(), torch.from_numpy(target[row]).float()
        if form == "shift":
            new, chosen = dense + (ref - own)[None], torch.ones(n, dtype=torch.bool)
        elif form == "replace40":
            gap = (ref - own).abs()
            new, chosen = ref[None].expand_as(dense), gap >= gap.topk(40).values[-1]
        else:  # zero-all
            new, chosen = torch.zeros_like(dense), torch.ones(n, dtype=torch.bool)
        new = torch.where(where & chosen[None], new, dense)
        out = vectors + (new - dense) @ self.sae.W_dec
        return out.to(x.dtype).reshape(b, h, w, c).permute(0, 3, 1, 2).contiguous()

    intervention.Unlearn._edited = edited
    try:
        yield
    finally:
        intervention.Unlearn._edited = plain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/default")
    parser.add_argument("--styles", nargs="*", default=["sketch", "pastel", "forest", "ember"])
    parser.add_argument("--seeds", type=int, default=2, help="validation seeds, from 500,100")
    parser.add_argument("--sizes", type=int, nargs="*", default=[20, 40],
                        help="larger n tried with zero ablation")
    parser.add_argument("--shared", type=int, nargs="*", default=[],
                        help="n tried with zero ablation among all features, not only those "
                        "the concept leads (exclusive selection off)")
    parser.add_argument("--error-sign", type=int, choices=[1, 0, -1], default=1,
                        help="0: the block outputs decode(z') alone, the SAE's error term "
                        "dropped (adds a reconstruction-only row)")
    parser.add_argument("--moves", action="store_true", help="add the edits that move the "
                        "code towards the unstyled concept (shift, replace40, zero-all)")
    parser.add_argument("--gate", choices=["detect", "mean", "others"], default=None,
                        help="where the edits apply (default: each concept's stored gate; "
                        "'mean', the paper's, edits every picture, with no detection)")
    args = parser.parse_args()
    config = PipelineConfig.from_yaml(f"{args.root}/config.yaml")
    layout = RunLayout(root=args.root, stores=config.run.stores)
    ev, hook = config.evaluate, config.score.hooks.style
    folder = layout.sae_dir / hook
    sae = SparseAutoencoder.load(folder)
    _, mean_all, domains = read_features(layout.features(hook), sae_fingerprint(folder))
    style = domains["style"]
    pipe, judge = load_pipeline(config.harvest.model_path()), Judge.load(JUDGE_DIR)
    seeds = tuple(VAL_SEED_BASE + 100 + i for i in range(args.seeds))
    sampling = dict(num_steps=ev.num_steps, guidance=ev.guidance)
    grid = ev.concept_grid()
    base, unedited = unedited_grid([pipe], judge, {hook: sae}, seeds, grid=grid, **sampling)
    base_features, reference = base.judged().features, reference_features(judge, grid, seeds, base)
    top2 = np.sort(style.mean, axis=0)[-2:]
    eligible = (style.mean == top2[1][None]) & (style.mean > top2[0][None])
    print("| style | edit | UA | IRA | kept | CRA_grid | FD_own (before) | judged instead |")
    print("|---|---|---|---|---|---|---|---|")
    for concept in args.styles:
        c = style.index(concept)
        chosen_n = int(round(style.selected[c].sum(-1).mean()))
        gamma = float(style.multiplier[c])

        def selection(n: int, exclusive: bool = True) -> np.ndarray:
            return select_features(style.score, top_n=n,
                                   eligible=eligible if exclusive else None)[[c]]

        candidates = [("reconstruction only, no edit", "none", None)] if args.error_sign != 1 else []
        candidates += [(f"chosen: n {chosen_n}, gamma {gamma:g}", None, None),
                      (f"paper gamma -1, n {chosen_n}", -1.0, None)]
        candidates += [(f"zero ablation, n {n}", 0.0, selection(n))
                       for n in [chosen_n] + [n for n in args.sizes if n > chosen_n]]
        candidates += [(f"zero ablation, n {n}, not exclusive", 0.0, selection(n, False))
                       for n in args.shared]
        candidates += [(f"move: {form}", form, None) for form in
                       (("shift", "replace40", "zero-all") if args.moves else ())]
        for name, multiplier, selected in candidates:
            form = multiplier if name.startswith("move") else None
            edit = None if multiplier == "none" else concept_edit(
                mean_all, domains, "style", [concept], multiplier=None if form else multiplier,
                selected=selected, gate=args.gate)
            with (moved(form, style.mean[style.index("none")], style.mean[c]) if form
                  else nullcontext()):
                result = unlearned_grid(pipe, judge, sae, hook, edit, seeds, unedited=unedited,
                                        error_sign=args.error_sign, grid=grid, **sampling)
            got = assess(result.judged(), base_features, reference, "style", [concept])
            print(f"| {concept} | {name} | {got['UA']:.3f} | {got['IRA']:.3f} | "
                  f"{got['kept']:.3f} | {got['CRA_grid']:.3f} | {got['FD_own']:.0f} "
                  f"({got['FD_own_base']:.0f}) | {describe(got['instead'], top=3)} |", flush=True)


if __name__ == "__main__":
    main()
