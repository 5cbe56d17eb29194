"""The sparse autoencoder of SAeUron: TopK at inference, BatchTopK in training, AuxK for dead latents.

    z = TopK(ReLU(W_enc (x - b_dec) + b_enc)),   x_hat = W_dec^T z + b_dec

Decoder rows have unit norm; the gradient component parallel to each row is removed before an
optimiser step (`remove_parallel_gradient`) and the rows are renormalised after it
(`normalize_decoder`). Decoding gathers only the k active rows (an embedding bag), never a dense
matmul over every latent. Usable alone from a notebook: `SparseAutoencoder.load(folder)`, then
`encode`, `decode` or call it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from saeuron.config import Config

WEIGHTS = "sae.safetensors"
CONFIG = "config.json"


class SAEConfig(Config):
    d_in: int = Field(ge=1, description="Width of the input vectors (the block's channels).")
    expansion_factor: int = Field(16, ge=1, le=256, description="Latents per input dimension.")
    k: int = Field(32, ge=1, description="Active latents per vector.")
    aux_k: int = Field(512, ge=1, description="Dead latents used by the AuxK loss (capped at d_in / 2).")
    aux_coef: float = Field(1 / 32, ge=0, description="Weight of the AuxK loss.")

    @property
    def n_latents(self) -> int:
        return self.d_in * self.expansion_factor

    @model_validator(mode="after")
    def _k_fits(self) -> "SAEConfig":
        if self.k > self.n_latents:
            raise ValueError(f"k = {self.k} is larger than the number of latents "
                             f"{self.n_latents} (d_in {self.d_in} x expansion {self.expansion_factor})")
        return self


class EncoderOutput(NamedTuple):
    top_acts: torch.Tensor
    """Activations of the selected latents, (N, k)."""
    top_indices: torch.Tensor
    """Indices of the selected latents, (N, k)."""


class ForwardOutput(NamedTuple):
    sae_out: torch.Tensor
    """Reconstruction of the input, (N, d_in)."""
    top_acts: torch.Tensor
    """Activations of the selected latents, (N, k) (padded with zeros under BatchTopK)."""
    top_indices: torch.Tensor
    """Indices of the selected latents, (N, k)."""
    fvu: torch.Tensor
    """Fraction of variance unexplained: squared error / total variance of the batch."""
    auxk_loss: torch.Tensor
    """FVU of the residual reconstructed from dead latents, scaled by the dead share (0 if none)."""


class SparseAutoencoder(nn.Module):
    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Linear(cfg.d_in, cfg.n_latents)
        nn.init.zeros_(self.encoder.bias)
        self.W_dec = nn.Parameter(self.encoder.weight.detach().clone())
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.normalize_decoder()

    # ------------------------------------------------------------------ the maps
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(W_enc (x - b_dec) + b_enc) for every latent, (N, n_latents)."""
        return F.relu(self.encoder(x - self.b_dec))

    def encode(self, x: torch.Tensor) -> EncoderOutput:
        """Per-vector TopK: the k largest latents of each vector."""
        acts, indices = self.pre_acts(x).topk(self.cfg.k, dim=-1, sorted=False)
        return EncoderOutput(acts, indices)

    def encode_batch_topk(self, x: torch.Tensor) -> EncoderOutput:
        """BatchTopK: keep the k x N largest pre-activations of the whole batch.

        A vector may keep more or fewer than k latents; the result is padded to the largest
        count per vector (padding has activation 0 and index 0, which decodes to nothing).
        """
        pre = self.pre_acts(x)
        n = pre.shape[0]
        flat_acts, flat_idx = pre.flatten().topk(self.cfg.k * n, sorted=False)
        rows, cols = flat_idx // pre.shape[1], flat_idx % pre.shape[1]
        counts = torch.bincount(rows, minlength=n)
        width = max(int(counts.max()), 1)
        order = torch.argsort(rows, stable=True)
        rows, cols, flat_acts = rows[order], cols[order], flat_acts[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(rows), device=x.device) - starts[rows]
        acts = pre.new_zeros(n, width)
        indices = torch.zeros(n, width, dtype=torch.long, device=x.device)
        acts[rows, slot] = flat_acts
        indices[rows, slot] = cols
        return EncoderOutput(acts, indices)

    def decode(self, top_acts: torch.Tensor, top_indices: torch.Tensor) -> torch.Tensor:
        """Sum of the selected decoder rows, weighted by their activations, plus b_dec."""
        shape = top_acts.shape[:-1]
        out = F.embedding_bag(top_indices.reshape(-1, top_indices.shape[-1]), self.W_dec,
                              per_sample_weights=top_acts.reshape(-1, top_acts.shape[-1]),
                              mode="sum")
        return out.reshape(*shape, -1) + self.b_dec

    def dense_latents(self, x: torch.Tensor) -> torch.Tensor:
        """TopK codes as a dense (N, n_latents) tensor (zeros outside the top k)."""
        acts, indices = self.encode(x)
        return torch.zeros(*acts.shape[:-1], self.cfg.n_latents, dtype=acts.dtype,
                           device=acts.device).scatter_(-1, indices, acts)

    def forward(self, x: torch.Tensor, dead_mask: torch.Tensor | None = None,
                batch_topk: bool = False) -> ForwardOutput:
        acts, indices = self.encode_batch_topk(x) if batch_topk else self.encode(x)
        out = self.decode(acts, indices)
        residual = x - out
        total_var = (x - x.mean(0)).pow(2).sum()
        fvu = residual.pow(2).sum() / total_var
        auxk = x.new_zeros(())
        if dead_mask is not None and bool(dead_mask.any()):
            auxk = self._auxk(x, residual, dead_mask)
        return ForwardOutput(out, acts, indices, fvu, auxk)

    def _auxk(self, x: torch.Tensor, residual: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """Reconstruct the residual from the top dead latents only (gradient reaches them only)."""
        n_dead = int(dead.sum())
        k_aux = min(self.cfg.aux_k, max(1, self.cfg.d_in // 2), n_dead)
        pre = self.pre_acts(x)
        pre = torch.where(dead, pre, torch.full_like(pre, -torch.inf))
        acts, indices = pre.topk(k_aux, dim=-1, sorted=False)
        acts = acts.clamp(min=0)
        e_hat = F.embedding_bag(indices, self.W_dec, per_sample_weights=acts, mode="sum")
        target = residual.detach()
        scale = min(n_dead / self.cfg.aux_k, 1.0)
        return scale * (e_hat - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()

    # ------------------------------------------------------------------ decoder constraints
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp(min=torch.finfo(self.W_dec.dtype).eps))

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Project out of each decoder row's gradient its component along the row."""
        if self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  folder / WEIGHTS)
        (folder / CONFIG).write_text(json.dumps(self.cfg.model_dump(), indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "SparseAutoencoder":
        folder = Path(folder)
        for name in (CONFIG, WEIGHTS):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"SAE folder {str(folder)!r} lacks {name}")
        cfg = SAEConfig.model_validate_json((folder / CONFIG).read_text())
        sae = cls(cfg)
        try:
            state = load_file(folder / WEIGHTS)
        except Exception as err:
            raise ValueError(f"cannot read SAE weights {folder / WEIGHTS}: {err}") from err
        expected = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
        found = {k: tuple(v.shape) for k, v in state.items()}
        if expected != found:
            raise ValueError(f"SAE weights in {folder} do not match its config {cfg.model_dump()}: "
                             f"expected {expected}, found {found}")
        sae.load_state_dict(state)
        return sae.to(device)


def geometric_median(points: torch.Tensor, iterations: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the sum of Euclidean distances to `points`."""
    median = points.mean(0)
    for _ in range(iterations):
        dist = (points - median).norm(dim=1).clamp(min=1e-8)
        weights = 1 / dist
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - median).norm() <= tol * max(1.0, float(median.norm())):
            return new
        median = new
    return median
