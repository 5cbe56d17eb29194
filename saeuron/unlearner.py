"""A finished run from Python: its model, sampled with any of its scored concepts unlearned.

    from saeuron.unlearner import Unlearner

    model = Unlearner.from_run("runs/default")
    images = model.sample(["a star in sketch style"], seeds=[0], unlearn=["sketch"])

The edit of each concept is the one the run chose (its feature store: features, multiplier,
gate); concepts of both domains can be unlearned together, each at its own block.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from saeuron.harvest import HarvestConfig
from saeuron.intervention import Gate, Unlearn
from saeuron.diffusion import Pipeline, load_pipeline
from saeuron.run import PipelineConfig
from saeuron.sae import SparseAutoencoder
from saeuron.sampling import sample
from saeuron.unlearning import concept_edit
from storage.features import DomainFeatures, read_features, sae_fingerprint
from storage.layout import RunLayout


@dataclass
class Scored:
    """One domain of a finished run: the block its edits apply at, its SAE and its scores."""

    block: str
    sae: SparseAutoencoder
    mean_all: np.ndarray
    domains: dict[str, DomainFeatures]


@dataclass
class Unlearner:
    pipe: Pipeline
    scored: dict[str, Scored]
    """Per domain ('style', 'object')."""
    config: PipelineConfig
    """The run's configuration (its sampling options are the defaults here)."""

    @classmethod
    def from_run(cls, root: str | Path, device: str = "cpu") -> "Unlearner":
        """The run at `root`, once its score stage has finished (the model and SAEs it used)."""
        config_file = Path(root) / "config.yaml"
        if not config_file.is_file():
            raise FileNotFoundError(f"{root} is not a pipeline run (no config.yaml): run the "
                                    "pipeline on it first (python -m flows.launch --root ...)")
        config = PipelineConfig.from_yaml(config_file)
        layout = RunLayout(root=str(root), stores=config.run.stores)
        score = layout.upstream("score", "Unlearner")
        trained = layout.upstream("train", "Unlearner")
        scored = {}
        for domain, url in score["outputs"].items():
            block = getattr(config.score.hooks, domain)
            folder = trained["outputs"][block]
            _, mean_all, domains = read_features(url, sae_fingerprint(folder))
            scored[domain] = Scored(block, SparseAutoencoder.load(folder, device=device),
                                    mean_all, domains)
        pipe = load_pipeline(HarvestConfig(model=config.harvest.model).model_path(), device=device)
        return cls(pipe, scored, config)

    def concepts(self) -> dict[str, list[str]]:
        """The concepts that can be unlearned, per domain."""
        return {d: s.domains[d].concepts for d, s in self.scored.items()}

    def sample(self, prompts: list[str], seeds: list[int], unlearn: list[str] = (),
               gate: Gate | None = None, **sampling) -> np.ndarray:
        """Pictures (uint8 (N, H, W, 3)) of the prompts at the seeds, with the `unlearn`
        concepts removed where `gate` says (default: each concept's own, as the run chose;
        'detect' edits only pictures in which the concept is seen); `sampling` overrides the
        run's sampling options (num_steps, guidance, batch_size, precision, scheduler)."""
        known = self.concepts()
        by_domain: dict[str, list[str]] = {}
        for concept in unlearn:
            domain = next((d for d, names in known.items() if concept in names), None)
            if domain is None:
                raise ValueError(f"unknown concept {concept!r}; this run can unlearn "
                                 + "; ".join(f"{d}s {', '.join(n)}" for d, n in known.items()))
            by_domain.setdefault(domain, []).append(concept)
        options = self.config.sampling.options() | sampling
        with ExitStack() as edits:
            for domain, concepts in by_domain.items():
                s = self.scored[domain]
                edit = concept_edit(s.mean_all, s.domains, domain, concepts, gate=gate)
                edits.enter_context(Unlearn(self.pipe.unet, s.block, s.sae, edit,
                                            error_sign=self.config.evaluate.error_sign))
            return sample(self.pipe, list(prompts), list(seeds), **options)
