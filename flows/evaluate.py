"""The evaluate flow: unlearn each target in turn, judge the grid, report UA / IRA / CRA."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)

from flows.stage import cached, code_fingerprint, holds_root, layout_of
from saeuron.run import RunConfig
from saeuron.threads import torch_threads
from saeuron.report import report, summarise, table_rows, write_report
from saeuron.unlearning import EvaluateConfig
from storage.features import DOMAINS, read_features
from storage.layout import UnitResults, fingerprint, made
from tasks.evaluate import FEATURES, UNEDITED, unedited_target, unlearn_target


@flow(name="evaluate")
@holds_root
def evaluate(config: EvaluateConfig = EvaluateConfig(), run: RunConfig = RunConfig(),
             force: bool = False) -> dict:
    """Unlearn every target of `config` and measure it against the unedited baseline (sampled
    first: each target samples only the pictures its edit touches)."""
    start = time.time()
    logger = get_run_logger()
    layout = layout_of(run)
    scored = layout.upstream("score", "evaluate")
    features = {d: scored["outputs"][d] for d in DOMAINS}
    stores = {d: read_features(url) for d, url in features.items()}
    domains = {d: stores[d][2][d] for d in DOMAINS}
    hooks = {d: stores[d][0]["hook"] for d in DOMAINS}
    targets = config.targets(domains, config.concept_grid())
    fp = fingerprint("evaluate", code_fingerprint("evaluate"),
                     config.model_dump(mode="json", exclude={"device"}),
                     made(scored))
    if hit := cached(layout, "evaluate", fp, force):
        return hit
    out_dir = layout.eval_dir
    layout.begin("evaluate", fp, [str(out_dir)], force)
    common = dict(config=config, sae_dir=str(layout.sae_dir), out_dir=str(out_dir))
    progress = create_progress_artifact(0.0, key="evaluate-progress",
                                        description="Unlearning targets evaluated")
    names = ["baseline"] + [name for _, _, name in targets]
    results = UnitResults(out_dir, fp)
    rows = results.done(names)  # finished before an interruption
    for name, row in rows.items():
        logger.info(f"{name}: done before, {row}")
    if not all((out_dir / "baseline" / f).is_file() for f in (UNEDITED, FEATURES)):
        rows.pop("baseline", None)

    def finished(name: str, row: dict) -> None:
        rows[name] = row
        results.add(name, row)
        update_progress_artifact(progress, 100.0 * len(rows) / len(names))

    update_progress_artifact(progress, 100.0 * len(rows) / len(names))
    with torch_threads(config.threads), ThreadPoolTaskRunner(max_workers=config.workers) as runner:
        if "baseline" not in rows:  # first: the targets take the pictures they do not touch
            finished("baseline", runner.submit(unedited_target, parameters=dict(
                hooks=sorted(set(hooks.values())), **common)).result())
        futures = {runner.submit(unlearn_target, parameters=dict(
            domain=domain, concepts=concepts, name=name, features_url=features[domain],
            hook=hooks[domain], **common)): name
            for domain, concepts, name in targets if name not in rows}
        for future in as_completed(list(futures)):
            finished(futures[future], future.result())
    rows = [rows[name] for name in names]
    summary = summarise(rows)
    create_table_artifact(table_rows(rows), key="unlearning-targets",
                          description="UA / IRA / CRA, own content kept and Frechet distances "
                          "per target")
    if summary:
        create_table_artifact(summary, key="unlearning-summary",
                              description="Means per domain, 95% intervals, worst targets")
    written = write_report(rows, summary, out_dir)
    create_markdown_artifact(report(rows, summary, out_dir, inline=True), key="unlearning-report",
                             description="Unlearning report with before/after image grids")
    metrics = {"summary": summary, "report": str(written)}
    return layout.finish("evaluate", fp, {"eval": str(out_dir)}, metrics, time.time() - start,
                         upstream={"score": scored["fingerprint"]})


def main(argv: list[str] | None = None) -> None:
    from flows.cli import run_stage_cli

    run_stage_cli("evaluate", evaluate, EvaluateConfig, argv)


if __name__ == "__main__":
    main()
