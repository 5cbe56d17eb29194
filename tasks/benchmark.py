"""Benchmark tasks: one method on one target, a method's sampling cost, and the table."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import numpy as np
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from saeuron.benchmark import SAeUron, benchmark_target, probe_cost, slug
from saeuron.benchmark_table import benchmark_report, plane, table_row
from saeuron.diffusion import load_pipeline
from saeuron.edited import Unedited
from saeuron.sampling import SamplingConfig
from saeuron.scoring import ScoreConfig
from saeuron.sweep import ValidationConfig
from saeuron.worlds import world
from storage.layout import RunLayout, UnitResults, fingerprint
from tasks.evaluate import FEATURES, UNEDITED, before_after
from tasks.score import score_features


@task(name="benchmark-target", task_run_name="{label}-{name}")
def method_target(method, label: str, model: str, grid: str, sampling: SamplingConfig,
                  seeds: list[int], domain: str, concepts: list[str], name: str,
                  validation: ValidationConfig, baseline_dir: str, out_dir: str) -> dict:
    """The method's row for one target (saeuron.benchmark.benchmark_target), with its before /
    after picture beside the evaluation's (the baseline's pictures before)."""
    pipe = load_pipeline(model, device=sampling.device)
    w = world(grid)
    features = np.load(Path(baseline_dir) / FEATURES)
    folder = Path(out_dir) / name
    row, result = benchmark_target(method, pipe, w.judge(sampling.device), w.grid(), domain,
                                   concepts, validation, sampling, tuple(seeds),
                                   features["base"], features["reference"], folder / "work")
    before = Unedited.load(Path(baseline_dir) / UNEDITED).images.reshape(result.images.shape)
    picture = before_after(before, result, domain, concepts, folder / "before_after.png")
    row = {"target": name, **row, "before_after": str(picture)}
    get_run_logger().info(f"{label} {name}: UA {row['UA']:.3f}, IRA {row['IRA']:.3f}, CRA "
                          f"{row['CRA']:.3f}, kept {row['kept']:.3f} (value {row['value']})")
    return row


@task(name="benchmark-costs")
def probe_costs(jobs: dict[str, tuple], processes: int) -> dict[str, dict]:
    """Each job's saeuron.benchmark.probe_cost (its arguments), each in a fresh process (its
    peak memory is the process's), `processes` at a time."""
    pool = multiprocessing.get_context("spawn").Pool(processes, maxtasksperchild=1)
    try:
        pending = {name: pool.apply_async(probe_cost, args) for name, args in jobs.items()}
        costs = {name: job.get() for name, job in pending.items()}
    finally:
        pool.close()
        pool.join()
    for name, cost in costs.items():
        get_run_logger().info(f"{name}: sampling {cost['seconds']:.1f} s, peak "
                              f"{cost['peak_mb']:.0f} MB")
    return costs


def publish(rows: dict[str, list[dict]], costs: dict[str, dict], baseline: dict,
            out_dir: Path) -> dict:
    """The table (a line per method, the unedited model first; each method's cost against
    `costs['plain']`), the plane, the report file and their artifacts; the stage's metrics."""
    plain = costs["plain"]
    lines = [{"method": "no unlearning", "style IRA": f"{baseline['style_acc']:.3f}",
              "object IRA": f"{baseline['object_acc']:.3f}",
              "FD_rest": round(baseline["FD_rest"], 2), "sampling x": 1.0,
              "peak MB": f"{plain['peak_mb']:.0f}"}]
    lines += [table_row(name, mine, costs[name] | {"plain_seconds": plain["seconds"],
                                                   "plain_peak_mb": plain["peak_mb"]})
              for name, mine in rows.items()]
    plot = plane(lines[1:], out_dir / "plane.png")
    text = benchmark_report(lines, rows, plot, out_dir, inline=False)
    (out_dir / "report.md").write_text(text)
    create_table_artifact(lines, key="benchmark-table", description="Every method on every "
                          "target: UA / IRA / CRA, own content kept, costs")
    create_markdown_artifact(benchmark_report(lines, rows, plot, out_dir, inline=True),
                             key="benchmark-report", description="The benchmark table, the UA "
                             "against retention plane, each method's worst target")
    return {"table": lines, "report": str(out_dir / "report.md")}


def saeuron_variants(variants: list[str], own: SAeUron, paper: ScoreConfig, layout: RunLayout,
                     harvested: dict, scored: dict, grid: str, sampling: SamplingConfig,
                     folder: Path, fp: str) -> tuple[dict[str, SAeUron], dict[str, float]]:
    """The SAeUron variants benchmarked beside the run's own (name -> method), and the seconds
    each took to choose the features of every concept: the run's scoring, or for the paper's
    recipe (`paper`: its score options) its own, kept under `folder` for `fp`."""
    methods, seconds = {}, {"SAeUron": scored["seconds"]}
    if "paper" in variants:
        features, seconds["SAeUron (paper)"] = paper_features(
            paper, layout, harvested, grid, sampling, folder / "saeuron-paper",
            fingerprint(fp, paper.model_dump(mode="json")))
        methods["SAeUron (paper)"] = own.model_copy(update={"label": "SAeUron (paper)",
                                                           "features": features})
    if "reference-sign" in variants:
        methods["SAeUron (reference sign)"] = own.model_copy(update={
            "label": "SAeUron (reference sign)", "error_sign": -1})
        seconds["SAeUron (reference sign)"] = scored["seconds"]
    return methods, seconds


def paper_features(score: ScoreConfig, layout: RunLayout, harvested: dict, grid: str,
                   sampling: SamplingConfig, folder: Path, fp: str) -> tuple[dict[str, str], float]:
    """The feature stores of SAeUron's paper variant (the run's SAEs scored with the paper's
    options, its object sweep included) under `folder`, and the seconds it took; kept for `fp`."""
    done = UnitResults(folder, fp).done(["scored"])
    if done:
        return done["scored"]["features"], done["scored"]["seconds"]
    start = time.time()
    urls = {hook: str(folder / "features" / f"{hook}.zarr") for hook in score.hooks.by_hook()}
    for hook, domains in score.hooks.by_hook().items():
        score_features(harvested["outputs"]["score"], str(layout.sae_dir), urls[hook], score, hook,
                       domains, model=harvested["metrics"]["model"], sampling=sampling, grid=grid)
    features = {d: urls[hook] for hook, domains in score.hooks.by_hook().items() for d in domains}
    UnitResults(folder, fp).add("scored", {"features": features, "seconds": time.time() - start})
    return features, time.time() - start


def rows_of(results: dict[str, UnitResults], evaluation: UnitResults, names: list[str],
            own: SAeUron, seconds: dict[str, float]) -> dict[str, list[dict]]:
    """Each method's rows for the targets `names`, SAeUron's from the run's own evaluation; a
    SAeUron variant's time to unlearn one concept is its scoring's share (`seconds`)."""
    rows = {"SAeUron": [r | {"added_bytes": own.stored_bytes(r["domain"])}
                        for r in evaluation.done(names).values()]}
    rows |= {name: list(r.done(names).values()) for name, r in results.items()}
    singles = len([n for n in names if "+" not in n])
    return {name: [r | {"unlearn_seconds": seconds[name] / singles} if name in seconds else r
                   for r in mine] for name, mine in rows.items()}


def sampling_costs(methods: dict, rows: dict[str, list[dict]], folder: Path, model: str,
                   grid: str, sampling: SamplingConfig, seeds: list[int], pictures: int,
                   threads: int, processes: int, fp: str) -> dict:
    """Each method's sampling cost, and plain sampling's ('plain'): seconds and peak memory of
    sampling the first `pictures` of the evaluation grid, edited for the method's first style
    target at the value chosen there (probe_costs); kept for `fp`."""
    kept = {name: UnitResults(folder / slug(name), fp) for name in ["plain", *rows]}
    costs = {name: done["cost"] for name, r in kept.items() if (done := r.done(["cost"]))}
    missing = kept.keys() - costs.keys()
    if not missing:
        return costs
    concepts = world(grid).grid()
    table = concepts.table(seeds[:1], templates=1).iloc[:pictures]
    jobs = {}
    for name in missing:
        row = next(r for r in rows.get(name, rows["SAeUron"])
                   if r["domain"] == "style" and "+" not in r["target"])
        jobs[name] = (methods.get(name), model, concepts, "style", [row["target"]],
                      row.get("value", 0.0), str(folder / slug(name) / row["target"] / "work"),
                      list(table.prompt), list(table.seed), sampling, threads)
    for name, cost in probe_costs(jobs, processes).items():
        kept[name].add("cost", cost)
        costs[name] = cost
    return costs
