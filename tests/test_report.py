"""The report: pictures within what Prefect publishes, tables a person reads."""

from pathlib import Path

import numpy as np
from PIL import Image

from saeuron.report import inline_image, report, summarise, summary_table, table_rows


def _rows(tmp_path, n=2):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        path = tmp_path / f"t{i}" / "grid.png"
        path.parent.mkdir()
        noise = rng.integers(0, 256, (96, 96, 3), np.uint8).repeat(3, 0).repeat(3, 1)
        Image.fromarray(noise).save(path)
        rows.append({"target": f"t{i}", "style_acc": 1.0, "object_acc": 1.0, "image": str(path)})
    return rows


def test_report_inlines_grids_within_the_budget(tmp_path):
    rows = _rows(tmp_path)
    best = sum(len(inline_image(Path(r["image"]))) for r in rows)
    roomy = report(rows, [], tmp_path, inline=True, budget=10 * best)
    assert roomy.count("data:image/jpeg;base64,") == 2 and len(roomy) > best
    tight = report(rows, [], tmp_path, inline=True, budget=best - 1)
    assert tight.count("data:image/jpeg;base64,") == 2, "a lower JPEG quality still fits"
    assert len(tight) < len(roomy)
    none = report(rows, [], tmp_path, inline=True, budget=100)
    assert "data:image" not in none and str(tmp_path / "report.md") in none
    for r in rows:
        r["before_after"] = str(Path(r["image"]).with_name("before_after.png"))
        Image.open(r["image"]).crop((0, 0, 288, 96)).save(r["before_after"])
    small = sum(len(inline_image(Path(r["before_after"]))) for r in rows)
    strips = report(rows, [], tmp_path, inline=True, budget=small)
    assert strips.count("data:image/jpeg;base64,") == 2 and 'alt="t0 before / after"' in strips, \
        "the before / after pictures when the grids do not fit too"
    linked = report(rows, [], tmp_path, inline=False)
    assert "![t0 grid](t0/grid.png)" in linked


def _target(name, ua_hits, n=33, fd=1.0):
    counts = {"UA": [ua_hits, n], "IRA": [n, n], "CRA": [n, n], "kept": [n // 2, n],
              "CRA_grid": [n, n]}
    return {"target": name, "domain": "style", **{m: h / k for m, (h, k) in counts.items()},
            "FD_own": fd, "FD_own_base": 2.0, "FD_rest": 0.5, "FD_rest_base": 0.4, "instead": {"none": ua_hits},
            "counts": counts, "style_acc": 0.9, "object_acc": 0.9, "image": "x/grid.png"}


def test_summary_gives_means_intervals_and_the_worst_targets():
    rows = [_target("neon", 33), _target("sketch", 30, fd=9.0)]
    line, = summarise(rows)
    assert line["n"] == 2 and line["UA"] == round((1 + 30 / 33) / 2, 4)
    low, high = map(float, line["UA_95"].split("-"))
    assert low < line["UA"] <= high <= 1.0, "a 95% interval around the mean"
    assert line["IRA_95"] == "1.00-1.00", "nothing varies where every picture passed"
    assert line["worst_UA"].startswith("sketch") and line["worst_FD_own"] == "sketch 9.000"
    table = summary_table([line])
    assert table[0] == "| | style (2) |" and any(t.startswith("| **kept** | 0.485 (") for t in table)


def test_target_table_puts_rounded_metrics_first_and_paths_last():
    baseline = {"target": "baseline", "domain": "-", "FD_rest": 1.4, "image": "b/grid.png"}
    base, row = table_rows([baseline, {**_target("sketch", 30), "UA": 0.09090909090909091}])
    keys = list(row)
    assert keys[:7] == ["target", "domain", "UA", "IRA", "CRA", "kept", "CRA_grid"]
    assert keys[-1] == "image" and "counts" not in row
    assert row["UA"] == 0.091 and row["instead"] == "none 30"
    assert list(base) == keys and base["UA"] is None, "every row has every column, for the UI"
