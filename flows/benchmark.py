"""The benchmark flow: every unlearning method on every target of a finished run, one table; each
(method, target) kept as it finishes, so a killed run resumes (ESD-x from its checkpoint)."""

from __future__ import annotations

import time
from pathlib import Path

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.stage import LIBRARY, cached, code_fingerprint, holds_root, layout_of, modules_hash
from saeuron.benchmark import BenchmarkConfig, SAeUron, slug
from saeuron.run import RunConfig
from saeuron.sampling import SamplingConfig
from saeuron.scoring import ScoreConfig
from saeuron.threads import torch_threads
from saeuron.unlearning import EvaluateConfig
from saeuron.worlds import world_digest
from storage.features import DOMAINS, scored_domains
from storage.layout import UnitResults, fingerprint, made
from tasks.benchmark import method_target, publish, rows_of, saeuron_variants, sampling_costs


@flow(name="benchmark")
@holds_root
def benchmark(config: BenchmarkConfig = BenchmarkConfig(), run: RunConfig = RunConfig(),
              sampling: SamplingConfig = SamplingConfig(),
              evaluate: EvaluateConfig = EvaluateConfig(),
              paper_score: ScoreConfig = ScoreConfig(), force: bool = False) -> dict:
    """Compare the methods of `config` with SAeUron on the run's evaluation targets (`evaluate`,
    sampled as `sampling`); `paper_score`: the options of SAeUron's paper variant."""
    start, layout, out = time.time(), layout_of(run), Path(run.root) / "benchmark"
    evaluated, scored, harvested = map(lambda s: layout.upstream(s, "benchmark"),
                                       ("evaluate", "score", "harvest"))
    features = {d: scored["outputs"][d] for d in DOMAINS}
    targets = evaluate.targets(scored_domains(features)[0], evaluate.concept_grid())
    shared = fingerprint(modules_hash(["saeuron.benchmark"], LIBRARY), made(evaluated),
                         evaluate.model_dump(mode="json"), sampling.fingerprint(),
                         world_digest(evaluate.grid))  # what a (method, target) pair reads
    fp = fingerprint("benchmark", code_fingerprint("benchmark"), shared,
                     config.model_dump(mode="json"), paper_score.model_dump(mode="json"))
    if hit := cached(layout, "benchmark", fp, force):
        return hit
    layout.begin("benchmark", fp, [str(out)] if force else [], force)
    own = SAeUron(sae_dir=str(layout.sae_dir), features=features)
    variants, seconds = saeuron_variants(config.saeuron, own, paper_score, layout, harvested,
                                         scored, evaluate.grid, sampling, out, shared)
    methods = {m.name: m for m in config.methods} | variants
    results = {name: UnitResults(out / slug(name), fingerprint(shared, m.model_dump(mode="json")))
               for name, m in methods.items()}
    todo = [(name, t) for name in methods for t in targets if not results[name].done([t[2]])]
    progress = create_progress_artifact(0.0, key="benchmark-progress", description="Pairs done")
    common = dict(model=harvested["metrics"]["model"], grid=evaluate.grid, sampling=sampling)
    with torch_threads(config.threads), ThreadPoolTaskRunner(max_workers=config.workers) as pool:
        futures = {pool.submit(method_target, parameters=dict(
            method=methods[name], label=slug(name), seeds=evaluate.seeds(), domain=domain,
            concepts=concepts, name=target, validation=getattr(config.validation, domain),
            baseline_dir=str(layout.eval_dir / "baseline"), out_dir=str(out / slug(name)),
            **common)): (name, target) for name, (domain, concepts, target) in todo}
        for i, future in enumerate(as_completed(list(futures)), 1):
            results[futures[future][0]].add(futures[future][1], future.result())
            update_progress_artifact(progress, 100.0 * i / len(futures))
    evaluation = UnitResults(layout.eval_dir, evaluated["fingerprint"])  # SAeUron's own rows
    rows = rows_of(results, evaluation, [t for _, _, t in targets], own, seconds)
    costs = sampling_costs(methods | {"SAeUron": own}, rows, out, seeds=evaluate.seeds(),
                           pictures=config.probe_pictures, threads=config.threads,
                           processes=config.workers, fp=fp, **common)
    metrics = publish(rows, costs, evaluation.done(["baseline"])["baseline"], out)
    return layout.finish("benchmark", fp, {"benchmark": str(out)}, metrics, time.time() - start,
                         upstream={"evaluate": evaluated["fingerprint"]})


if __name__ == "__main__":
    from flows.cli import benchmark_main

    benchmark_main(benchmark)
