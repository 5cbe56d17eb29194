"""The score flow writes a feature store that is tied to its SAE."""

import numpy as np
import pytest
import torch
import xarray as xr

from saeuron.run import RunConfig
from saeuron.sae import SAEConfig, SparseAutoencoder
from saeuron.scoring import DomainHooks, DomainSweeps, ScoreConfig
from storage.arrays import StoreCorruptError
from storage.features import read_features, sae_fingerprint
from stores import HOOK, as_harvested, synthetic_store


def test_score_flow_writes_the_feature_store(tmp_path, prefect_api):
    from flows.score import score

    store_url = str(tmp_path / "acts.zarr")
    synthetic_store(store_url, n=24)
    layout = as_harvested(tmp_path, store_url)
    torch.manual_seed(0)
    SparseAutoencoder(SAEConfig(d_in=8, expansion_factor=4, k=4)).save(tmp_path / "sae" / HOOK)
    layout.finish("train", "sae-0", {HOOK: str(tmp_path / "sae" / HOOK)}, {}, 0.0, upstream={})
    config = ScoreConfig(hooks=DomainHooks(style=HOOK, object=HOOK), top_n=2, exclusive=False,
                         detect_at=0.6, detect_start=800, sweep=DomainSweeps())
    manifest = score(config, RunConfig(root=str(tmp_path)))
    out = manifest["outputs"]["style"]
    assert out == manifest["outputs"]["object"] == str(tmp_path / "features" / f"{HOOK}.zarr")
    summary = manifest["metrics"][HOOK]
    assert summary["style_concepts"] == 3 and summary["object_concepts"] == 2
    fp = sae_fingerprint(tmp_path / "sae" / HOOK)
    attrs, mean_all, domains = read_features(out, fp)
    assert attrs["hook"] == HOOK and mean_all.shape == (3, 32)
    style = domains["style"]
    assert style.concepts == ["none", "ocean", "pop"]
    assert style.selected.shape == (3, 3, 32) and (style.selected.sum(-1) >= 2).all()
    assert style.count.sum() == 24 and np.all(style.multiplier == ScoreConfig().multiplier)
    assert style.gate == [ScoreConfig().gate] * 3, "each concept's gate is stored"
    assert np.all(style.detect_at == config.detect_at)
    assert np.all(style.detect_start == config.detect_start)
    ds = xr.open_zarr(out, group="style", consolidated=False)
    assert ds["score"].dims == ("concept", "timestep", "feature")
    with pytest.raises(ValueError, match="scored with another SAE"):
        read_features(out, "0" * 64)
    with pytest.raises(ValueError, match="unknown concept 'baroque'"):
        style.index("baroque")

    chunks = {name: tmp_path / "features" / f"{HOOK}.zarr" / "style" / name / "c" / "0" / "0" / "0"
              for name in ("mean", "score", "selected")}
    for name, what in (("mean", "fails its checksum"), ("score", "fails its checksum"),
                       ("selected", "is missing")):
        original = chunks[name].read_bytes()
        if name == "mean":  # one bit
            chunks[name].write_bytes(original[:40] + bytes([original[40] ^ 1]) + original[41:])
        elif name == "score":  # truncated
            chunks[name].write_bytes(original[:5])
        else:
            chunks[name].unlink()
        with pytest.raises(StoreCorruptError, match=rf"style/{name} {what}.*score stage again"):
            read_features(out, fp)
        if name != "selected":
            chunks[name].write_bytes(original)
    again = score(config, RunConfig(root=str(tmp_path)))
    assert again["finished"] != manifest["finished"], "a damaged feature store is scored again"
    assert np.array_equal(read_features(out, fp)[2]["style"].score, style.score)
