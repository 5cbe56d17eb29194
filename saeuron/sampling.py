"""The sampling loop: DDIM with classifier-free guidance over any loaded Pipeline."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from diffusers import DDIMScheduler

from saeuron.pipeline import Pipeline


def initial_latents(pipe: Pipeline, seeds: list[int]) -> torch.Tensor:
    """One noise tensor per seed, so an image depends on its seed and not on its batch."""
    shape = pipe.latent_shape
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(pipe.device, pipe.unet.dtype)


def ddim_scheduler(pipe: Pipeline, num_steps: int) -> DDIMScheduler:
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_steps, device=pipe.device)
    return scheduler


def schedule_timesteps(pipe: Pipeline, num_steps: int) -> list[int]:
    """The timestep values a DDIM run of `num_steps` visits, first to last."""
    return [int(t) for t in ddim_scheduler(pipe, num_steps).timesteps]


@torch.no_grad()
def sample(pipe: Pipeline, prompts: list[str], seeds: list[int], *, num_steps: int = 20,
           guidance: float = 4.0, batch_size: int = 128,
           progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Images for aligned prompts and seeds, uint8 (N, H, W, 3).

    DDIM (eta 0) with classifier-free guidance: each batch runs as [unconditional, conditional].
    `progress(done, total)` is called after each batch.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not prompts:
        raise ValueError("nothing to sample: the prompt list is empty")
    cond_all = pipe.encode_prompts(list(prompts))
    uncond = pipe.encode_prompts([""])
    out = []
    for start in range(0, len(prompts), batch_size):
        cond = cond_all[start:start + batch_size]
        latents = initial_latents(pipe, seeds[start:start + batch_size])
        context = torch.cat([uncond.expand(len(cond), -1, -1), cond])
        scheduler = ddim_scheduler(pipe, num_steps)
        latents = latents * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            eps_u, eps_c = pipe.unet(model_in, t, encoder_hidden_states=context).sample.chunk(2)
            latents = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, latents).prev_sample
        images = pipe.latents_to_images(latents)
        out.append((images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))
        if progress:
            progress(min(start + batch_size, len(prompts)), len(prompts))
    return np.concatenate(out)
