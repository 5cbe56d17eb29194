"""ESD-x (Gandikota et al. 2023, "Erasing Concepts from Diffusion Models"), the fine-tuning
baseline: the UNet's cross-attention (every `attn2` module) is trained so that, prompted with the
concept, it predicts the noise of the *negatively guided* frozen model,

    target = eps(x_t, "") - eta * (eps(x_t, c) - eps(x_t, ""))

at a picture x_t drawn by the model being trained (DDIM with guidance from noise, prompted with
the concept, stopped at a random step t). Only the cross-attention changes, so the edit is
where the text enters the picture (ESD-x; ESD-u trains the rest instead).

Training is resumable: an atomic checkpoint (the trained parameters, Adam's state and the step)
every `checkpoint_every` steps, and every random draw of step s comes from (seed, s), so a run
killed at any point and started again ends with the weights of an uninterrupted one (at a
fixed thread count). The weights at each step of `snapshots` are kept as safetensors, so one run
gives the candidates the benchmark chooses from on validation pictures.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

from saeuron.config import Config
from saeuron.diffusion import Pipeline
from saeuron.sampling import initial_latents, make_scheduler
from storage.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT = "esd-checkpoint.pt"


class ESDConfig(Config):
    steps: int = Field(150, ge=1, le=100_000, description="Fine-tuning steps.")
    lr: float = Field(2e-3, gt=0, le=1, description="Adam's learning rate (MiniCanvas: at 1e-3 "
                      "200 steps remove little, at 3e-3 100 steps remove the style and harm "
                      "the others; the paper's 1e-5 is for Stable Diffusion).")
    negative_guidance: float = Field(1.0, ge=0, le=100, description="eta: how far the target "
                                     "is pushed away from the concept.")
    start_guidance: float = Field(3.0, ge=1, le=50, description="Guidance of the pictures x_t "
                                  "are drawn from.")
    batch_size: int = Field(4, ge=1, le=1024, description="Pictures per step.")
    num_steps: int = Field(20, ge=2, le=1000, description="DDIM steps of the schedule x_t is "
                           "drawn from.")
    seed: int = Field(0, ge=0, description="Seed of every random draw.")
    checkpoint_every: int = Field(25, ge=1, le=100_000, description="Steps between checkpoints.")


def cross_attention(unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """ESD-x's parameters: those of every cross-attention module (attn2)."""
    return {name: p for name, p in unet.named_parameters() if ".attn2." in name}


def _draws(cfg: ESDConfig, step: int, n_prompts: int) -> tuple[np.ndarray, int, list[int]]:
    """Step `step`'s prompt indices, stopping step and noise seeds: from (seed, step) alone."""
    rng = np.random.default_rng([cfg.seed, step])
    picks = rng.integers(0, n_prompts, cfg.batch_size)
    stop = int(rng.integers(0, cfg.num_steps))
    return picks, stop, [int(s) for s in rng.integers(0, 2**31 - 1, cfg.batch_size)]


@torch.no_grad()
def _draw_x_t(pipe: Pipeline, context: torch.Tensor, uncond: torch.Tensor, seeds: list[int],
              stop: int, cfg: ESDConfig) -> tuple[torch.Tensor, int]:
    """x_t and t: DDIM with guidance from the seeds' noise, stopped before step `stop`."""
    steps = make_scheduler(pipe, cfg.num_steps, "ddim")
    latents = initial_latents(pipe, seeds) * steps.init_noise_sigma
    both = torch.cat([uncond.expand(len(seeds), -1, -1), context])
    for t in steps.timesteps[:stop]:
        eps = pipe.unet(steps.scale_model_input(torch.cat([latents] * 2), t), t,
                        encoder_hidden_states=both).sample
        eps_u, eps_c = eps.chunk(2)
        latents = steps.step(eps_u + cfg.start_guidance * (eps_c - eps_u), t, latents).prev_sample
    return latents, int(steps.timesteps[stop])


def train_esd(pipe: Pipeline, prompts: list[str], cfg: ESDConfig, workdir: str | Path,
              snapshots: list[int] = (), progress: Callable[[int, float], None] | None = None
              ) -> dict[int, dict[str, torch.Tensor]]:
    """The cross-attention weights after each step of `snapshots` (and after cfg.steps) of
    ESD-x fine-tuning of `pipe`'s UNet (left unchanged) away from `prompts` (the concept as the
    grid prompts it). Resumes from `workdir`'s checkpoint; `progress(step, loss)` after each."""
    workdir = Path(workdir)
    keep = sorted({*snapshots, cfg.steps})
    if max(keep) > cfg.steps:
        raise ValueError(f"snapshots {list(snapshots)} go beyond the {cfg.steps} training steps")
    done = {s: workdir / f"step-{s}.safetensors" for s in keep}
    if all(f.is_file() for f in done.values()):
        return {s: load_file(f) for s, f in done.items()}
    frozen = pipe.unet
    unet = copy.deepcopy(frozen).train()
    for p in unet.parameters():
        p.requires_grad_(False)
    params = cross_attention(unet)
    if not params:
        raise ValueError("the UNet has no cross-attention (attn2) modules: ESD-x has nothing to train")
    for p in params.values():
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params.values(), lr=cfg.lr)
    state = load_checkpoint(workdir / CHECKPOINT)
    start, seconds = 0, 0.0
    if state is not None:
        unet.load_state_dict(state["weights"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        start, seconds = state["step"], state.get("seconds", 0.0)
    began = time.perf_counter()
    trained = dataclasses.replace(pipe, unet=unet)
    uncond, texts = pipe.encode_prompts([""]), pipe.encode_prompts(list(prompts))
    for step in range(start, cfg.steps):
        picks, stop, seeds = _draws(cfg, step, len(prompts))
        context = texts[torch.from_numpy(picks)]
        x_t, t = _draw_x_t(trained, context, uncond, seeds, stop, cfg)
        with torch.no_grad():
            e_0 = frozen(x_t, t, encoder_hidden_states=uncond.expand(len(seeds), -1, -1)).sample
            e_p = frozen(x_t, t, encoder_hidden_states=context).sample
            target = e_0 - cfg.negative_guidance * (e_p - e_0)
        loss = torch.nn.functional.mse_loss(unet(x_t, t, encoder_hidden_states=context).sample,
                                            target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step + 1 in done:
            _save_atomic({k: p.detach().clone() for k, p in params.items()}, done[step + 1])
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(workdir / CHECKPOINT, {
                "step": step + 1, "optimizer": optimizer.state_dict(),
                "weights": {k: p.detach() for k, p in params.items()},
                "seconds": seconds + time.perf_counter() - began})
        if progress:
            progress(step + 1, float(loss.detach()))
    return {s: load_file(f) for s, f in done.items()}


def training_seconds(workdir: str | Path) -> float:
    """Seconds of training recorded in `workdir`'s checkpoint, summed over resumed runs (0 if
    none): the cost of weights a later run finds there and reuses."""
    state = load_checkpoint(Path(workdir) / CHECKPOINT)
    return float(state.get("seconds", 0.0)) if state is not None else 0.0


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors written next to `path`, then renamed into place: a kill leaves no part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, tmp)
    os.replace(tmp, path)


def apply_esd(pipe: Pipeline, weights: dict[str, torch.Tensor]) -> Pipeline:
    """`pipe` with its UNet's cross-attention weights replaced (a copy; `pipe` is unchanged)."""
    unet = copy.deepcopy(pipe.unet)
    missing = set(weights) - set(cross_attention(unet))
    if missing:
        raise ValueError(f"ESD weights name parameters this UNet's cross-attention lacks: "
                         f"{sorted(missing)[:3]}")
    unet.load_state_dict(weights, strict=False)
    return dataclasses.replace(pipe, unet=unet.eval())
