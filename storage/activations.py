"""The activation store: a Zarr v3 group that is also a labelled xarray dataset.

Layout (one group, so `xarray.open_zarr(url)` opens it whole):

    <hook>            (sample, timestep, position, feature) float16, one chunk = whole samples
                      (hooks of different shapes: (sample, timestep, position_P, feature_F))
    timestep          (timestep,)  the scheduler's timestep values, not step indices
    sample            (sample,)    row of the prompt table
    prompt, object, style, template, seed   (sample,) per-sample labels
    progress/done     (unit,)      1 once a write unit (one chunk of samples) is fully written

Hooks are arrays named by their module path (`up_blocks.1.attentions.1`). A write unit is one
chunk along `sample`; its flag lives in its own chunk object, so concurrent writers never
touch the same object, and progress is never inferred from which chunk files exist. The root
attributes hold the configuration and its fingerprint; a store is usable once the
fingerprint is written (last, at creation).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from storage.arrays import CHECKSUM, StoreCorruptError, write_array

DIMS = ("sample", "timestep", "position", "feature")
LABELS = ("prompt", "object", "style", "template", "seed")
CODECS: dict[str, list[Any]] = {
    "blosc-zstd": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
    "blosc-zstd-bitshuffle": [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")],
    "blosc-lz4": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "zstd": [ZstdCodec(level=3)],
    "none": [],
}
"""Compressors a store can use, by name; see bench/store_codecs.py and BENCHMARKS.md. Every
chunk also carries a CRC32C checksum (CHECKSUM), checked before it is decompressed."""
DEFAULT_CODEC = "blosc-zstd-bitshuffle"
"""Chosen by measurement on MiniCanvas activations: smallest, and cheaper to write than
byte-shuffled zstd (BENCHMARKS.md)."""


class StoreMismatchError(ValueError):
    """The store at a URL was made with another configuration."""


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds; all of it is fixed when the store is created."""

    hooks: dict[str, tuple[int, int]]
    """Hook name -> (positions, features)."""
    timesteps: list[int]
    samples_per_chunk: int
    dtype: str = "float16"

    def __post_init__(self) -> None:
        if not self.hooks or not self.timesteps:
            raise ValueError("a store needs at least one hook and one timestep")

    def dims(self, hook: str) -> tuple[str, str, str, str]:
        """A hook's dimension names. Hooks of one shape share `position` and `feature`; when
        shapes differ the names carry their sizes (`position_16`, `feature_128`), so that
        xarray still opens the store as one dataset."""
        if len(set(self.hooks.values())) == 1:
            return DIMS
        positions, features = self.hooks[hook]
        return DIMS[:2] + (f"position_{positions}", f"feature_{features}")

    def units(self, n_samples: int) -> int:
        return math.ceil(n_samples / self.samples_per_chunk)


class ActivationStore:
    def __init__(self, group: zarr.Group, url: str = ""):
        self.group, self.url = group, url or str(group.store)
        attrs = group.attrs.asdict()
        if "fingerprint" not in attrs:
            raise ValueError(f"{group.store} is not a complete activation store (no fingerprint)")
        self.fingerprint: str = attrs["fingerprint"]
        self.config: dict[str, Any] = attrs["config"]
        self.spec = StoreSpec(hooks={k: tuple(v) for k, v in attrs["hooks"].items()},
                              timesteps=list(attrs["timesteps"]),
                              samples_per_chunk=attrs["samples_per_chunk"], dtype=attrs["dtype"])
        self.n_samples: int = group["sample"].shape[0]

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, url: str, spec: StoreSpec, table: pd.DataFrame, *, fingerprint: str,
               config: dict[str, Any], force: bool = False,
               codec: str = DEFAULT_CODEC) -> "ActivationStore":
        """Open the store for `fingerprint`, creating it if needed.

        An existing store of the same fingerprint is returned as it is (to resume); one of
        another fingerprint is refused unless `force`, which deletes it and starts over.
        """
        existing = cls.open_existing(url)
        if existing is not None:
            if existing.fingerprint == fingerprint:
                return existing
            if not force:
                raise StoreMismatchError(
                    f"{url} holds activations of another configuration (fingerprint "
                    f"{existing.fingerprint[:12]}, not {fingerprint[:12]}); use another path, "
                    "or force to overwrite it")
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
        if table.empty:
            raise ValueError("cannot create an activation store for an empty prompt table")
        group = zarr.open_group(url, mode="w", zarr_format=3)
        n = len(table)
        spc = spec.samples_per_chunk
        for hook, (positions, features) in spec.hooks.items():
            group.create_array(hook, shape=(n, len(spec.timesteps), positions, features),
                               chunks=(spc, len(spec.timesteps), positions, features),
                               dtype=spec.dtype, compressors=[*CODECS[codec], CHECKSUM],
                               fill_value=np.nan, dimension_names=spec.dims(hook),
                               attributes={"coordinates": " ".join(LABELS)})
        write_array(group, "timestep", np.asarray(spec.timesteps, np.int64), ("timestep",))
        write_array(group, "sample", np.asarray(table.index, np.int64), ("sample",))
        for hook, (positions, _) in spec.hooks.items():
            dim = spec.dims(hook)[2]
            if dim not in group:
                write_array(group, dim, np.arange(positions), (dim,))
        for label in LABELS:
            values = table[label].to_numpy()
            if values.dtype != object:
                values = values.astype(np.int64)
            write_array(group, label, values, ("sample",))
        group.create_array("progress/done", shape=(spec.units(n),), chunks=(1,), dtype="uint8",
                           fill_value=0, dimension_names=("unit",))
        group.attrs.update({"hooks": {k: list(v) for k, v in spec.hooks.items()},
                            "timesteps": list(map(int, spec.timesteps)),
                            "samples_per_chunk": spc, "dtype": spec.dtype, "config": config})
        group.attrs["fingerprint"] = fingerprint
        with warnings.catch_warnings():  # consolidated metadata is a zarr-python v3 extension
            warnings.simplefilter("ignore", zarr.errors.ZarrUserWarning)
            zarr.consolidate_metadata(url)
        return cls(zarr.open_group(url, mode="r+", zarr_format=3), url)

    @classmethod
    def open_existing(cls, url: str) -> "ActivationStore | None":
        """The complete store at `url`, or None if there is none (or only a half-made one)."""
        try:
            group = zarr.open_group(url, mode="r+", zarr_format=3)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError):
            return None
        if "fingerprint" not in group.attrs:
            return None
        return cls(group, url)

    @classmethod
    def open(cls, url: str) -> "ActivationStore":
        store = cls.open_existing(url)
        if store is None:
            raise FileNotFoundError(f"no activation store at {url}")
        return store

    # ------------------------------------------------------------------ progress and writes
    @property
    def n_units(self) -> int:
        return self.spec.units(self.n_samples)

    def unit_samples(self, unit: int) -> slice:
        spc = self.spec.samples_per_chunk
        return slice(unit * spc, min((unit + 1) * spc, self.n_samples))

    def done(self) -> np.ndarray:
        """Bool per write unit: fully written."""
        return self.group["progress/done"][:].astype(bool)

    def missing_units(self) -> list[int]:
        return [int(u) for u in np.flatnonzero(~self.done())]

    def write_unit(self, unit: int, acts: dict[str, np.ndarray]) -> None:
        """Write one unit's activations for every hook, then mark it done."""
        rows = self.unit_samples(unit)
        expected = set(self.spec.hooks)
        if set(acts) != expected:
            raise ValueError(f"unit {unit}: got hooks {sorted(acts)}, the store holds {sorted(expected)}")
        for hook, values in acts.items():
            arr = self.group[hook]
            want = (rows.stop - rows.start,) + arr.shape[1:]
            if values.shape != want:
                raise ValueError(f"unit {unit}, hook {hook}: shape {values.shape}, expected {want}")
            arr[rows] = values.astype(self.spec.dtype)
        self.group["progress/done"][unit] = 1

    def require_hooks(self, hooks: list[str]) -> None:
        """A ValueError naming the first of `hooks` the store does not hold, and those it does."""
        if missing := [h for h in hooks if h not in self.spec.hooks]:
            raise ValueError(f"the activation store {self.url} has no hook {missing[0]!r}; it "
                             f"holds {sorted(self.spec.hooks)}")

    def read_unit(self, hook: str, unit: int, timesteps: list[int] | None = None) -> np.ndarray:
        """One write unit of a hook, (samples, timesteps, positions, features), stored dtype."""
        self.require_hooks([hook])
        try:
            data = self.group[hook][self.unit_samples(unit)]
        except (ValueError, RuntimeError) as error:
            raise StoreCorruptError(self._damaged(hook, unit, f"fails to decode ({error})")) from None
        if np.isnan(data).any():  # a chunk file gone: its fill value, NaN
            raise StoreCorruptError(self._damaged(hook, unit, "is missing or holds NaN"))
        if timesteps is not None:
            data = data[:, [self.spec.timesteps.index(t) for t in timesteps]]
        return data

    def _damaged(self, hook: str, unit: int, what: str) -> str:
        return (f"{self.url}: the chunk of write unit {unit} of {hook} {what}; run the harvest "
                "stage again (the pipeline, or python -m flows.harvest): it re-harvests the "
                "damaged units only")

    def damaged_units(self) -> list[int]:
        """The units marked written whose chunk of some hook fails its checksum, cannot be
        decoded or is missing (reads the whole store)."""
        damaged = []
        for unit in np.flatnonzero(self.done()):
            for hook in self.spec.hooks:
                try:
                    self.read_unit(hook, int(unit))
                except StoreCorruptError:
                    damaged.append(int(unit))
                    break
        return damaged

    def mark_unwritten(self, units: list[int]) -> None:
        """Clear the written flag of `units`, so that a resumed harvest writes them again."""
        for unit in units:
            self.group["progress/done"][unit] = 0

    def labels(self) -> pd.DataFrame:
        """The per-sample labels, one row per sample."""
        return pd.DataFrame({name: self.group[name][:] for name in LABELS},
                            index=pd.Index(self.group["sample"][:], name="sample"))

    def nbytes_stored(self) -> int:
        """Bytes of the stored activation chunks (after compression)."""
        total = 0
        for hook in self.spec.hooks:
            total += self.group[hook].nbytes_stored()
        return int(total)

    def summary(self) -> dict[str, int]:
        """Samples, timesteps, vectors written and bytes on disk: the store at a glance."""
        return {"samples": self.n_samples, "timesteps": len(self.spec.timesteps),
                "vectors": self.vectors_written(), "bytes_on_disk": self.nbytes_stored()}

    def vectors_written(self) -> int:
        done_samples = sum(self.unit_samples(u).stop - self.unit_samples(u).start
                           for u in np.flatnonzero(self.done()))
        return int(sum(done_samples * len(self.spec.timesteps) * p
                       for p, _ in self.spec.hooks.values()))
