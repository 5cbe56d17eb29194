"""The sampling loop: a diffusers scheduler with classifier-free guidance over any loaded
Pipeline.

The scheduler is the model's own ("model") where it takes one UNet call per distinct timestep
without noise of its own (DDIM, Euler, DPM-Solver++, UniPC, LMS, DEIS), else DDIM from its
configuration (PNDM, which Stable Diffusion 1.x ships, repeats a timestep; ancestral samplers
draw noise); or DDIM, Euler or DPM-Solver++ by option. A hook sees one call per timestep, so
captures and edits key on the timestep's integer value.

The UNet runs in `precision`: "bfloat16" (autocast: weights stay float32, matmuls and
convolutions run in bfloat16), "float32", or "auto": bfloat16 where the device computes it
natively (a GPU with bfloat16, a CPU whose oneDNN has bfloat16 kernels: AVX-512 or AMX), else
float32. Without native kernels bfloat16 convolutions fall back to a slow reference loop
(26x slower than float32 on an AVX2-only CPU; BENCHMARKS.md), hence the default. The guidance
combination, the scheduler and the decoder stay in float32, and so do the hooks' SAE
encodings (saeuron.intervention). Each is deterministic at a fixed thread count.

Hooks that keep per-picture state across the UNet calls of one batch (the detect gate of
saeuron.intervention) read which batch is being sampled from `sampling_batch()`: `sample` sets
it in its thread before each batch's first UNet call, so their state starts afresh with every
batch, by the loop's word rather than by guessing from the timesteps.

`SamplingConfig` is how a run samples: one block that the sweeps and the evaluation share (the
sweep must sample as the evaluation does to choose for it), and that the harvest follows but
for its own number of steps and precision (HarvestConfig).
"""

from __future__ import annotations

import itertools
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Literal

import numpy as np
import torch
from diffusers import (DDIMScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler,
                       EulerDiscreteScheduler, LMSDiscreteScheduler, UniPCMultistepScheduler)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from pydantic import Field

from saeuron.config import Config
from saeuron.diffusion import Pipeline


Precision = Literal["auto", "bfloat16", "float32"]
"""What the UNet computes in during sampling."""
Scheduler = Literal["model", "ddim", "euler", "dpm-solver"]
"""The sampler: the model's own scheduler (where it can be followed, else DDIM), or this one."""
SCHEDULERS = {"ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
              "dpm-solver": DPMSolverMultistepScheduler}
FOLLOWED = (DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler,
            UniPCMultistepScheduler, LMSDiscreteScheduler, DEISMultistepScheduler)
"""Schedulers a model may ship that sample as they are: one call per timestep, no noise."""


@dataclass(frozen=True)
class SafetyGuidance:
    """Safe Latent Diffusion's safety guidance (Schramowski et al. 2023; diffusers'
    StableDiffusionPipelineSafe): a third UNet branch, conditioned on `concept`, steers the
    guided prediction away from it, per element where the prompt's prediction exceeds the
    concept's by less than `threshold`, by `scale` times their distance (at most 1), with
    momentum, from step `warmup` on. The defaults are the reference's "medium" setting with its
    warm-up scaled from 50 steps to 20."""

    concept: str
    scale: float = 1000.0
    warmup: int = 4
    threshold: float = 0.01
    momentum_scale: float = 0.3
    momentum_beta: float = 0.4

    def term(self, eps_u: torch.Tensor, eps_c: torch.Tensor, eps_s: torch.Tensor,
             momentum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the term subtracted from the guidance direction, the next momentum), from the
        unconditional, conditional and concept predictions."""
        gap = eps_c - eps_s
        weight = torch.where(gap >= self.threshold, torch.zeros_like(gap),
                             (gap.abs() * self.scale).clamp(max=1.0))
        away = (eps_s - eps_u) * weight + self.momentum_scale * momentum
        return away, self.momentum_beta * momentum + (1 - self.momentum_beta) * away


class SamplingConfig(Config):
    """How a run samples the model: the sweeps and the evaluation as given, the harvest with
    its own steps and precision where its section sets them."""

    num_steps: int = Field(20, ge=1, le=1000, description="Sampling steps.")
    guidance: float = Field(4.0, ge=1.0, le=50.0, description="Classifier-free guidance scale.")
    scheduler: Scheduler = Field("model", description="Sampler: the model's own scheduler "
                                 "(DDIM where it cannot be followed; saeuron/sampling.py), or "
                                 "ddim, euler, dpm-solver.")
    precision: Precision = Field("auto", description="What the UNet computes in (auto: bfloat16 "
                                 "where the device has native kernels); the harvest's is "
                                 "harvest.precision.")
    batch_size: int = Field(128, ge=1, le=4096, description="Pictures per UNet batch (the "
                            "harvest's: harvest.samples_per_chunk).")
    reuse_unedited: bool = Field(True, description="Sample only the pictures a detecting edit "
                                 "touches; the others are the unedited ones (the same pictures, "
                                 "sampled once; saeuron/edited.py). False: every picture for "
                                 "every edit.")
    device: str = Field("cpu", description="torch device of sampling and judging (not part of "
                        "the results' fingerprint).")

    def options(self) -> dict:
        """The keyword options of `sample`."""
        return self.model_dump(include={"num_steps", "guidance", "scheduler", "precision",
                                        "batch_size"})

    def fingerprint(self) -> dict:
        """What sampled results depend on: every option but the device."""
        return self.model_dump(mode="json", exclude={"device"})


_BATCHES = itertools.count()
_CURRENT = threading.local()


def sampling_batch() -> int | None:
    """The id of the batch `sample` is sampling in this thread (unique in the process), or None
    outside `sample`."""
    return getattr(_CURRENT, "batch", None)


def resolve_precision(precision: Precision, device: str | torch.device = "cpu") -> str:
    """'bfloat16' or 'float32': `precision`, with 'auto' resolved for `device`."""
    if precision not in ("auto", "bfloat16", "float32"):
        raise ValueError(f"unknown precision {precision!r}; use 'auto', 'bfloat16' or 'float32'")
    if precision != "auto":
        return precision
    kind = torch.device(device).type
    if kind == "cuda":
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = kind == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bfloat16" if native else "float32"


def unet_precision(device: torch.device, precision: Precision) -> ContextManager:
    """The autocast context of a UNet call in `precision` on `device`."""
    if resolve_precision(precision, device) == "float32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def initial_latents(pipe: Pipeline, seeds: list[int]) -> torch.Tensor:
    """One noise tensor per seed, so an image depends on its seed and not on its batch."""
    shape = pipe.latent_shape
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(pipe.device, pipe.unet.dtype)


def make_scheduler(pipe: Pipeline, num_steps: int, kind: Scheduler = "model") -> SchedulerMixin:
    """A fresh scheduler of `kind` for a run of `num_steps`, from the model's configuration."""
    if kind == "model":
        cls = type(pipe.scheduler) if isinstance(pipe.scheduler, FOLLOWED) else DDIMScheduler
    elif kind in SCHEDULERS:
        cls = SCHEDULERS[kind]
    else:
        raise ValueError(f"unknown scheduler {kind!r}; use 'model', {', '.join(map(repr, SCHEDULERS))}")
    scheduler = cls.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_steps, device=pipe.device)
    steps = [int(t) for t in scheduler.timesteps]
    if len(set(steps)) < len(steps):
        raise ValueError(f"{cls.__name__} at {num_steps} steps visits timestep(s) "
                         f"{sorted({t for t in steps if steps.count(t) > 1})} twice (as integers); "
                         "use fewer steps or another scheduler")
    return scheduler


def schedule_timesteps(pipe: Pipeline, num_steps: int, scheduler: Scheduler = "model") -> list[int]:
    """The timestep values a run of `num_steps` visits, first to last."""
    return [int(t) for t in make_scheduler(pipe, num_steps, scheduler).timesteps]


@torch.no_grad()
def sample(pipe: Pipeline, prompts: list[str], seeds: list[int], *, num_steps: int = 20,
           guidance: float = 4.0, batch_size: int = 128,
           precision: Precision = "auto", scheduler: Scheduler = "model", negative: str = "",
           safety: SafetyGuidance | None = None,
           progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Images for aligned prompts and seeds, uint8 (N, H, W, 3).

    The `scheduler` (make_scheduler) with classifier-free guidance: each batch runs as
    [unconditional, conditional], the UNet in `precision`; the unconditional branch is the
    `negative` prompt's ("": the empty prompt, plain guidance); with `safety` a third branch,
    its concept's, steers away from it (SafetyGuidance). `progress(done, total)` is called after
    each batch.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not prompts:
        raise ValueError("nothing to sample: the prompt list is empty")
    autocast = unet_precision(pipe.device, precision)
    cond_all = pipe.encode_prompts(list(prompts))
    uncond = pipe.encode_prompts([negative])
    concept = pipe.encode_prompts([safety.concept]) if safety else None
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            _CURRENT.batch = next(_BATCHES)
            cond = cond_all[start:start + batch_size]
            latents = initial_latents(pipe, seeds[start:start + batch_size])
            branches = [uncond.expand(len(cond), -1, -1), cond]
            if safety:
                branches.append(concept.expand(len(cond), -1, -1))
                momentum = torch.zeros_like(latents)
            context = torch.cat(branches)
            steps = make_scheduler(pipe, num_steps, scheduler)
            latents = latents * steps.init_noise_sigma
            for i, t in enumerate(steps.timesteps):
                model_in = steps.scale_model_input(torch.cat([latents] * len(branches)), t)
                with autocast:
                    eps = pipe.unet(model_in, t, encoder_hidden_states=context).sample
                eps_u, eps_c, *eps_s = eps.to(latents.dtype).chunk(len(branches))
                direction = eps_c - eps_u
                if safety:
                    away, momentum = safety.term(eps_u, eps_c, eps_s[0], momentum)
                    direction = direction - away if i >= safety.warmup else direction
                latents = steps.step(eps_u + guidance * direction, t, latents).prev_sample
            images = pipe.latents_to_images(latents)
            out.append((images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))
            if progress:
                progress(min(start + batch_size, len(prompts)), len(prompts))
    finally:
        _CURRENT.batch = None
    return np.concatenate(out)
