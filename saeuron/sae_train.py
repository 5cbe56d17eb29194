"""Training an SAE on one hook of an activation store, streamed, resumable bit for bit.

Adam with linear decay of the learning rate to zero, gradient clipping, decoder constraints,
FVU + AuxK loss with dead-latent tracking, b_dec from the geometric median of the first batch.
A checkpoint holds everything the next step depends on (weights, optimiser, schedule, RNG,
dead-latent counters, the loader's epoch and batch), so a run killed at any point and resumed
ends with the weights of an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from pydantic import Field

from saeuron.config import Config
from saeuron.loader import VectorStream
from saeuron.worlds import world
from saeuron.sae import SAEConfig, SparseAutoencoder, geometric_median
from saeuron.threads import torch_threads
from storage.activations import ActivationStore
from storage.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


class HookOverrides(Config):
    expansion_factor: int | None = Field(None, ge=1, le=256, description="Latents per input "
                                         "dimension for this hook.")
    k: int | None = Field(None, ge=1, description="Active latents per vector for this hook.")
    batch_size: int | None = Field(None, ge=1, description="Vectors per step for this hook.")
    epochs: int | None = Field(None, ge=1, le=1000, description="Passes for this hook.")


class SAETrainConfig(Config):
    hooks: list[str] = Field(list(world().hooks.values()), min_length=1, description="Hooks whose "
                             "activations to fit, one SAE each with these options (default: "
                             "MiniCanvas's style and object hooks).")
    expansion_factor: int = Field(4, ge=1, le=256, description="Latents per input dimension "
                                  "(MiniCanvas: 4; the paper's SD setting: 16).")
    k: int = Field(32, ge=1, description="Active latents per vector (see the FVU table of "
                   "BENCHMARKS.md; the paper uses 32 on SD's 1280-wide blocks too).")
    aux_k: int = Field(512, ge=1, description="Dead latents used by AuxK (capped at d_in / 2).")
    aux_coef: float = Field(1 / 32, ge=0, description="Weight of the AuxK loss.")
    batch_size: int = Field(4096, ge=1, description="Vectors per step.")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate, decayed linearly to 0.")
    adam_eps: float = Field(6.25e-10, gt=0, description="Adam epsilon.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient norm clip.")
    epochs: int = Field(3, ge=1, le=1000, description="Passes over the training split.")
    dead_after: int = Field(1_000_000, ge=1, description="A latent is dead after this many "
                            "vectors without firing.")
    buffer_size: int = Field(1 << 16, ge=1, description="Shuffle buffer, in vectors.")
    holdout: float = Field(0.1, ge=0, lt=1, description="Share of samples held out for metrics.")
    timesteps: list[int] | None = Field(None, description="Train on these timesteps only.")
    metrics_every: int = Field(50, ge=1, description="Steps between logged metrics.")
    checkpoint_every: int = Field(200, ge=1, description="Steps between resumable checkpoints.")
    seed: int = Field(0, description="Seed of initialisation, split and batch order.")
    threads: int = Field(2, ge=1, le=256, description="torch CPU threads. Float sums depend on "
                         "it, so a resumed run equals an uninterrupted one at the same count.")
    overrides: dict[str, HookOverrides] = Field(
        {world().hooks["object"]: HookOverrides(batch_size=1024, epochs=10),
         world().hooks["style"]: HookOverrides(k=8, epochs=10)},
        description="Options that differ per hook (the paper trains its object block for 5 "
        "epochs, its style block for 10). MiniCanvas's 4x4 object block has a quarter of the "
        "vectors per sample, so it takes smaller batches and more epochs; its prompt encoding "
        "('text', 16 tokens) has fewer still, and k 8 as the probe that found it "
        "(BENCHMARKS.md).")

    def for_hook(self, hook: str) -> "SAETrainConfig":
        """The options of one hook's SAE: these, with the hook's overrides applied."""
        changed = self.overrides.get(hook, HookOverrides()).model_dump(exclude_none=True)
        return self.model_copy(update=changed)


def split_samples(n_samples: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) sample indices, a fixed random partition for a seed."""
    order = np.random.default_rng([seed, 0x5AE]).permutation(n_samples)
    n_hold = int(round(holdout * n_samples))
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


@dataclass
class Metrics:
    fvu: float
    l0: float
    dead_fraction: float
    auxk: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.__dict__.items()}


def _step(line: str) -> float:
    """The step of a metrics line; a line cut short by a kill counts as after every step."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class SAETrainer:
    def __init__(self, store: ActivationStore, cfg: SAETrainConfig, hook: str,
                 workdir: str | Path, log: Callable[[str], None] = print):
        self.cfg, self.store, self.hook, self.log = cfg, store, hook, log
        self.workdir = Path(workdir)
        store.require_hooks([hook])
        d_in = store.spec.hooks[hook][1]
        self.sae_cfg = SAEConfig(d_in=d_in, expansion_factor=cfg.expansion_factor, k=cfg.k,
                                 aux_k=cfg.aux_k, aux_coef=cfg.aux_coef)
        train, held = split_samples(store.n_samples, cfg.holdout, cfg.seed)
        self.stream = VectorStream(store, hook, batch_size=cfg.batch_size,
                                   buffer_size=cfg.buffer_size, seed=cfg.seed, samples=train,
                                   timesteps=cfg.timesteps)
        self.held = held
        self.total_steps = cfg.epochs * self.stream.batches_per_epoch
        torch.manual_seed(cfg.seed)
        self.sae = SparseAutoencoder(self.sae_cfg)
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: max(0.0, 1 - step / self.total_steps))
        self.since_fired = torch.zeros(self.sae_cfg.n_latents, dtype=torch.long)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self._resume()

    # ------------------------------------------------------------------ state
    def _resume(self) -> None:
        state = load_checkpoint(self.workdir / CHECKPOINT)
        if state is None:
            return
        if state["sae_config"]["d_in"] != self.sae_cfg.d_in:
            raise ValueError(f"the checkpoint in {self.workdir} is of an SAE of width "
                             f"{state['sae_config']['d_in']}, but hook {self.hook!r} has "
                             f"width {self.sae_cfg.d_in}")
        if state["config"] != self.cfg.model_dump():
            raise ValueError(f"{self.workdir} holds a checkpoint of another configuration; use "
                             "a new folder or the same configuration")
        self.sae.load_state_dict(state["sae"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["lr_schedule"])
        self.since_fired = state["since_fired"]
        torch.set_rng_state(state["torch_rng"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch"]
        metrics = self.workdir / METRICS
        if metrics.is_file():
            kept = [l for l in metrics.read_text().splitlines() if _step(l) <= self.step]
            metrics.write_text("".join(l + "\n" for l in kept))
        self.log(f"resumed at step {self.step} (epoch {self.epoch}, batch {self.batch_in_epoch})")

    def _checkpoint(self) -> None:
        save_checkpoint(self.workdir / CHECKPOINT, {
            "config": self.cfg.model_dump(), "sae_config": self.sae_cfg.model_dump(),
            "sae": self.sae.state_dict(), "optimizer": self.opt.state_dict(),
            "lr_schedule": self.sched.state_dict(), "since_fired": self.since_fired,
            "torch_rng": torch.get_rng_state(), "step": self.step, "epoch": self.epoch,
            "batch": self.batch_in_epoch})

    # ------------------------------------------------------------------ training
    def _train_step(self, x: torch.Tensor) -> dict[str, float]:
        if self.step == 0:
            with torch.no_grad():
                self.sae.b_dec.copy_(geometric_median(x))
        dead = self.since_fired >= self.cfg.dead_after
        out = self.sae(x, dead_mask=dead, batch_topk=True)
        loss = out.fvu + self.cfg.aux_coef * out.auxk_loss
        self.sae.release_gradients()  # zero_grad(set_to_none=True), keeping the memory
        loss.backward()
        self.sae.remove_parallel_gradient()
        # clip_grad_norm_ in its two halves, skipping its multiply by 1 under the limit (a
        # pass over every gradient for nothing; x * 1.0 == x, so the same bits).
        grads = [p.grad for p in self.sae.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads)
        if bool(self.cfg.grad_clip / (norm + 1e-6) < 1):
            torch.nn.utils.clip_grads_with_norm_(grads, self.cfg.grad_clip, norm)
        for group in self.opt.param_groups:
            # One pass per tensor instead of Adam's several (8x faster at SD width on CPU);
            # elementwise, so as deterministic. Set here so checkpoints of before resume too.
            group["fused"] = True
        self.opt.step()
        self.sched.step()
        self.sae.normalize_decoder()
        # A latent fired if its activations sum above 0 (they are >= 0): no boolean indexing.
        acts = out.top_acts.detach()
        fired = acts.new_zeros(self.sae_cfg.n_latents).index_add_(
            0, out.top_indices.reshape(-1), acts.reshape(-1)) > 0
        self.since_fired += len(x)
        self.since_fired.masked_fill_(fired, 0)
        self.step += 1
        return {"fvu": out.fvu.item(), "auxk": out.auxk_loss.item(),
                "l0": float((out.top_acts > 0).sum()) / len(x),
                "dead_fraction": float(dead.float().mean())}

    def run(self, progress: Callable[[int, int, dict], None] | None = None) -> SparseAutoencoder:
        """Train to the end of the last epoch, checkpointing; returns the SAE."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with torch_threads(self.cfg.threads):
            return self._run(progress)

    def _run(self, progress: Callable[[int, int, dict], None] | None) -> SparseAutoencoder:
        start = time.time()
        while self.epoch < self.cfg.epochs:
            for x in self.stream.epoch(self.epoch, skip=self.batch_in_epoch):
                record = self._train_step(x)
                self.batch_in_epoch += 1
                if self.step % self.cfg.metrics_every == 0 or self.step == self.total_steps:
                    record = {"step": self.step, "epoch": self.epoch, **record,
                              "lr": self.sched.get_last_lr()[0],
                              "seconds": round(time.time() - start, 1)}
                    with open(self.workdir / METRICS, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    if progress:
                        progress(self.step, self.total_steps, record)
                if self.step % self.cfg.checkpoint_every == 0:
                    self._checkpoint()
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self._checkpoint()
        return self.sae

    @torch.no_grad()
    def evaluate(self) -> Metrics:
        """FVU, L0 and AuxK on the held-out samples (per-vector TopK), streamed; dead fraction
        from the training counters."""
        if len(self.held) == 0:
            raise ValueError("no held-out samples: set holdout > 0 to measure")
        stream = VectorStream(self.store, self.hook, batch_size=self.cfg.batch_size,
                              buffer_size=0, seed=self.cfg.seed, samples=self.held,
                              timesteps=self.cfg.timesteps)
        dead = self.since_fired >= self.cfg.dead_after
        err = active = n = auxk = 0.0
        total = torch.zeros(self.sae_cfg.d_in, dtype=torch.float64)
        total_sq = torch.zeros(self.sae_cfg.d_in, dtype=torch.float64)
        for x in stream.epoch(0):
            out = self.sae(x, dead_mask=dead)
            err += float((x - out.sae_out).double().pow(2).sum())
            active += float((out.top_acts > 0).sum())
            auxk += float(out.auxk_loss) * len(x)
            total += x.double().sum(0)
            total_sq += x.double().pow(2).sum(0)
            n += len(x)
        variance = float((total_sq - total.pow(2) / n).sum())
        return Metrics(fvu=err / variance, l0=active / n, dead_fraction=float(dead.float().mean()),
                       auxk=auxk / n)
