"""The evaluate flow: unlearn each target in turn, judge the grid, report UA / IRA / CRA."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

from PIL import Image
from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)

from flows.stage import cached, code_fingerprint, layout_of
from saeuron.run import RunConfig
from saeuron.threads import torch_threads
from saeuron.unlearning import METRICS, EvaluateConfig
from storage.features import DOMAINS, read_features
from storage.run import fingerprint
from tasks.evaluate import UNEDITED, unedited_target, unlearn_target



def summarise(rows: list[dict]) -> list[dict]:
    """Average and worst target of each metric, per domain; sets of concepts on their own line."""
    out = []
    for domain, multi in (("style", False), ("object", False), ("style", True), ("object", True)):
        mine = [r for r in rows if r["domain"] == domain and ("+" in r["target"]) == multi]
        if not mine:
            continue
        line = {"domain": domain + (" sets" if multi else ""), "targets": len(mine)}
        for m in METRICS:
            line[m] = round(sum(r[m] for r in mine) / len(mine), 4)
            worst = min(mine, key=lambda r: r[m])
            line[f"worst_{m}"] = f"{worst['target']} {worst[m]:.3f}"
        out.append(line)
    return out


REPORT_BUDGET = 1_200_000
"""Characters of pictures inlined in the report artifact: Prefect drops an event over 1.5 MB
(PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES), and the artifact's event carries the report."""
JPEG_QUALITIES = (80, 65, 50, 35)


def summary_table(summary: list[dict]) -> list[str]:
    """The summary as markdown table lines: average and worst target of each metric."""
    lines = ["| targets | n | " + " | ".join(METRICS) + " | "
             + " | ".join(f"worst {m}" for m in METRICS) + " |",
             "|---|---|" + "---|" * 2 * len(METRICS)]
    lines += [f"| {s['domain']} | {s['targets']} | " + " | ".join(f"{s[m]:.3f}" for m in METRICS)
              + " | " + " | ".join(s[f"worst_{m}"] for m in METRICS) + " |" for s in summary]
    return lines


def report(rows: list[dict], summary: list[dict], out_dir: Path, inline: bool,
           budget: int = REPORT_BUDGET) -> str:
    """The markdown report; `inline` embeds the grids as data URIs (the Prefect UI cannot reach
    files) at the best JPEG quality whose total fits `budget`, or leaves them out if none does;
    otherwise it links them by path relative to `out_dir` (report.md on disk)."""
    lines = ["# Unlearning report", "",
             "Rows of each grid are styles (last row unstyled), columns objects. CRA: the other "
             "domain's accuracy where the prompt has none of the target's domain (style targets: "
             "the unstyled row; object targets: every styled picture), as SAeUron's evaluation "
             "counts it; CRA_grid: on every picture.", ""]
    lines += summary_table(summary)
    lines += ["", "| target | " + " | ".join(METRICS) + " | style acc | object acc | set scale |",
              "|---|" + "---|" * (len(METRICS) + 3)]
    for r in rows:
        cells = " | ".join(f"{r[m]:.3f}" if m in r else "-" for m in METRICS)
        lines.append(f"| {r['target']} | {cells} | {r['style_acc']:.3f} | {r['object_acc']:.3f} "
                     f"| {r.get('scale', '-')} |")
    lines.append("")
    paths = [Path(r["image"]) for r in rows]
    uris = inline_images(paths, budget) if inline else None
    if inline and uris is None:
        lines += [f"The {len(rows)} image grids do not fit an artifact; they are linked from "
                  f"{out_dir / 'report.md'}.", ""]
        return "\n".join(lines)
    for i, (r, path) in enumerate(zip(rows, paths)):
        image = (f'<img alt="{r["target"]}" width="{Image.open(path).width}" src="{uris[i]}">'
                 if inline else f"![{r['target']}]({path.relative_to(out_dir)})")
        lines += [f"### {r['target']}", "", image, ""]
    return "\n".join(lines)


def inline_images(paths: list[Path], budget: int) -> list[str] | None:
    """Data URIs of the grids at the best of JPEG_QUALITIES whose total length fits `budget`."""
    for quality in JPEG_QUALITIES:
        uris = [inline_image(path, quality=quality) for path in paths]
        if sum(map(len, uris)) <= budget:
            return uris
    return None


def inline_image(path: Path, shrink: int = 3, quality: int = 80) -> str:
    """A JPEG data URI of the grid at its pixels' own size (the PNG file is upscaled `shrink`
    times; the browser scales it back up): generated pictures are noisy, and as PNGs 23 grids
    would weigh 10 MB, too much for the UI; as JPEGs they stay near 1 MB."""
    with Image.open(path) as image:
        small = image.convert("RGB").resize((image.width // shrink, image.height // shrink),
                                            Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


@flow(name="evaluate")
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
                     scored["fingerprint"])
    if hit := cached(layout, "evaluate", fp, force):
        return hit
    out_dir = layout.eval_dir
    layout.begin("evaluate", fp, [str(out_dir)], force)
    common = dict(config=config, sae_dir=str(layout.sae_dir), out_dir=str(out_dir))
    progress = create_progress_artifact(0.0, key="evaluate-progress",
                                        description="Unlearning targets evaluated")
    names = ["baseline"] + [name for _, _, name in targets]
    rows: dict[str, dict] = {}
    for name in names:
        done = out_dir / name / "metrics.json"
        before = json.loads(done.read_text()) if done.is_file() else {}
        if before.get("fingerprint") == fp:
            rows[name] = before["row"]  # done before an interruption
            logger.info(f"{name}: done before, {rows[name]}")
    unedited = out_dir / "baseline" / UNEDITED
    if not unedited.is_file():
        rows.pop("baseline", None)

    def finished(name: str, row: dict) -> None:
        rows[name] = row
        (out_dir / name / "metrics.json").write_text(json.dumps({"fingerprint": fp, "row": row}))
        update_progress_artifact(progress, 100.0 * len(rows) / len(names))

    update_progress_artifact(progress, 100.0 * len(rows) / len(names))
    with torch_threads(config.threads), ThreadPoolTaskRunner(max_workers=config.workers) as runner:
        if "baseline" not in rows:  # first: the targets take the pictures they do not touch
            finished("baseline", runner.submit(unedited_target, parameters=dict(
                hooks=sorted(set(hooks.values())), **common)).result())
        futures = {runner.submit(unlearn_target, parameters=dict(
            domain=domain, concepts=concepts, name=name, features_url=features[domain],
            hook=hooks[domain], unedited=str(unedited) if config.reuse_unedited else None,
            **common)): name
            for domain, concepts, name in targets if name not in rows}
        for future in as_completed(list(futures)):
            finished(futures[future], future.result())
    rows = [rows[name] for name in names]
    summary = summarise(rows)
    create_table_artifact(rows, key="unlearning-targets", description="UA / IRA / CRA per target")
    if summary:
        create_table_artifact(summary, key="unlearning-summary", description="Averages per domain")
    (out_dir / "report.md").write_text(report(rows, summary, out_dir, inline=False))
    create_markdown_artifact(report(rows, summary, out_dir, inline=True), key="unlearning-report",
                             description="Unlearning report with before/after image grids")
    metrics = {"summary": summary, "report": str(out_dir / "report.md")}
    return layout.finish("evaluate", fp, {"eval": str(out_dir)}, metrics, time.time() - start,
                         upstream={"score": scored["fingerprint"]})


def main(argv: list[str] | None = None) -> None:
    from flows.cli import run_stage_cli

    run_stage_cli("evaluate", evaluate, EvaluateConfig, argv)


if __name__ == "__main__":
    main()
