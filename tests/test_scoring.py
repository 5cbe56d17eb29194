"""Dask scoring equals a plain in-memory computation, locally and on a LocalCluster."""

import numpy as np
import pytest
import torch

from saeuron.sae import SAEConfig, SparseAutoencoder
from saeuron.names import TEXT_HOOK
from saeuron.scoring import ConceptMeans, ScoreConfig, concept_means, select_features
from saeuron.selection import select
from stores import HOOK, synthetic_store


@pytest.fixture
def store_and_sae(tmp_path):
    store = synthetic_store(str(tmp_path / "acts.zarr"), n=24, spc=5)
    torch.manual_seed(0)
    return store, SparseAutoencoder(SAEConfig(d_in=8, expansion_factor=4, k=4))


def numpy_reference(store, sae, domain):
    """Means and scores straight from the definitions, everything in memory."""
    acts = store.group[HOOK][:].astype(np.float32)
    n, t, p, f = acts.shape
    with torch.no_grad():
        latents = sae.dense_latents(torch.from_numpy(acts.reshape(-1, f))).numpy()
    per_sample = latents.reshape(n, t, p, -1).mean(2)
    labels = store.labels()[domain].to_numpy()
    concepts = sorted(set(labels))
    means = np.stack([per_sample[labels == c].mean(0) for c in concepts])
    rest = np.stack([per_sample[labels != c].mean(0) for c in concepts])
    scores = means / (means.sum(-1, keepdims=True) + 1e-9) - rest / (rest.sum(-1, keepdims=True) + 1e-9)
    return concepts, means, scores, per_sample.mean(0)


@pytest.mark.parametrize("domain", ["style", "object"])
def test_dask_scoring_equals_numpy(store_and_sae, domain):
    store, sae = store_and_sae
    result = concept_means(store, HOOK, sae)[domain]
    concepts, means, scores, mean_all = numpy_reference(store, sae, domain)
    assert result.concepts == concepts
    assert result.timesteps == store.spec.timesteps
    np.testing.assert_allclose(result.means, means, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.scores(), scores, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.mean_all, mean_all, rtol=1e-5, atol=1e-6)
    assert result.counts.sum() == store.n_samples


def test_scoring_on_a_local_cluster(store_and_sae):
    from distributed import LocalCluster

    store, sae = store_and_sae
    local = concept_means(store, HOOK, sae)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        remote = concept_means(store, HOOK, sae, scheduler=cluster.scheduler_address)
    for domain in ("style", "object"):
        np.testing.assert_allclose(remote[domain].sums, local[domain].sums, rtol=1e-6)


def test_selection_by_percentile_and_top_n():
    scores = np.arange(2 * 3 * 100, dtype=float).reshape(2, 3, 100)
    top = select_features(scores, top_n=2)
    assert top.sum(-1).tolist() == [[2, 2, 2], [2, 2, 2]]
    assert top[..., -2:].all()
    pct = select_features(scores, percentile=95)
    assert pct.sum(-1).tolist() == [[5, 5, 5], [5, 5, 5]]
    with pytest.raises(ValueError, match="exactly one"):
        select_features(scores)
    with pytest.raises(ValueError, match="top_n must be in"):
        select_features(scores, top_n=0)


def test_store_and_sae_must_fit(store_and_sae):
    store, _ = store_and_sae
    wide = SparseAutoencoder(SAEConfig(d_in=16, expansion_factor=2, k=2))
    with pytest.raises(ValueError, match="width 8 but the SAE takes 16"):
        concept_means(store, HOOK, wide)


def test_max_contrast_passes_over_a_feature_another_concept_shares():
    """Feature 0 is as much b's as a's: the paper's mean contrast still ranks it first for a,
    because the mean over b, c and d dilutes b; the max contrast picks a's own feature 1."""
    sums = np.array([[[6.0, 1.0, 1.0]], [[6.0, 0.0, 2.0]], [[0.0, 0.0, 8.0]], [[0.0, 0.0, 8.0]]])
    m = ConceptMeans(concepts=["a", "b", "c", "d"], timesteps=[1], sums=sums,
                     counts=np.ones(4, int))
    assert select_features(m.scores("mean"), top_n=1)[0].tolist() == [[True, False, False]]
    assert select_features(m.scores("max"), top_n=1)[0].tolist() == [[False, True, False]]
    np.testing.assert_allclose(m.scores("max")[0, 0], [0.0, 0.125, -0.875])


def test_at_the_text_hook_pictures_are_checked_from_the_first_step():
    """A prompt's encoding holds no noise, so the detect gate's start, measured on a block's
    noisy first steps, does not apply there."""
    sums = np.array([[[6.0, 1.0]], [[0.0, 5.0]]])
    m = ConceptMeans(concepts=["a", "b"], timesteps=[999], sums=sums, counts=np.ones(2, int))
    config = ScoreConfig(top_n=1, detect_start=900)
    assert select(m, config, HOOK).detect_start.tolist() == [900, 900]
    text = select(m, config, TEXT_HOOK)
    assert text.detect_start.tolist() == [1000, 1000]
    assert text.selected[:, 0].tolist() == [[True, False], [False, True]]
