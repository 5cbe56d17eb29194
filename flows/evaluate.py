"""The evaluate flow: unlearn each target in turn, judge the grid, report UA / IRA / CRA."""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from saeuron.harvest import HarvestConfig
from saeuron.unlearning import EvaluateConfig
from storage.features import read_features
from tasks.evaluate import unlearn_target

METRICS = ("UA", "IRA", "CRA")


def summarise(rows: list[dict]) -> list[dict]:
    """Average and worst target of each metric, per domain (single-concept targets)."""
    out = []
    for domain in ("style", "object"):
        mine = [r for r in rows if r["domain"] == domain and "+" not in r["target"]]
        if not mine:
            continue
        line = {"domain": domain, "targets": len(mine)}
        for m in METRICS:
            line[m] = round(sum(r[m] for r in mine) / len(mine), 4)
            worst = min(mine, key=lambda r: r[m])
            line[f"worst_{m}"] = f"{worst['target']} {worst[m]:.3f}"
        out.append(line)
    return out


def report(rows: list[dict], summary: list[dict], out_dir: Path) -> str:
    lines = ["# Unlearning report", "", "| domain | targets | UA | IRA | CRA |", "|---|---|---|---|---|"]
    lines += [f"| {s['domain']} | {s['targets']} | {s['UA']:.3f} | {s['IRA']:.3f} | {s['CRA']:.3f} |"
              for s in summary]
    lines += ["", "| target | UA | IRA | CRA | style acc | object acc | grid |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = " | ".join(f"{r[m]:.3f}" if m in r else "-" for m in METRICS)
        image = Path(r["image"]).relative_to(out_dir)
        lines.append(f"| {r['target']} | {cells} | {r['style_acc']:.3f} | {r['object_acc']:.3f} "
                     f"| ![{r['target']}]({image}) |")
    return "\n".join(lines) + "\n"


@flow(name="evaluate")
def evaluate(config: EvaluateConfig = EvaluateConfig(), sae_dir: str = "runs/default/sae",
             features_url: str = "runs/default/features/up_blocks.1.attentions.1.zarr",
             out_dir: str = "runs/default/eval") -> list[dict]:
    """Unlearn every target of `config` and measure it against the unedited baseline."""
    _, _, domains = read_features(features_url)
    targets = config.targets(domains)
    model = HarvestConfig(model=config.model).model_path()
    common = dict(model=model, sae_dir=sae_dir, features_url=features_url, hook=config.hook,
                  seeds=config.seeds(), num_steps=config.num_steps, guidance=config.guidance,
                  out_dir=out_dir, error_sign=config.error_sign)
    rows = [unlearn_target(domain=None, concepts=[], name="baseline", **common)]
    rows += [unlearn_target(domain=d, concepts=c, name=n, **common) for d, c, n in targets]
    summary = summarise(rows)
    create_table_artifact(rows, key="unlearning-targets", description="UA / IRA / CRA per target")
    if summary:
        create_table_artifact(summary, key="unlearning-summary", description="Averages per domain")
    text = report(rows, summary, Path(out_dir))
    (Path(out_dir) / "report.md").write_text(text)
    create_markdown_artifact(text, key="unlearning-report", description="Unlearning report")
    return rows
