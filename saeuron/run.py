"""The whole pipeline's configuration: where a run lives, and each stage's options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from saeuron.config import Config, merged
from saeuron.names import NO_STYLE
from saeuron.harvest import HarvestConfig, prepare
from saeuron.sae import SAEConfig
from saeuron.sae_train import SAETrainConfig
from saeuron.sampling import SamplingConfig
from saeuron.scoring import DOMAINS, ScoreConfig
from saeuron.unlearning import EvaluateConfig
from saeuron.worlds import DEFAULT, WorldName, is_world, world
from storage.layout import DEFAULT_ROOT

Stage = Literal["harvest", "train", "score", "evaluate"]
UPSTREAM = {"harvest": (), "train": ("harvest",), "score": ("harvest", "train"),
            "evaluate": ("score",)}
"""The stages whose outputs each stage reads."""


class RunConfig(Config):
    root: str = Field(DEFAULT_ROOT, description="Local folder of the run: SAEs, evaluation, "
                      "manifests.")
    stores: str | None = Field(None, description="Folder or fsspec URL (s3://...) of the Zarr "
                               "activation and feature stores (default: the root).")
    dask_address: str | None = Field(None, description="dask.distributed scheduler that runs "
                                     "harvest shards and scoring; None: local threads.")
    shards: int = Field(2, ge=1, le=4096, description="Harvest shards run in parallel.")


PAPER_SCORE = {
    "percentile": 99.999, "top_n": None, "multiplier": -1.0, "contrast": "mean", "gate": "mean",
    "exclusive": False,
    "sweep": {"style": None,
              "object": {"top_n": [1], "multipliers": [-1, -5, -10, -15, -20, -25, -30],
                         "objective": ["UA", "IRA"], "finalists": 0, "prefer": "weaker",
                         "fallback_gate": None}}}
"""The score options of `method: paper` (RECIPE.md sections 3-4): percentile selection
against the mean of the other concepts, the mean gate, gamma -1 for styles, and for objects
a grid search of gamma by (UA + IRA) / 2. The paper's percentiles (99.99-99.999) keep one
feature per timestep of an SAE of 256-512 latents (np.percentile of n scores lies between the
two largest for any p > 100 (1 - 1/n)), so its per-class search of p is the search of gamma at
one feature."""


def world_preset(name: str) -> dict:
    """The options a run of world `name` starts from: its model, grid and blocks in every
    stage, then the world's own defaults (none for the embedded world: the defaults are its)."""
    if name == DEFAULT:
        return {}
    w = world(name)
    hooks = list(dict.fromkeys([w.hooks["style"], w.hooks["object"]]))
    derived = {"harvest": {"model": name, "grid": name, "hooks": hooks},
               "train": {"hooks": hooks, "overrides": {}}, "score": {"hooks": dict(w.hooks)},
               "evaluate": {"model": name, "grid": name, "style_sets": []}}
    return merged(derived, w.defaults)


class PipelineConfig(Config):
    world: WorldName = Field(DEFAULT, description="What the run is about: a registered world or the "
                       "path of a world file (saeuron/world_file.py); its model, grid, judge, "
                       "blocks and defaults come before the options below.")
    method: Literal["saeuron", "paper"] = Field(
        "saeuron", description="Defaults of the score section: 'saeuron', this project's "
        "measured best (BENCHMARKS.md); 'paper', the paper's recipe (saeuron.run.PAPER_SCORE). "
        "Options set in the score section override either.")
    run: RunConfig = Field(default_factory=RunConfig, description="Where the run lives, where "
                           "it computes.")
    sampling: SamplingConfig = Field(default_factory=SamplingConfig, description="How every "
                                     "stage samples the model (the harvest with its own steps "
                                     "and precision where its section sets them).")
    harvest: HarvestConfig = Field(default_factory=HarvestConfig, description="Harvest of the "
                                   "SAE training split.")
    score_seeds: int = Field(1, ge=1, le=100_000, description="Seeds per prompt of the held-out "
                             "scoring split (harvested with the same options).")
    train: SAETrainConfig = Field(default_factory=SAETrainConfig, description="SAE training.")
    score: ScoreConfig = Field(default_factory=ScoreConfig,
                               description="Feature scoring and selection (by default with the "
                               "per-concept sweep of n and multiplier).")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig,
                                     description="Unlearning targets and evaluation sampling.")
    force: list[Stage] = Field([], description="Stages to rerun even when cached.")

    @model_validator(mode="before")
    @classmethod
    def _presets(cls, data: object) -> object:
        """The world's options, then the method's, under the configuration's own."""
        if not isinstance(data, dict):
            return data
        data = {k: v.model_dump() if isinstance(v, Config) else v for k, v in data.items()}
        if isinstance(data.get("world"), str) and is_world(data["world"]):
            data = merged(world_preset(data["world"]), data)
        if data.get("method") != "paper":
            return data
        given = data.get("score") or {}
        sweep = {**PAPER_SCORE["sweep"], **(given.get("sweep") or {})}
        return {**data, "score": {**PAPER_SCORE, **given, "sweep": sweep}}

    @model_validator(mode="after")
    def _hooks_agree(self) -> "PipelineConfig":
        for hook in self.train.hooks:
            if hook not in self.harvest.hooks:
                raise ValueError(f"train.hooks: {hook!r} is not harvested; harvest.hooks are "
                                 f"{self.harvest.hooks}")
        for domain in DOMAINS:
            hook = getattr(self.score.hooks, domain)
            if hook not in self.train.hooks:
                raise ValueError(f"score.hooks.{domain} {hook!r} has no SAE; train.hooks are "
                                 f"{self.train.hooks}")
        if self.harvest.split != "harvest":
            raise ValueError(f"harvest.split must be 'harvest' in a pipeline (the scoring split "
                             f"is harvested with score_seeds), got {self.harvest.split!r}")
        for option in ("model", "grid"):
            if getattr(self.evaluate, option) != getattr(self.harvest, option):
                raise ValueError(f"evaluate.{option} {getattr(self.evaluate, option)!r} differs "
                                 f"from harvest.{option} {getattr(self.harvest, option)!r}")
        shared = sorted(set(self.evaluate.seeds()) & set(self.harvest.seeds()
                                                         + self.score_harvest().seeds()))
        if shared:
            raise ValueError(f"evaluate.seed_list: seeds {shared} also sample the harvest or "
                             f"scoring split (harvest seeds {self.harvest.seeds()[0]}-"
                             f"{self.harvest.seeds()[-1]}, scoring from "
                             f"{self.score_harvest().seeds()[0]}); evaluate on unseen seeds")
        return self

    def paper_score(self) -> ScoreConfig:
        """The score options of the paper's recipe (PAPER_SCORE) on this run's blocks."""
        sweep = {**PAPER_SCORE["sweep"], "workers": self.score.sweep.workers}
        return ScoreConfig.model_validate({**self.score.model_dump(), **PAPER_SCORE,
                                           "sweep": sweep})

    def benchmark_options(self) -> dict:
        """The benchmark flow's parameters beyond its own options and `run`: how the run samples,
        its evaluation, and the score options of SAeUron's paper variant."""
        return {"sampling": self.sampling, "evaluate": self.evaluate,
                "paper_score": self.paper_score()}

    def score_harvest(self) -> HarvestConfig:
        return self.harvest.model_copy(update={"split": "score", "n_seeds": self.score_seeds})

    def stage_options(self, stage: Stage) -> dict:
        """The stage flow's parameters beyond its section and `run`: the sampling of every stage
        that samples; the harvest's scoring seeds; for the score stage's sweep, the evaluation's
        grid (it judges as the evaluation does)."""
        if stage == "harvest":
            return {"score_seeds": self.score_seeds, "sampling": self.sampling}
        if stage == "score":
            return {"sampling": self.sampling, "grid": self.evaluate.grid}
        if stage == "evaluate":
            return {"sampling": self.sampling}
        return {}


_CHECKED: set[str] = set()
"""Configurations check_pipeline passed in this process (the CLI checks before the flow does)."""


def check_pipeline(cfg: PipelineConfig) -> None:
    """Every check that needs the model but no sampling, so a bad run fails in seconds; once
    per configuration and process."""
    key = cfg.model_dump_json()
    if key in _CHECKED:
        return
    harvested = prepare(cfg.harvest, cfg.sampling)
    prepare(cfg.score_harvest(), cfg.sampling, harvested.pipe)
    for domain in DOMAINS:
        hook = getattr(cfg.score.hooks, domain)
        train = cfg.train.for_hook(hook)
        sae = SAEConfig(d_in=harvested.spec.hooks[hook][1],
                        expansion_factor=train.expansion_factor, k=train.k)
        sweep = getattr(cfg.score.sweep, domain)
        for name, n in [("score.top_n", cfg.score.top_n)] + [
                (f"score.sweep.{domain}.top_n", n) for n in (sweep.top_n if sweep else [])]:
            if n is not None and n > sae.n_latents:
                raise ValueError(f"{name} {n} exceeds the {sae.n_latents} latents of the SAE "
                                 f"of {hook}")
    table = harvested.table
    for domain, asked in (("style", cfg.evaluate.styles), ("object", cfg.evaluate.objects),
                          ("style", [s for group in cfg.evaluate.style_sets for s in group])):
        known = sorted(set(table[domain]) - {NO_STYLE})
        unknown = [c for c in asked or [] if c not in known]
        if unknown:
            raise ValueError(f"evaluate: unknown {domain} target(s) {unknown}; the harvest "
                             f"scores these: {', '.join(known)}")
    sets = [s for group in cfg.evaluate.style_sets for s in group]
    cfg.evaluate.concept_grid().check(cfg.evaluate.objects, (cfg.evaluate.styles or []) + sets)
    _CHECKED.add(key)
