"""Activation stores for tests: real Zarr stores on disk with synthetic contents."""

import numpy as np
import pandas as pd

from storage.activations import ActivationStore, StoreSpec

HOOK = "up_blocks.1.attentions.1"


def synthetic_store(url: str, n: int = 12, t: int = 3, p: int = 4, f: int = 8,
                    spc: int = 4, ids: bool = False, seed: int = 0,
                    objects: tuple[str, ...] = ("circle", "star"),
                    styles: tuple[str, ...] = ("none", "ocean", "pop")) -> ActivationStore:
    """A real Zarr store whose vectors are unique ids (feature 0), or sparse mixtures of a
    dictionary; sample i has object objects[i % len] and style styles[(i // 2) % len]."""
    table = pd.DataFrame({"prompt": [f"p{i}" for i in range(n)],
                          "object": [objects[i % len(objects)] for i in range(n)],
                          "style": [styles[(i // 2) % len(styles)] for i in range(n)],
                          "template": [0] * n, "seed": list(range(n))})
    spec = StoreSpec(hooks={HOOK: (p, f)}, timesteps=list(range(900, 900 - 100 * t, -100)),
                     samples_per_chunk=spc, dtype="float32")
    store = ActivationStore.create(url, spec, table, fingerprint=f"synthetic-{ids}-{seed}",
                                   config={})
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(4 * f, f)).astype(np.float32)
    for unit in range(store.n_units):
        rows = store.unit_samples(unit)
        count = rows.stop - rows.start
        if ids:
            data = np.zeros((count, t, p, f), np.float32)
            data[..., 0] = np.arange(rows.start * t * p, rows.stop * t * p).reshape(count, t, p)
        else:
            codes = rng.exponential(size=(count, t, p, 4 * f)) * (rng.random((count, t, p, 4 * f)) < 0.08)
            data = (codes @ atoms).astype(np.float32)
        store.write_unit(unit, {HOOK: data})
    return store


def as_harvested(root, url: str, model: str | None = None):
    """A run layout under `root` whose harvest stage is done and made `url` (both splits),
    from `model` if given (the sweep samples it)."""
    from storage.layout import RunLayout

    layout = RunLayout(root=str(root))
    layout.finish("harvest", "synthetic", {"harvest": url, "score": url},
                  {} if model is None else {"model": model}, 0.0, upstream={})
    return layout
