"""The report artifact keeps its pictures within what Prefect publishes."""

from pathlib import Path

import numpy as np
from PIL import Image

from flows.evaluate import inline_image, report


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
    linked = report(rows, [], tmp_path, inline=False)
    assert "![t0](t0/grid.png)" in linked
