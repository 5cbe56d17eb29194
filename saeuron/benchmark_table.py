"""The benchmark's table, laid out as UnlearnCanvas's, its UA against retention plane, and its
report (saeuron.benchmark computes the rows)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from saeuron.metrics import describe
from saeuron.report import inline_image, summarise

COLUMNS = ("method", "style UA", "style IRA", "style CRA", "object UA", "object IRA",
           "object CRA", "style kept", "object kept", "set UA", "set IRA", "set kept",
           "FD_rest", "unlearn s", "sampling x", "peak MB", "storage MB")
"""The benchmark table's columns (UnlearnCanvas's layout: per method, each domain's UA / IRA /
CRA, then what the pictures keep, then the costs)."""


def table_row(name: str, rows: list[dict], cost: dict) -> dict:
    """A method's line of the table from its per-target rows (saeuron.report.summarise: means
    with 95% intervals) and its cost probe (seconds, peak_mb, and plain sampling's
    plain_seconds)."""
    summary = {s["targets"]: s for s in summarise(rows)}
    out: dict = {"method": name}
    for label, group, metrics in (("style", "style", ("UA", "IRA", "CRA", "kept")),
                                  ("object", "object", ("UA", "IRA", "CRA", "kept")),
                                  ("set", "style sets", ("UA", "IRA", "kept"))):
        s = summary.get(group)
        for m in metrics:
            out[f"{label} {m}"] = f"{s[m]:.3f} ({s[m + '_95']})" if s else "-"
    singles = [r for r in rows if "+" not in r["target"]]
    out["FD_rest"] = round(float(np.nanmean([r["FD_rest"] for r in rows])), 2)
    out["unlearn s"] = round(float(np.mean([r.get("unlearn_seconds", np.nan) for r in singles])), 1)
    out["sampling x"] = round(cost["seconds"] / cost["plain_seconds"], 2)
    out["peak MB"] = f"{cost['peak_mb']:.0f} ({cost['peak_mb'] - cost['plain_peak_mb']:+.0f})"
    out["storage MB"] = round(max(r.get("added_bytes", 0) for r in rows) / 2**20, 2)
    return out


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f")


def _mean(line: dict, column: str) -> float | None:
    """A table cell's mean ('0.960 (0.94-0.98)' -> 0.96), None where there is none."""
    try:
        return float(str(line.get(column, "-")).split()[0])
    except ValueError:
        return None


def _retention(line: dict, domain: str) -> float | None:
    """The mean of a domain's IRA and CRA cells, None where either is missing."""
    ira, cra = _mean(line, f"{domain} IRA"), _mean(line, f"{domain} CRA")
    return None if ira is None or cra is None else (ira + cra) / 2


def plane(lines: list[dict], path: Path, side: int = 360) -> Path:
    """The methods on two UA (x) planes, as a PNG: against the retention of the rest (the mean
    of IRA and CRA) and against their own content kept; styles as circles, objects as squares,
    a colour per method."""
    pad, legend = 52, 18 * ((len(lines) + 1) // 2) + 30
    img = Image.new("RGB", (2 * side, side + legend), "white")
    draw = ImageDraw.Draw(img)
    span = side - 2 * pad
    panels = (("retention: (IRA + CRA) / 2", _retention),
              ("own content kept", lambda ln, d: _mean(ln, f"{d} kept")))
    for p, (title, y_of) in enumerate(panels):
        left = p * side + pad
        draw.rectangle([left, pad, left + span, pad + span], outline="black")
        for tick in (0.0, 0.5, 1.0):
            draw.text((left + tick * span - 8, pad + span + 6), f"{tick:.1f}", fill="black")
            draw.text((left - 26, pad + span - tick * span - 6), f"{tick:.1f}", fill="black")
        draw.text((left + span // 2 - 8, pad + span + 22), "UA", fill="black")
        draw.text((left, pad - 22), title, fill="black")
        for i, line in enumerate(lines):
            for domain, square in (("style", False), ("object", True)):
                ua, y = _mean(line, f"{domain} UA"), y_of(line, domain)
                if ua is None or y is None:
                    continue
                x, y = left + ua * span, pad + span - y * span
                (draw.rectangle if square else draw.ellipse)([x - 5, y - 5, x + 5, y + 5],
                                                             fill=COLOURS[i % len(COLOURS)])
    for i, line in enumerate(lines):
        x, y = pad + (i % 2) * side, side + 8 + 18 * (i // 2)
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=COLOURS[i % len(COLOURS)])
        draw.text((x + 16, y), line["method"], fill="black")
    draw.text((pad, side + legend - 20), "circles: styles, squares: objects", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def benchmark_report(lines: list[dict], rows: dict[str, list[dict]], plot: Path, out_dir: Path,
                     inline: bool) -> str:
    """The benchmark's markdown: the table, the plane, and per method its worst target by own
    content kept with its before / after picture (inlined, or linked from `out_dir`)."""
    text = ["# Benchmark: SAeUron and the methods it is compared with", "",
            "Every method on every target of the run, judged as the evaluation judges SAeUron "
            "(means over targets, 95% bootstrap intervals over pictures). unlearn s: seconds to "
            "unlearn one concept, choosing the hyperparameter on validation pictures included "
            "(SAeUron: its scoring and sweep per concept; its SAEs are shared by every concept "
            "and not counted; ESD-x: its training, also where a resumed run reused it); "
            "sampling x and peak MB: sampling the same pictures with the "
            "method, against plain sampling, each in a fresh process; storage MB: what the "
            "method adds to the model.", "",
            "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    text += ["| " + " | ".join(str(line.get(c, "-")) for c in COLUMNS) + " |" for line in lines]
    image = (f'<img alt="UA against retention" src="{inline_image(plot, shrink=1)}">' if inline
             else f"![UA against retention]({os.path.relpath(plot, out_dir)})")
    text += ["", image, "", "## Each method's worst target (own content kept)", ""]
    for name, mine in rows.items():
        worst = min((r for r in mine if r.get("kept") == r.get("kept")), key=lambda r: r["kept"],
                    default=None)
        if worst is None or "before_after" not in worst:
            continue
        path = Path(worst["before_after"])
        picture = (f'<img alt="{name} {worst["target"]}" src="{inline_image(path, quality=65)}">'
                   if inline else f"![{name} {worst['target']}]({os.path.relpath(path, out_dir)})")
        text += [f"**{name}**, {worst['target']}: kept {worst['kept']:.3f}, UA "
                 f"{worst['UA']:.3f}, judged as {describe(worst['instead'], top=3)}", "",
                 picture, ""]
    return "\n".join(text)
