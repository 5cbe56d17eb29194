"""The sparse autoencoder of SAeUron: TopK at inference, BatchTopK in training, AuxK for dead latents.

    z = TopK(ReLU(W_enc (x - b_dec) + b_enc)),   x_hat = W_dec^T z + b_dec

Decoder rows have unit norm; the gradient component parallel to each row is removed before an
optimiser step (`remove_parallel_gradient`) and the rows are renormalised after it
(`normalize_decoder`). Usable alone from a notebook: `SparseAutoencoder.load(folder)`, then
`encode`, `decode` or call it.

The training forward runs the encoder matmul once, and its backward reaches only the selected
latents (the kept codes and the AuxK ones): every other pre-activation was cut by TopK and gets
a zero gradient, so plain autograd's dense encoder backward (two more matmuls over all latents)
would be work that adds zeros. It is one autograd node, `_TopKAutoencoder`, in two layouts:

- narrow SAEs (n_latents <= `DENSE_MAX_RATIO` x k; MiniCanvas's style SAE, 256 latents at k
  32) keep the codes as a dense (N, n_latents) matrix: small matmuls beat gathers there;
- wider ones (MiniCanvas's object SAE, 512; SD's 20,480) keep the selected latents as flat
  per-vector lists and gather and scatter only their rows (embedding bags, a sampled matmul).

BatchTopK's threshold comes from one radix select over the batch's pre-activations, or at SD
size from per-row pools, which cost less than a pass over all N x n_latents values there.

AuxK runs on the dead columns only, densely (or as lists when far more latents are dead than it
keeps). At SD width, fresh pages for the (N, n_latents) pre-activations and the two weight
gradients cost more than most of the arithmetic around them, so the former live in a reused
buffer and the latter can be written into last step's memory (`release_gradients`).
`tests/test_sae.py` checks values and gradients against plain dense autograd.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from safetensors.torch import load_file, save_file
from torch import nn

from saeuron.config import Config
from storage.checkpoint import default_permissions

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
    DENSE_MAX_RATIO = 8
    """The training forward keeps dense (N, n_latents) codes while n_latents <= this x k, i.e.
    while at least 1 in 8 codes is active (see the module doc). Measured on CPU with MiniCanvas
    activations: the 256-latent SAE (k 32) steps ~1.15x faster dense, the 512-latent one ~1.25x
    faster as lists."""

    BUFFER_MIN = 1 << 22
    """From this many pre-activations (N x n_latents) up, the list layout keeps them in a reused
    buffer and finds the BatchTopK threshold per row (`_batch_topk_rows`) instead of in one
    pass over all of them (`_kth_largest`)."""

    AUX_DENSE_RATIO = 4
    """AuxK runs densely on the dead columns while there are at most this many dead latents per
    AuxK latent kept; past that it gathers the kept ones."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = nn.Linear(cfg.d_in, cfg.n_latents)
        nn.init.zeros_(self.encoder.bias)
        self.W_dec = nn.Parameter(self.encoder.weight.detach().clone())
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        self.normalize_decoder()
        self._pre_buffer: torch.Tensor | None = None
        self._grad_memory: dict[str, torch.Tensor] = {}

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
        with torch.no_grad():
            kept, indices, _ = _batch_topk_rows(pre.detach(), self.cfg.k)
        return EncoderOutput(torch.where(kept > 0, pre.gather(1, indices), 0), indices)

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
        dead = dead_mask.nonzero().squeeze(1) if dead_mask is not None else None
        n_dead = 0 if dead is None else len(dead)
        k_aux = min(self.cfg.aux_k, max(1, self.cfg.d_in // 2), n_dead)
        dense = self.cfg.n_latents <= self.DENSE_MAX_RATIO * self.cfg.k
        plan = _Plan(k=self.cfg.k, batch_topk=batch_topk, dense=dense,
                     dead=dead if n_dead else None, k_aux=k_aux,
                     aux_dense=dense or n_dead <= self.AUX_DENSE_RATIO * k_aux, owner=self)
        recon, e_hat, acts, indices = _TopKAutoencoder.apply(
            x - self.b_dec, self.encoder.weight, self.encoder.bias, self.W_dec, plan)
        out = recon + self.b_dec
        residual = x - out
        total_var = (x - x.mean(0)).pow(2).sum()
        fvu = residual.pow(2).sum() / total_var
        auxk = x.new_zeros(())
        if n_dead:
            target = residual.detach()
            scale = min(n_dead / self.cfg.aux_k, 1.0)
            auxk = scale * (e_hat - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()
        return ForwardOutput(out, acts, indices, fvu, auxk)

    def _scratch(self, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """A reused (n, n_latents) buffer for the wide layout's pre-activations (nothing keeps
        them past the forward): fresh pages of that size cost as much as several passes over
        it. None when small. Not for concurrent forwards of one module."""
        shape = (n, self.cfg.n_latents)
        if n * self.cfg.n_latents < self.BUFFER_MIN:
            return None
        buf = self._pre_buffer
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
            buf = self._pre_buffer = torch.empty(shape, dtype=dtype, device=device)
        return buf

    # ------------------------------------------------------------------ decoder constraints
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp(min=torch.finfo(self.W_dec.dtype).eps))

    @torch.no_grad()
    def remove_parallel_gradient(self) -> None:
        """Project out of each decoder row's gradient its component along the row (in place,
        in row blocks: a whole (n_latents, d_in) temporary costs more than the arithmetic)."""
        grad, w = self.W_dec.grad, self.W_dec
        if grad is None:
            return
        step = max(1, (1 << 18) // w.shape[1])
        for start in range(0, w.shape[0], step):
            g, r = grad[start:start + step], w[start:start + step]
            g.addcmul_(r, (g * r).sum(1, keepdim=True), value=-1)

    def release_gradients(self) -> None:
        """Set every gradient to None, as `zero_grad(set_to_none=True)` does, but keep the
        memory of W_enc's and W_dec's for the next backward to write into. At SD width their
        fresh pages (and freeing them) cost about 15% of a training step. Only for a caller
        that holds no other reference to those gradients: the next backward overwrites them.
        """
        self._grad_memory = {name: p.grad for name, p in self._large_params()
                             if p.grad is not None and p.grad.is_contiguous()}
        for p in self.parameters():
            p.grad = None

    def _large_params(self) -> tuple[tuple[str, nn.Parameter], ...]:
        return ("w_enc", self.encoder.weight), ("w_dec", self.W_dec)

    def _kept_grad(self, name: str, like: torch.Tensor) -> torch.Tensor | None:
        """The gradient memory `release_gradients` kept for a parameter, handed over once."""
        buf = self._grad_memory.pop(name, None)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype \
                or buf.device != like.device:
            return None
        return buf

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  folder / WEIGHTS)
        default_permissions(folder / WEIGHTS)
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


# ---------------------------------------------------------------------- selection
def _kth_largest(values: torch.Tensor, kk: int) -> torch.Tensor:
    """The kk-th largest of a 1-D tensor of non-negative floats (ReLU outputs), exactly.

    A radix select: float32 bit patterns of non-negative numbers sort like the numbers, so one
    histogram of the top 16 bits finds the bucket holding the kk-th value, and only that bucket
    is searched. A full topk or kthvalue over every element costs several times more.
    """
    n = values.numel()
    if values.dtype != torch.float32 or n < 1 << 16:
        return values.kthvalue(n - kk + 1).values
    key = (values.view(torch.int32) >> 16).clamp_(min=0)  # -0.0 (a ReLU output) has the sign bit
    above = torch.bincount(key, minlength=1 << 15).flip(0).cumsum(0)  # above[i]: keys >= 2^15-1-i
    pos = int(torch.searchsorted(above, kk))
    bucket = (1 << 15) - 1 - pos
    higher = int(above[pos - 1]) if pos else 0
    candidates = values[key == bucket]
    return candidates.kthvalue(candidates.numel() - (kk - higher) + 1).values


class _Entries(NamedTuple):
    """Selected latents as flat lists grouped by vector (CSR-like): BatchTopK keeps a different
    count per vector, and the padded (N, width) block can be several times larger."""
    offsets: torch.Tensor
    """Where each vector's entries start, (N,)."""
    rows: torch.Tensor
    """Vector of each entry, (E,)."""
    slots: torch.Tensor
    """Column of each entry in the padded (N, width) block, (E,)."""
    cols: torch.Tensor
    """Latent of each entry, (E,)."""
    vals: torch.Tensor
    """Activation of each entry, (E,)."""

    @classmethod
    def of_block(cls, acts: torch.Tensor, indices: torch.Tensor,
                 keep: torch.Tensor | None = None) -> "_Entries":
        """The entries of a padded block (all of it, or where `keep`, a prefix of each row)."""
        n, width = acts.shape
        if keep is None:
            rows = torch.arange(n, device=acts.device).repeat_interleave(width)
            slots = torch.arange(width, device=acts.device).repeat(n)
            counts = torch.full((n,), width, device=acts.device)
        else:
            rows, slots = keep.nonzero(as_tuple=True)
            counts = torch.bincount(rows, minlength=n)
        return cls(counts.cumsum(0) - counts, rows, slots, indices[rows, slots], acts[rows, slots])

    def bag(self, weight: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum over each vector's entries of weights[e] * weight[cols[e]], (N, d)."""
        return F.embedding_bag(self.cols, weight, self.offsets, per_sample_weights=weights,
                               mode="sum")

    def dots(self, grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """grad[rows[e]] . weight[cols[e]] for each entry (the gradient of `bag`'s weights),
        as a sampled matmul: only those E dot products."""
        crow = torch.cat([self.offsets, self.offsets.new_tensor([len(self.cols)])])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sparse CSR is marked beta
            pattern = torch.sparse_csr_tensor(crow, self.cols, grad.new_zeros(len(self.cols)),
                                              size=(grad.shape[0], weight.shape[0]))
            return torch.sparse.sampled_addmm(pattern, grad, weight.t()).values()


def _batch_topk_rows(pre: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, _Entries]:
    """BatchTopK of non-negative pre-activations: padded (values, indices), (N, width), and the
    same as entries.

    Each row's top w (w = 2k) are pooled and the (k N)-th largest of the pool is the batch
    threshold, provided no row had all of its pooled values at or above it (it could hold more);
    such rows are widened (x4) and the threshold taken again. Kept: values >= threshold and > 0,
    a prefix of each row's sorted top; the padding has value 0 and index 0. Exact (ties at the
    threshold are all kept), and several times cheaper than one topk over all N x n_latents
    values, which also runs on one thread.
    """
    n, n_latents = pre.shape
    kk = k * n
    vals, idx = pre.topk(min(2 * k, n_latents), dim=1, sorted=True)
    width = torch.full((n, 1), vals.shape[1], device=pre.device)
    while True:
        pool = vals.view(-1)  # narrower rows are padded with -1, below every value
        threshold = pool.kthvalue(pool.numel() - kk + 1).values
        last = vals.gather(1, width - 1).squeeze(1)
        full = width.squeeze(1) >= n_latents
        grow = ((last >= threshold) & (last > 0) & ~full).nonzero().squeeze(1)
        if len(grow) == 0:
            break
        w = min(4 * vals.shape[1], n_latents)
        more, more_idx = pre[grow].topk(w, dim=1, sorted=True)
        vals = torch.cat([vals, vals.new_full((n, w - vals.shape[1]), -1)], 1)
        idx = torch.cat([idx, idx.new_zeros(n, w - idx.shape[1])], 1)
        vals[grow], idx[grow], width[grow] = more, more_idx, w
    keep = (vals >= threshold) & (vals > 0)
    top = max(int(keep.sum(1).max()), 1)
    keep = keep[:, :top]
    vals, idx = torch.where(keep, vals[:, :top], 0), torch.where(keep, idx[:, :top], 0)
    return vals, idx, _Entries.of_block(vals, idx, keep)


def _scatter_rows(latents: torch.Tensor, rows: torch.Tensor, weights: torch.Tensor,
                  source: torch.Tensor, n_latents: int,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """out[j] = sum of weights[e] * source[rows[e]] over the entries e with latents[e] == j.

    The weight gradient of an embedding bag, done as the forward of one: entries sorted by
    latent (stably, so sums keep a fixed order) become one bag per latent. Into `out` (memory
    kept from the last step) it goes in blocks of latents small enough to stay in cache.
    """
    order = torch.argsort(latents, stable=True)
    counts = torch.bincount(latents, minlength=n_latents)
    starts = counts.cumsum(0) - counts
    rows, weights = rows[order], weights[order]
    if out is None:
        return F.embedding_bag(rows, source, starts, per_sample_weights=weights, mode="sum")
    step = max(1, (1 << 20) // source.shape[1])
    bounds = torch.cat([starts[::step], starts.new_tensor([len(rows)])]).tolist()
    for block, lo in enumerate(range(0, n_latents, step)):
        a, b = bounds[block], bounds[block + 1]
        out[lo:lo + step] = F.embedding_bag(rows[a:b], source, starts[lo:lo + step] - a,
                                            per_sample_weights=weights[a:b], mode="sum")
    return out


class _Plan:
    """What `_TopKAutoencoder` selects and how; plain attributes, set per forward."""

    def __init__(self, k: int, batch_topk: bool, dense: bool, dead: torch.Tensor | None,
                 k_aux: int, aux_dense: bool, owner: SparseAutoencoder):
        self.k, self.batch_topk, self.dense, self.dead = k, batch_topk, dense, dead
        self.k_aux, self.aux_dense, self.owner = k_aux, aux_dense, owner


class _TopKAutoencoder(torch.autograd.Function):
    """(u, W_enc, b_enc, W_dec) -> (W_dec^T z, AuxK reconstruction, top_acts, top_indices), with
    u = x - b_dec and z the TopK / BatchTopK codes; the backward visits selected latents only.

    Dense layout: the codes z as an (N, n_latents) matrix. Sparse layout: z as `_Entries`.
    AuxK: `aux`, the (N, n_dead) codes of the dead columns (zeros outside the top k_aux of each
    row), or `_Entries` of the kept dead latents when gathering them is cheaper.
    """

    @staticmethod
    def forward(ctx, u, w_enc, b_enc, w_dec, plan: _Plan):
        ctx.set_materialize_grads(False)
        n = u.shape[0]
        u_, w_enc_, w_dec_ = u.detach(), w_enc.detach(), w_dec.detach()
        with torch.no_grad():
            # The dense layout saves pre (as the codes) for backward: never the shared buffer.
            pre = plan.owner._scratch(n, u.dtype, u.device) if not plan.dense else None
            buffered = pre is not None
            pre = torch.addmm(b_enc, u_, w_enc_.t(), out=pre) if buffered \
                else torch.addmm(b_enc, u_, w_enc_.t())
            pre.relu_()
            # AuxK selection among the dead latents: the top k_aux of each row (first: the
            # dense layout masks pre in place below).
            aux = aux_entries = None
            if plan.dead is not None:
                aux = pre.index_select(1, plan.dead)
                if plan.k_aux < len(plan.dead):
                    top, pos = aux.topk(plan.k_aux, dim=1, sorted=False)
                    aux = torch.zeros_like(aux).scatter_(1, pos, top)
                if not plan.aux_dense:
                    rows, pos = aux.nonzero(as_tuple=True)
                    counts = torch.bincount(rows, minlength=n)
                    aux_entries = _Entries(counts.cumsum(0) - counts, rows, pos, plan.dead[pos],
                                           aux[rows, pos])
                    aux = None
            # Main selection, and decoding.
            codes = main = None
            if plan.batch_topk and (plan.dense or not buffered):
                # One exact threshold over the batch; entries >= it stay in place.
                threshold = _kth_largest(pre.view(-1), plan.k * n)
                if bool(threshold > 0):  # keep pre >= threshold: pre > the float below it
                    below = torch.nextafter(threshold, threshold.new_zeros(()))
                    F.threshold_(pre, float(below), 0)
                acts, indices, main = _pack(pre)
                codes = pre if plan.dense else None
            elif plan.batch_topk:  # large: per-row pools, not a pass over a copy of everything
                acts, indices, main = _batch_topk_rows(pre, plan.k)
            else:
                acts, indices = pre.topk(plan.k, dim=1, sorted=False)
                if plan.dense:
                    codes = torch.zeros_like(pre).scatter_(1, indices, acts)
                else:
                    main = _Entries.of_block(acts, indices)
            if codes is not None:
                main = None
                recon = codes @ w_dec_
                ctx.top = (acts, indices)
            else:
                recon = main.bag(w_dec_, main.vals)
            if aux is not None:
                e_hat = aux @ w_dec_.index_select(0, plan.dead)
            elif aux_entries is not None:
                e_hat = aux_entries.bag(w_dec_, aux_entries.vals)
            else:
                e_hat = u.new_empty(0)
        ctx.plan = plan
        ctx.main = main
        ctx.aux_entries = aux_entries
        ctx.save_for_backward(u_, w_enc_, w_dec_, codes, aux)
        ctx.mark_non_differentiable(indices)
        return recon, e_hat, acts, indices

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_recon, g_ehat, g_acts, _):
        u, w_enc, w_dec, codes, aux = ctx.saved_tensors
        plan, main, aux_entries = ctx.plan, ctx.main, ctx.aux_entries
        n, n_latents = u.shape[0], w_enc.shape[0]
        dead = plan.dead
        if g_ehat is not None and g_ehat.numel() == 0:
            g_ehat = None
        if g_recon is None:
            g_recon = u.new_zeros(u.shape)
        # Gradients of the selected pre-activations (zero where a code is 0: ReLU or not
        # selected), and of W_dec.
        if codes is not None:
            g_pre = g_recon @ w_dec.t()
            g_wdec = codes.t() @ g_recon
            if g_acts is not None:
                acts, indices = ctx.top
                g_pre.scatter_add_(1, indices, torch.where(acts > 0, g_acts, 0))
            g_pre.mul_(codes.sign())  # codes >= 0: sign is the mask, and cheaper than one
        else:
            g_main = main.dots(g_recon, w_dec)
            if g_acts is not None:
                g_main += g_acts[main.rows, main.slots]
            g_main.mul_(main.vals.sign())
            lat, row, wt, source = [main.cols], [main.rows], [main.vals], g_recon
            if g_ehat is not None and aux_entries is not None:
                lat.append(aux_entries.cols)
                row.append(aux_entries.rows + n)
                wt.append(aux_entries.vals)
                source = torch.cat([g_recon, g_ehat])
            g_wdec = _scatter_rows(torch.cat(lat), torch.cat(row), torch.cat(wt), source, n_latents,
                                   plan.owner._kept_grad("w_dec", w_dec))
        g_aux = g_aux_entries = None
        if g_ehat is not None:
            if aux is not None:
                g_aux = (g_ehat @ w_dec.index_select(0, dead).t()).mul_(aux.sign())
                g_wdec.index_add_(0, dead, aux.t() @ g_ehat)
            else:
                g_aux_entries = aux_entries.dots(g_ehat, w_dec)
        # Encoder: u, W_enc, b_enc.
        if codes is not None:
            if g_aux is not None:
                g_pre.index_add_(1, dead, g_aux)
            g_u = g_pre @ w_enc
            g_wenc = g_pre.t() @ u
            g_benc = g_pre.sum(0)
        else:
            g_u = main.bag(w_enc, g_main)
            lat, row, wt = [main.cols], [main.rows], [g_main]
            if g_aux_entries is not None:
                g_u += aux_entries.bag(w_enc, g_aux_entries)
                lat.append(aux_entries.cols)
                row.append(aux_entries.rows)
                wt.append(g_aux_entries)
            lat, wt = torch.cat(lat), torch.cat(wt)
            g_wenc = _scatter_rows(lat, torch.cat(row), wt, u, n_latents,
                                   plan.owner._kept_grad("w_enc", w_enc))
            g_benc = u.new_zeros(n_latents).index_add_(0, lat, wt)
            if g_aux is not None:
                g_u.addmm_(g_aux, w_enc.index_select(0, dead))
                g_wenc.index_add_(0, dead, g_aux.t() @ u)
                g_benc.index_add_(0, dead, g_aux.sum(0))
        return g_u, g_wenc, g_benc, g_wdec, None


def _pack(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, _Entries]:
    """The nonzero codes of each row, left-aligned in a (N, width) block padded with zeros
    (activation 0, index 0), and as entries: row-major order on both sides, so one masked
    scatter per output places them (no per-entry slot arithmetic)."""
    n = codes.shape[0]
    rows, cols = codes.nonzero(as_tuple=True)
    vals = codes[rows, cols]
    counts = torch.bincount(rows, minlength=n)
    width = max(int(counts.max()), 1) if len(rows) else 1
    used = torch.arange(width, device=codes.device) < counts[:, None]
    acts = codes.new_zeros(n, width).masked_scatter_(used, vals)
    indices = torch.zeros(n, width, dtype=torch.long, device=codes.device)
    indices.masked_scatter_(used, cols)
    offsets = counts.cumsum(0) - counts
    slots = torch.arange(len(rows), device=codes.device) - offsets[rows]
    return acts, indices, _Entries(offsets, rows, slots, cols, vals)


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
