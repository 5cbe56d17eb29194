"""Training the MiniCanvas text-to-image model, resumable from its last checkpoint.

Denoising objective (epsilon prediction, min-SNR weighting so the coarse, high-noise steps that
decide the object get their share), condition dropout for classifier-free guidance, an EMA of
the weights for sampling. Every random draw comes from one seeded generator whose state is
checkpointed, so a killed run resumed from its checkpoint ends where an uninterrupted one does.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from pydantic import Field

from saeuron.config import Config
from saeuron.minicanvas.data import ALL_STYLES, RenderBank
from saeuron.minicanvas.model import build_pipeline
from saeuron.minicanvas.prompts import PLAIN_TEMPLATES, STYLED_TEMPLATES, prompt_for
from saeuron.minicanvas.render import NO_STYLE, OBJECTS
from saeuron.diffusion import Pipeline
from storage.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


class DiffusionTrainConfig(Config):
    steps: int = Field(12000, ge=1, description="Optimiser steps in all.")
    batch_size: int = Field(64, ge=1, le=4096, description="Images per step.")
    lr: float = Field(1e-3, gt=0, le=1, description="Peak learning rate (AdamW).")
    warmup: int = Field(200, ge=0, description="Linear warm-up steps, then cosine decay.")
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="Final lr as a share of the peak.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA decay of the sampling weights.")
    cond_dropout: float = Field(0.1, ge=0, le=1,
                                description="Share of prompts replaced by '' (for CFG).")
    min_snr_gamma: float = Field(5.0, gt=0, description="Min-SNR loss weighting cap.")
    seeds: int = Field(200, ge=1, description="Rendered seeds per (object, style) cell.")
    checkpoint_every: int = Field(250, ge=1, description="Steps between resumable checkpoints.")
    eval_every: int = Field(1000, ge=1, description="Steps between judged sample grids.")
    seed: int = Field(0, description="Seed of initialisation and of every random draw.")
    text_time_embedding: bool = Field(True, description="The attention-pooled prompt also "
                                      "joins the time embedding (False: cross-attention only, "
                                      "as Stable Diffusion 1.x/2.x).")


def _prompts(objects: torch.Tensor, styles: torch.Tensor, g: torch.Generator,
             dropout: float) -> list[str]:
    out = []
    for o, s in zip(objects.tolist(), styles.tolist()):
        style = ALL_STYLES[s]
        templates = PLAIN_TEMPLATES if style == NO_STYLE else STYLED_TEMPLATES
        template = templates[int(torch.randint(len(templates), (1,), generator=g))]
        drop = torch.rand(1, generator=g).item() < dropout
        out.append("" if drop else prompt_for(OBJECTS[o], style, template))
    return out


def _lr_factor(cfg: DiffusionTrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


class Trainer:
    """Holds the model, optimiser, EMA and generator; `run` trains to cfg.steps from any step."""

    def __init__(self, cfg: DiffusionTrainConfig, workdir: str | Path,
                 log: Callable[[str], None] = print):
        self.cfg, self.workdir, self.log = cfg, Path(workdir), log
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pipe = build_pipeline(cfg.seed, cfg.text_time_embedding)
        self.params = list(self.pipe.unet.parameters()) + list(self.pipe.text_encoder.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_factor(cfg))
        self.ema = EMAModel(self.params, decay=cfg.ema_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        alphas = self.pipe.scheduler.alphas_cumprod
        self.snr = alphas / (1 - alphas)
        self._resume()
        self.bank = RenderBank(cfg.seeds)

    def _resume(self) -> None:
        state = load_checkpoint(self.workdir / CHECKPOINT)
        if state is None:
            return
        if state["config"] != self.cfg.model_dump():
            raise ValueError(f"{self.workdir} holds a checkpoint of another configuration "
                             f"({state['config']}); use a new folder or the same configuration")
        self.pipe.unet.load_state_dict(state["unet"])
        self.pipe.text_encoder.load_state_dict(state["text_encoder"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["lr_schedule"])
        self.ema.load_state_dict(state["ema"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step = state["step"]
        self._truncate_log()
        self.log(f"resumed from step {self.step} in {self.workdir}")

    def _truncate_log(self) -> None:
        """Drop log records of steps after the checkpoint: they are about to be redone."""
        log = self.workdir / LOG
        if log.is_file():
            kept = [line for line in log.read_text().splitlines()
                    if line and json.loads(line)["step"] <= self.step]
            log.write_text("".join(line + "\n" for line in kept))

    def _checkpoint(self) -> None:
        save_checkpoint(self.workdir / CHECKPOINT, {
            "config": self.cfg.model_dump(), "step": self.step,
            "unet": self.pipe.unet.state_dict(), "text_encoder": self.pipe.text_encoder.state_dict(),
            "optimizer": self.opt.state_dict(), "lr_schedule": self.sched.state_dict(),
            "ema": self.ema.state_dict(), "generator": self.gen.get_state(),
            "torch_rng": torch.get_rng_state()})

    def loss(self) -> torch.Tensor:
        cfg, pipe, g = self.cfg, self.pipe, self.gen
        index = torch.randint(len(self.bank), (cfg.batch_size,), generator=g)
        images, objects, styles = self.bank.batch(index)
        prompts = _prompts(objects, styles, g, cfg.cond_dropout)
        tokens = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                return_tensors="pt").input_ids
        context = pipe.text_encoder(tokens)[0]
        latents = pipe.vae.encode(images)
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (len(latents),), generator=g)
        noisy = pipe.scheduler.add_noise(latents, noise, t)
        pred = pipe.unet(noisy, t, encoder_hidden_states=context).sample
        weight = torch.clamp(self.snr[t], max=cfg.min_snr_gamma) / self.snr[t]
        return (weight * F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3))).mean()

    def run(self, evaluate: Callable[[Pipeline], dict] | None = None) -> Pipeline:
        """Train to cfg.steps (checkpointing as it goes); return the pipeline with EMA weights."""
        cfg = self.cfg
        start, first = time.time(), self.step
        self.pipe.unet.train()
        self.pipe.text_encoder.train()
        while self.step < cfg.steps:
            loss = self.loss()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.sched.step()
            self.ema.step(self.params)
            self.step += 1
            record: dict = {"step": self.step, "loss": round(loss.item(), 5)}
            if self.step % 50 == 0:
                rate = (time.time() - start) / (self.step - first)
                self.log(f"step {self.step}/{cfg.steps} loss {loss.item():.4f} "
                         f"{rate:.2f} s/step, about {rate * (cfg.steps - self.step) / 60:.0f} min left")
            if evaluate and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                record.update(evaluate(self.ema_pipeline()))
                self.log(f"step {self.step} eval {record}")
                self.pipe.unet.train()
                self.pipe.text_encoder.train()
            with open(self.workdir / LOG, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self._checkpoint()
        return self.ema_pipeline()

    def ema_pipeline(self) -> Pipeline:
        """A copy of the pipeline holding the EMA weights, in eval mode."""
        fresh = build_pipeline(self.cfg.seed, self.cfg.text_time_embedding)
        fresh.unet.load_state_dict(self.pipe.unet.state_dict())
        fresh.text_encoder.load_state_dict(self.pipe.text_encoder.state_dict())
        self.ema.copy_to(list(fresh.unet.parameters()) + list(fresh.text_encoder.parameters()))
        fresh.unet.eval()
        fresh.text_encoder.eval()
        return fresh

