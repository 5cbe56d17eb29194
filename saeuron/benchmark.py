"""The benchmark: every unlearning method on every target of a finished run, through the
evaluation's own metrics, in one table laid out as UnlearnCanvas's.

For each (method, target) the method's one hyperparameter is chosen on validation pictures
(saeuron.sweep.choose: seeds no other split uses, the objective of SAeUron's own sweep, its
finalists judged again), then the chosen model samples the evaluation grid at the run's
evaluation seeds and is judged against the run's unedited baseline (saeuron.metrics.assess).
SAeUron itself appears as the run's own evaluation (its sweep chose on the same validation
split), and as two variants on the same SAEs: the paper's recipe (`method: paper`, scored
again) and the public reference code's error sign. Beside the figures: the time to unlearn one
concept (choosing included), the sampling time and peak memory against plain sampling, and
the storage the method adds.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from saeuron.baselines import MethodSpec, Unlearned, default_methods
from saeuron.config import Config
from saeuron.diffusion import Pipeline, load_pipeline
from saeuron.grid import ConceptGrid
from saeuron.intervention import Unlearn
from saeuron.judging import GridJudge, GridResult, grid_table, judge_grid
from saeuron.metrics import assess
from saeuron.sae import SparseAutoencoder
from saeuron.sampling import SamplingConfig
from saeuron.sweep import ValidationConfig, choose, judged_metrics
from saeuron.unlearning import concept_edit
from storage.features import read_features, sae_fingerprint

Variant = Literal["paper", "reference-sign"]
"""SAeUron beside the run's own: the paper's recipe, or the reference code's error sign."""


class DomainValidation(Config):
    style: ValidationConfig = Field(
        default_factory=lambda: ValidationConfig(objective=["UA", "IRA", "CRA_grid"]),
        description="How a style target's hyperparameter is chosen (as SAeUron's style sweep).")
    object: ValidationConfig = Field(default_factory=ValidationConfig,
                                     description="How an object target's is chosen.")


class BenchmarkConfig(Config):
    methods: list[MethodSpec] = Field(default_factory=default_methods, description="The "
                                      "baselines, each with the values of its hyperparameter "
                                      "tried on validation pictures.")
    saeuron: list[Variant] = Field(["paper", "reference-sign"], description="SAeUron variants "
                                   "on the run's SAEs beside its own evaluation: 'paper' (the "
                                   "paper's recipe, scored again), 'reference-sign' (the "
                                   "public reference code's error sign).")
    validation: DomainValidation = Field(default_factory=DomainValidation,
                                         description="Validation pictures and objective per "
                                         "domain.")
    probe_pictures: int = Field(32, ge=1, le=4096, description="Pictures of the sampling-cost "
                                "probe (time: the median of 3; peak memory: each method in a "
                                "fresh process).")
    workers: int = Field(2, ge=1, le=64, description="(method, target) pairs run at once "
                         "(threads, each with its own copy of the model).")
    threads: int = Field(1, ge=1, le=256, description="torch threads, shared by the workers "
                         "(results depend on it slightly; fixed for reproducibility).")


class SAeUron(Config):
    """SAeUron as a benchmarked method: a run's SAEs and feature stores, edited as the run
    chose (each concept's features, multiplier and gate), with `error_sign`."""

    kind: Literal["saeuron"] = "saeuron"
    label: str = Field("SAeUron", description="Its name in the table.")
    sae_dir: str = Field(..., description="The run's SAE folder (one subfolder per block).")
    features: dict[str, str] = Field(..., description="Feature store of each domain.")
    error_sign: Literal[1, -1] = Field(1, description="1: x + decode(z') - decode(z); -1: the "
                                       "reference code's.")

    @property
    def name(self) -> str:
        return self.label

    def choices(self) -> list[float]:
        return [0.0]  # the run's sweep chose on the validation split already

    def stored_bytes(self, domain: str) -> int:
        """What removing the domain's concepts adds to the model: its block's SAE and feature
        store (shared by every concept of the domain)."""
        hook = read_features(self.features[domain])[0]["hook"]
        return (sum(f.stat().st_size for f in (Path(self.sae_dir) / hook).glob("*.safetensors"))
                + sum(f.stat().st_size for f in Path(self.features[domain]).rglob("*")
                      if f.is_file()))

    def unlearn(self, pipe: Pipeline, grid: ConceptGrid, domain: str, concepts: list[str],
                value: float, workdir: Path) -> Unlearned:
        folder = Path(self.sae_dir) / read_features(self.features[domain])[0]["hook"]
        attrs, mean_all, domains = read_features(self.features[domain], sae_fingerprint(folder))
        sae = SparseAutoencoder.load(folder, device=pipe.device)
        edit = concept_edit(mean_all, domains, domain, concepts)
        return Unlearned(pipe, hooks=lambda: Unlearn(pipe.unet, attrs["hook"], sae, edit,
                                                     error_sign=self.error_sign),
                         added_bytes=self.stored_bytes(domain))


def slug(name: str) -> str:
    """A method's folder name: 'SAeUron (paper)' -> 'saeuron-paper'."""
    return "-".join("".join(c if c.isalnum() else " " for c in name.lower()).split())


def judged_grid(unlearned: Unlearned, judge: GridJudge, grid: ConceptGrid,
                seeds: tuple[int, ...], sampling: SamplingConfig) -> GridResult:
    """The evaluation grid sampled by `unlearned` and judged, as the evaluation's."""
    grid, table = grid_table(judge, seeds, grid)
    images = unlearned.sample(list(table.prompt), list(table.seed), **sampling.options())
    return judge_grid(judge, images, table, grid, len(seeds))


def benchmark_target(method, pipe: Pipeline, judge: GridJudge, grid: ConceptGrid, domain: str,
                     concepts: list[str], validation: ValidationConfig, sampling: SamplingConfig,
                     seeds: tuple[int, ...], base: np.ndarray, reference: np.ndarray,
                     workdir: Path) -> tuple[dict, GridResult]:
    """One method's row for one target, and its judged grid: the hyperparameter chosen on
    validation pictures, then the evaluation grid (`base`, `reference`: the baseline's judge
    features and the reference cells', as the evaluation's)."""
    start, reused = time.perf_counter(), []

    def unlearn(value: float) -> Unlearned:
        unlearned = method.unlearn(pipe, grid, domain, concepts, value, workdir)
        reused.append(unlearned.reused_seconds)  # the first call's: what earlier runs spent
        return unlearned

    def judged(values: list[float], cells) -> list[dict]:
        return [judged_metrics(judge, unlearn(v).sample(cells.prompts, cells.seeds,
                                                        **sampling.options()),
                               cells, domain, concepts, validation) for v in values]

    values = method.choices()
    value, tried = (choose(values, judged, grid, domain, concepts, validation) if len(values) > 1
                    else (values[0], []))
    unlearned = unlearn(value)
    unlearn_seconds = time.perf_counter() - start + reused[0]
    start = time.perf_counter()
    result = judged_grid(unlearned, judge, grid, seeds, sampling)
    row = {"domain": domain, **assess(result.judged(), base, reference, domain, concepts),
           "value": value, "tried": [{k: r[k] for k in ("value", "objective", "images")}
                                     for r in tried],
           "unlearn_seconds": round(unlearn_seconds, 2),
           "sample_seconds": round(time.perf_counter() - start, 2),
           "added_bytes": unlearned.added_bytes}
    return row, result


def probe_cost(method, model: str, grid: ConceptGrid, domain: str, concepts: list[str],
               value: float, workdir: str, prompts: list[str], seeds: list[int],
               sampling: SamplingConfig, threads: int, repeats: int = 3) -> dict:
    """Seconds (the median of `repeats`, after one warm-up picture) and peak resident memory
    (MB) of sampling `prompts` with the method (None: plain sampling), measured in this
    process, which should be a fresh one (the peak is the process's)."""
    torch.set_num_threads(threads)
    pipe = load_pipeline(model, device=sampling.device)
    unlearned = (Unlearned(pipe) if method is None else
                 method.unlearn(pipe, grid, domain, concepts, value, Path(workdir)))
    unlearned.sample(prompts[:1], seeds[:1], **sampling.options())
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        unlearned.sample(prompts, seeds, **sampling.options())
        seconds.append(time.perf_counter() - start)
    return {"seconds": float(np.median(seconds)),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
