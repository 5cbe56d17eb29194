"""One SAE training step: this project's against SAELens's and EleutherAI sparsify's (issue 14).

Each side runs the step its own trainer runs, on the same batch, with the same dead latents:

- saeuron: `SAETrainer._train_step` itself (BatchTopK forward with AuxK on the dead latents,
  backward, parallel-gradient removal, gradient clipping, Adam, decoder renormalisation, the
  dead-latent counters), on an SAE of the given shape;
- SAELens: `BatchTopKTrainingSAE.training_forward_pass` (BatchTopK, TopK AuxK loss on the dead
  latents), then what `SAETrainer._train_step` of SAELens does: the firing counters, backward,
  `clip_grad_norm_(1.0)`, Adam, zero_grad. Its decoder constraint is its default
  `rescale_acts_by_decoder_norm` (inside the forward), so no step of its own;
- sparsify: what its `Trainer` does per step with `optimizer="adam"` and `auxk_alpha > 0`:
  `set_decoder_norm_to_unit_norm`, `SparseCoder.forward(x, dead_mask=...)` (TopK, AuxK),
  `fvu + auxk_alpha * auxk_loss` backward, `remove_gradient_parallel_to_decoder_directions`,
  Adam, zero_grad, the firing counters. (It has no BatchTopK and no clipping; its AuxK
  gradient reaches the decoder only.)

Two shapes: MiniCanvas (d_in 64, 256 latents, k 32, batch 4096) and Stable Diffusion (d_in
1280, 20,480 latents, k 32, batch 1024). Sides take turns, a few steps each, for --rounds
rounds; the report is vectors/s medians and ours / the fastest library. Inputs are sparse
non-negative mixtures of random directions (like real activations, rows differ in how many
latents they keep under BatchTopK); --dead-fraction of the latents are dead, fixed per shape.

Install (a separate venv that already has torch; pip must not replace it, so torch is pinned
on the same command line):

    python3 -m venv /work/venv-bench
    /work/venv-bench/bin/pip install torch==2.13.0
    /work/venv-bench/bin/pip install -e '.[bench]' torch==2.13.0
    /work/venv-bench/bin/python bench/sae_step.py [--shapes minicanvas,sd] [--rounds 5]

Written against sae-lens 6.54 and eai-sparsify 1.3 (the versions are printed). A library that
cannot be imported, or whose classes no longer fit these calls, is reported and the others run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")  # CPU: its eager decoder

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from saeuron.sae_train import SAETrainConfig, SAETrainer  # noqa: E402
from storage.activations import ActivationStore, StoreSpec  # noqa: E402

HOOK = "bench"
SHAPES = {  # name: (d_in, latents, k, batch)
    "minicanvas": (64, 256, 32, 4096),
    "sd": (1280, 20480, 32, 1024),
}


def batch(d_in: int, n: int, seed: int = 0) -> torch.Tensor:
    """Sparse non-negative mixtures of 4 d_in random directions, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(4 * d_in, d_in, generator=g)
    codes = torch.rand(n, 4 * d_in, generator=g).pow(8)
    codes *= torch.rand(n, 4 * d_in, generator=g) < 0.05
    return codes @ atoms + 0.05 * torch.randn(n, d_in, generator=g)


def dead_latents(n_latents: int, fraction: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dead = torch.zeros(n_latents, dtype=torch.bool)
    dead[torch.randperm(n_latents, generator=g)[:round(fraction * n_latents)]] = True
    return dead


# ---------------------------------------------------------------------- the three steps
def saeuron_step(d_in: int, n_latents: int, k: int, n: int, dead: torch.Tensor,
                 workdir: str) -> Callable[[torch.Tensor], None]:
    table = pd.DataFrame({"prompt": ["x"] * 16, "object": ["o"] * 16, "style": ["s"] * 16,
                          "template": [0] * 16, "seed": list(range(16))})
    store = ActivationStore.create(f"{workdir}/store.zarr",
                                   StoreSpec(hooks={HOOK: (1, d_in)}, timesteps=[0],
                                             samples_per_chunk=16, dtype="float32"),
                                   table, fingerprint="bench", config={})
    store.write_unit(0, {HOOK: np.zeros((16, 1, 1, d_in), np.float32)})
    cfg = SAETrainConfig(hooks=[HOOK], expansion_factor=n_latents // d_in, k=k, batch_size=n,
                         overrides={}, threads=torch.get_num_threads())
    trainer = SAETrainer(store, cfg, HOOK, f"{workdir}/sae", log=lambda _: None)
    counts = torch.where(dead, cfg.dead_after, 0)

    def step(x: torch.Tensor) -> None:
        trainer.since_fired.copy_(counts)  # the same dead latents every step
        trainer._train_step(x)
    return step


def saelens_step(d_in: int, n_latents: int, k: int, n: int,
                 dead: torch.Tensor) -> Callable[[torch.Tensor], None]:
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=n_latents, k=k,
                                                          dtype="float32", device="cpu"))
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4, betas=(0.9, 0.999))
    since_fired = torch.zeros(n_latents)
    coefficients = {name: c if isinstance(c, float) else c.value
                    for name, c in sae.get_coefficients().items()}

    def step(x: torch.Tensor) -> None:
        sae.train()
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients=coefficients, dead_neuron_mask=dead, n_training_steps=0,
            is_logging_step=False))
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    return step


def sparsify_step(d_in: int, n_latents: int, k: int, n: int,
                  dead: torch.Tensor) -> Callable[[torch.Tensor], None]:
    from sparsify import SparseCoder, SparseCoderConfig

    sae = SparseCoder(d_in, SparseCoderConfig(num_latents=n_latents, k=k), device="cpu")
    opt = torch.optim.Adam(sae.parameters(), lr=2e-4 / (n_latents / 2 ** 14) ** 0.5)
    since_fired = torch.zeros(n_latents, dtype=torch.long)
    did_fire = torch.zeros(n_latents, dtype=torch.bool)
    auxk_alpha = 1 / 32

    def step(x: torch.Tensor) -> None:
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x, dead_mask=dead)
        did_fire[out.latent_indices.flatten()] = True
        (out.fvu + auxk_alpha * out.auxk_loss).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired.add_(len(x))
            since_fired[did_fire] = 0
            did_fire.zero_()
    return step


# ---------------------------------------------------------------------- timing
def run_shape(name: str, rounds: int, steps: int, dead_fraction: float, tmp: str,
              only: set[str]) -> None:
    d_in, n_latents, k, n = SHAPES[name]
    x = batch(d_in, n)
    dead = dead_latents(n_latents, dead_fraction)
    makers = {"saeuron": lambda: saeuron_step(d_in, n_latents, k, n, dead, f"{tmp}/{name}"),
              "SAELens": lambda: saelens_step(d_in, n_latents, k, n, dead),
              "sparsify": lambda: sparsify_step(d_in, n_latents, k, n, dead)}
    sides: dict[str, Callable[[torch.Tensor], None]] = {}
    for side, make in makers.items():
        if side not in only:
            continue
        try:
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sides[side] = make()
        except ImportError as err:
            print(f"  {side}: missing ({err}); install the bench extra")
        except Exception as err:  # a library whose API moved: run the others
            if side == "saeuron":
                raise
            print(f"  {side}: cannot run ({type(err).__name__}: {err})")
    for step in sides.values():  # warm up: first-step work (b_dec init, optimiser state)
        step(x)
        step(x)
    rates: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(rounds):
        for side, step in sides.items():
            start = time.perf_counter()
            for _ in range(steps):
                step(x)
            rates[side].append(steps * n / (time.perf_counter() - start))
    print(f"{name}: d_in {d_in}, {n_latents} latents, k {k}, batch {n}, "
          f"{int(dead.sum())} dead; {rounds} rounds x {steps} steps, "
          f"{torch.get_num_threads()} threads")
    medians = {side: statistics.median(r) for side, r in rates.items()}
    for side, r in rates.items():
        print(f"  {side:9s} median {medians[side]:>9,.0f} vectors/s   rounds: "
              + " ".join(f"{v:,.0f}" for v in r))
    libraries = {s: m for s, m in medians.items() if s != "saeuron"}
    if "saeuron" in medians and libraries:
        best = max(libraries, key=libraries.get)
        print(f"  saeuron / {best} (the faster library): {medians['saeuron'] / libraries[best]:.2f}"
              "   goal >= 1.5")


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(package)
    except PackageNotFoundError:
        return "missing"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="minicanvas,sd",
                        help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--rounds", type=int, default=5, help="turns per side")
    parser.add_argument("--steps", type=int, default=0,
                        help="steps per turn (default: 10 at MiniCanvas, 2 at SD)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dead-fraction", type=float, default=0.05)
    parser.add_argument("--sides", default="saeuron,SAELens,sparsify", help="which to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("versions: " + ", ".join(f"{name} {_version(name)}"
                                   for name in ("torch", "sae-lens", "eai-sparsify")))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes.split(","):
            steps = args.steps or (10 if name == "minicanvas" else 2)
            run_shape(name, args.rounds, steps, args.dead_fraction, tmp, set(args.sides.split(",")))


if __name__ == "__main__":
    main()
