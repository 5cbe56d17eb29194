import pytest
import torch
from pydantic import ValidationError

from saeuron.sae import SAEConfig, SparseAutoencoder, geometric_median


def make(d_in=8, expansion=4, k=3, seed=0) -> SparseAutoencoder:
    torch.manual_seed(seed)
    return SparseAutoencoder(SAEConfig(d_in=d_in, expansion_factor=expansion, k=k, aux_k=4))


def test_topk_keeps_the_k_largest_per_vector():
    sae = make()
    x = torch.randn(5, 8)
    acts, idx = sae.encode(x)
    pre = sae.pre_acts(x)
    assert acts.shape == idx.shape == (5, 3)
    for row in range(5):
        assert torch.equal(pre[row].topk(3).values.sort().values, acts[row].sort().values)
    dense = sae.dense_latents(x)
    assert ((dense != 0).sum(1) <= 3).all()


def test_batch_topk_keeps_the_k_times_n_largest_of_the_batch():
    sae = make()
    x = torch.randn(6, 8)
    acts, idx = sae.encode_batch_topk(x)
    pre = sae.pre_acts(x)
    kept = torch.zeros_like(pre).scatter_(1, idx, acts)
    threshold = pre.flatten().topk(3 * 6).values.min()
    assert torch.equal(kept != 0, pre >= threshold)
    assert torch.allclose(kept[kept != 0], pre[kept != 0])
    # And decoding the padded form equals decoding the dense form.
    dense_out = kept @ sae.W_dec + sae.b_dec
    torch.testing.assert_close(sae.decode(acts, idx), dense_out)


def test_decoder_rows_stay_at_unit_norm_and_parallel_gradient_is_removed():
    sae = make()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32))
    x = torch.randn(64, 8)
    sae(x, batch_topk=True).fvu.backward()
    sae.remove_parallel_gradient()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert parallel.abs().max() < 1e-6
    with torch.no_grad():
        sae.W_dec.sub_(0.5 * sae.W_dec.grad)
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(32), atol=1e-6)


def test_geometric_median_of_a_known_case():
    # Four corners of a square and one far outlier on the diagonal: the unit vectors towards
    # the points cancel at (a, a) with a = 1 + 1/sqrt(3), whatever the outlier's distance;
    # the mean is dragged far away.
    pts = torch.tensor([[0.0, 0], [0, 2], [2, 0], [2, 2], [100, 100]], dtype=torch.float64)
    a = 1 + 3 ** -0.5
    assert torch.allclose(geometric_median(pts, iterations=1000, tol=1e-12),
                          torch.tensor([a, a], dtype=torch.float64), atol=1e-4)
    assert pts.mean(0)[0] > 20
    # Collinear odd count: the median is the middle point.
    line = torch.tensor([[0.0, 0], [1, 0], [5, 0]])
    assert torch.allclose(geometric_median(line), torch.tensor([1.0, 0.0]), atol=1e-3)


def test_auxk_gradient_reaches_only_dead_latents():
    sae = make()
    x = torch.randn(32, 8)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[1, 5, 9, 20]] = True
    out = sae(x, dead_mask=dead)
    assert out.auxk_loss > 0
    sae.zero_grad()
    out.auxk_loss.backward()
    touched = sae.encoder.weight.grad.abs().sum(1) > 0
    assert touched[dead].any()
    assert not touched[~dead].any()
    decoder_touched = sae.W_dec.grad.abs().sum(1) > 0
    assert not decoder_touched[~dead].any()


def test_no_dead_latents_means_no_auxk():
    sae = make()
    assert sae(torch.randn(4, 8), dead_mask=torch.zeros(32, dtype=torch.bool)).auxk_loss == 0


def test_save_load_round_trip(tmp_path):
    sae = make()
    sae.save(tmp_path)
    again = SparseAutoencoder.load(tmp_path)
    x = torch.randn(4, 8)
    torch.testing.assert_close(sae(x).sae_out, again(x).sae_out)
    assert again.cfg == sae.cfg


def test_load_refuses_mismatched_weights(tmp_path):
    make(d_in=8).save(tmp_path / "a")
    make(d_in=16).save(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    with pytest.raises(ValueError, match="do not match its config"):
        SparseAutoencoder.load(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="lacks config.json"):
        SparseAutoencoder.load(tmp_path / "nowhere")


def test_k_larger_than_latents_is_refused():
    with pytest.raises(ValidationError, match="k = 100 is larger than the number of latents 32"):
        SAEConfig(d_in=8, expansion_factor=4, k=100)
