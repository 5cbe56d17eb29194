"""The evaluation's report: per-target rows, the summary per domain with 95% intervals, the
markdown report with its pictures, and the tables the Prefect UI shows."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image

from saeuron.metrics import DISTANCES, METRICS, describe, interval

REPORT_BUDGET = 1_200_000
"""Characters of pictures inlined in the report artifact: Prefect drops an event over 1.5 MB
(PREFECT_SERVER_EVENTS_MAXIMUM_SIZE_BYTES), and the artifact's event carries the report."""
JPEG_QUALITIES = (80, 65, 50, 35)
SHOWN = METRICS + ("FD_own", "FD_rest")
"""The figures of the summary, in order."""
BASES = ("FD_own_base", "FD_rest_base")
"""The unedited pictures' distances, shown beside FD_own and FD_rest."""
LOWER_IS_BETTER = set(DISTANCES)
COLUMNS = ("target", "domain") + METRICS + DISTANCES + ("instead", "scale", "style_acc",
                                                        "object_acc", "image", "before_after")
"""The per-target table's columns, in order: metrics first, paths last."""
REPORT_COLUMNS = ("target",) + METRICS + ("FD_own", "FD_own_base", "FD_rest")
"""The report's per-target table (narrower: what each target's pictures were judged as follows
in its own section)."""

EXPLAINED = """\
- **UA**: share of the targets' pictures not judged as the target; **IRA**: the domain's accuracy
  on its other concepts; **CRA**: the other domain's accuracy where the prompt has none of the
  target's domain (style targets: the unstyled row; object targets: every styled picture), as
  SAeUron's evaluation counts it; **CRA_grid**: the other domain's accuracy on every picture.
- **kept** (own content kept): the other domain's accuracy on the targets' own pictures (a style's
  row keeps its objects, an object's column its styles). UA alone cannot tell removing a concept
  from destroying the picture: a row of noise has UA 1.0 and kept near 0.
- **FD_own**: Frechet distance, in the judge's feature space, of the targets' own edited pictures
  to what the prompt without the target draws (styles: the unedited unstyled row; objects: the
  same styles' other objects); **FD_own_base** the same before the edit. Noise raises it above
  FD_own_base; a clean removal brings it down.
- **FD_rest**: Frechet distance of every other picture of the grid (what the edit should leave
  alone) to renders of the same cells; **FD_rest_base**, the unedited grid's, is its floor.
- Intervals: 95% percentile bootstrap over pictures (per target, resampled independently).
"""


def summarise(rows: list[dict]) -> list[dict]:
    """Mean, 95% interval and worst target of each figure, per domain; sets of concepts on their
    own line. Rows without counts (the baseline) are left out."""
    out = []
    for domain, multi in (("style", False), ("object", False), ("style", True), ("object", True)):
        mine = [r for r in rows if r["domain"] == domain and ("+" in r["target"]) == multi]
        if not mine:
            continue
        line = {"targets": domain + (" sets" if multi else ""), "n": len(mine)}
        for m in SHOWN + BASES:
            line[m] = round(float(np.nanmean([r[m] for r in mine])), 4)
            if m in METRICS:
                low, high = interval([r["counts"][m] for r in mine])
                line[f"{m}_95"] = f"{low:.2f}-{high:.2f}"
        for m in SHOWN:
            known = [r for r in mine if r[m] == r[m]] or mine  # NaN: not measurable
            worst = (max if m in LOWER_IS_BETTER else min)(known, key=lambda r: r[m])
            line[f"worst_{m}"] = f"{worst['target']} {worst[m]:.3f}" if len(mine) > 1 else "-"
            if m == "kept":
                line["worst_kept_instead"] = (f"{worst['target']}: "
                                              f"{describe(worst['instead'], top=2)}")
        out.append(line)
    return out


def summary_table(summary: list[dict]) -> list[str]:
    """The summary as one markdown table, a column per group of targets (it fits a screen):
    each figure's mean with its interval, then each figure's worst target."""
    lines = ["| | " + " | ".join(f"{s['targets']} ({s['n']})" for s in summary) + " |",
             "|---|" + "---|" * len(summary)]
    for m in SHOWN:
        cells = [f"{s[m]:.3f} ({s[m + '_95']})" if m in METRICS
                 else f"{s[m]:.1f} ({'before' if m == 'FD_own' else 'floor'} {s[m + '_base']:.1f})"
                 for s in summary]
        lines.append(f"| **{m}** | " + " | ".join(cells) + " |")
    lines += [f"| worst {m} | " + " | ".join(s[f"worst_{m}"] for s in summary) + " |"
              for m in SHOWN]
    lines.append("| worst kept, judged as | " + " | ".join(s["worst_kept_instead"] for s in summary)
                 + " |")
    return lines


def table_rows(rows: list[dict]) -> list[dict]:
    """Per-target rows for a table: metrics first, rounded to 3 places, paths last."""
    columns = [k for k in COLUMNS if any(k in r for r in rows)]
    out = []
    for r in rows:
        shown = {k: r.get(k) for k in columns}  # the same keys in every row: the UI's columns
        for k, v in shown.items():
            if isinstance(v, float):
                shown[k] = round(v, 3) if v == v else None  # NaN: not measurable
        if shown.get("instead") is not None:
            shown["instead"] = describe(shown["instead"])
        out.append(shown)
    return out


def report(rows: list[dict], summary: list[dict], out_dir: Path, inline: bool,
           budget: int = REPORT_BUDGET) -> str:
    """The markdown report; `inline` embeds the pictures as data URIs (the Prefect UI cannot
    reach files) at the best JPEG quality whose total fits `budget`: every before / after
    picture and grid, or the before / after pictures only, or none; otherwise it links them by
    path relative to `out_dir` (report.md on disk)."""
    lines = ["# Unlearning report", "", EXPLAINED, *summary_table(summary), ""]
    table = table_rows(rows)
    columns = [k for k in REPORT_COLUMNS if any(t.get(k) is not None for t in table)]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join("-" if t.get(k) is None else str(t[k]) for k in columns) + " |"
              for t in table]
    lines.append("")
    kinds = (("before / after", "before_after"), ("grid", "image"))
    pictures = [(r["target"], kind, Path(r[key])) for r in rows for kind, key in kinds if key in r]
    uris = inline_images([p for _, _, p in pictures], budget) if inline else None
    if inline and uris is None:  # the before / after pictures only, the grids linked
        pictures = [p for p in pictures if p[1] == kinds[0][0]]
        uris = inline_images([p for _, _, p in pictures], budget) if pictures else None
        lines += [f"The full grids are linked from {out_dir / 'report.md'}"
                  + (" (all pictures together do not fit an artifact)." if uris else
                     "; no picture fits an artifact."), ""]
        if uris is None:
            return "\n".join(lines)
    by_target: dict[str, list[str]] = {}
    for i, (target, kind, path) in enumerate(pictures):
        image = (f'<img alt="{target} {kind}" width="{Image.open(path).width}" src="{uris[i]}">'
                 if inline else f"![{target} {kind}]({path.relative_to(out_dir)})")
        by_target.setdefault(target, []).append(image)
    for r in rows:
        lines += [f"### {r['target']}", ""]
        if "instead" in r:
            lines += [f"Its pictures judged as: {describe(r['instead'], top=10)}.", ""]
        lines += [" ".join(by_target.get(r["target"], [])), ""]
    return "\n".join(lines)


def write_report(rows: list[dict], summary: list[dict], out_dir: Path) -> Path:
    """<out_dir>/report.md, its pictures linked (they lie beside it)."""
    path = Path(out_dir) / "report.md"
    path.write_text(report(rows, summary, path.parent, inline=False))
    return path


def inline_images(paths: list[Path], budget: int) -> list[str] | None:
    """Data URIs of the pictures at the best of JPEG_QUALITIES whose total length fits `budget`."""
    for quality in JPEG_QUALITIES:
        uris = [inline_image(path, quality=quality) for path in paths]
        if sum(map(len, uris)) <= budget:
            return uris
    return None


def inline_image(path: Path, shrink: int = 3, quality: int = 80) -> str:
    """A JPEG data URI of a picture at its pixels' own size (the PNG file is upscaled `shrink`
    times; the browser scales it back up): generated pictures are noisy, and as PNGs 23 grids
    would weigh 10 MB, too much for the UI; as JPEGs they stay near 1 MB."""
    with Image.open(path) as image:
        small = image.convert("RGB").resize((image.width // shrink, image.height // shrink),
                                            Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def run_summary_text(result: dict) -> str:
    """The one-screen summary of a pipeline run (the pipeline flow's result)."""
    lines = ["", "| stage | state | seconds when run |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['state']} | {s['seconds_when_run']} |" for s in result["stages"]]
    lines += ["", *summary_table(result["summary"]), "",
              f"report: {result['report']} (image grids beside it; also the 'unlearning-report' "
              f"artifact in the Prefect UI)", f"pipeline wall time: {result['seconds']} s"]
    return "\n".join(lines)
