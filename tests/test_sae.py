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


# ---------------------------------------------------------------------- the fused training step
def reference_losses(sae, x, dead, batch_topk):
    """The SAE's losses written as plain dense autograd (every latent), to check the fused
    forward and its backward against."""
    import torch.nn.functional as F

    n, k = x.shape[0], sae.cfg.k
    pre = F.relu(F.linear(x - sae.b_dec, sae.encoder.weight, sae.encoder.bias))
    if batch_topk:
        threshold = pre.detach().flatten().topk(k * n).values.min()
        keep = (pre.detach() >= threshold) & (pre.detach() > 0)
    else:
        top = pre.detach().topk(k).indices
        keep = torch.zeros_like(pre, dtype=torch.bool).scatter_(1, top, True)
    out = (pre * keep) @ sae.W_dec + sae.b_dec
    residual = x - out
    fvu = residual.pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    auxk = x.new_zeros(())
    n_dead = int(dead.sum())
    if n_dead:
        k_aux = min(sae.cfg.aux_k, max(1, sae.cfg.d_in // 2), n_dead)
        top = torch.where(dead, pre.detach(), -torch.inf).topk(k_aux).indices
        e_hat = (pre * torch.zeros_like(pre).scatter_(1, top, 1.0)) @ sae.W_dec
        target = residual.detach()
        auxk = (min(n_dead / sae.cfg.aux_k, 1.0) * (e_hat - target).pow(2).sum()
                / (target - target.mean(0)).pow(2).sum())
    return out, keep, fvu, auxk


@pytest.mark.parametrize("layout", ["dense", "lists", "lists-buffered", "lists-gathered-auxk"])
@pytest.mark.parametrize("batch_topk", [True, False])
@pytest.mark.parametrize("n_dead", [0, 5, 40])
def test_fused_step_equals_dense_autograd(layout, batch_topk, n_dead):
    torch.manual_seed(n_dead)
    sae = SparseAutoencoder(SAEConfig(d_in=16, expansion_factor=8, k=4, aux_k=6)).double()
    sae.DENSE_MAX_RATIO = 10**9 if layout == "dense" else 0
    sae.BUFFER_MIN = 0 if layout == "lists-buffered" else sae.BUFFER_MIN  # per-row threshold
    sae.AUX_DENSE_RATIO = 0 if layout == "lists-gathered-auxk" else 4
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
        sae.encoder.bias.normal_(0, 0.1)
    # Rows of very different norms: BatchTopK keeps many latents in some, none in others.
    x = torch.randn(64, 16, dtype=torch.float64) * torch.rand(64, 1, dtype=torch.float64).pow(3) * 4
    dead = torch.zeros(128, dtype=torch.bool)
    dead[torch.randperm(128)[:n_dead]] = True
    grads = []
    for fused in (True, False):
        sae.zero_grad()
        if fused:
            out = sae(x, dead_mask=dead, batch_topk=batch_topk)
            recon, fvu, auxk = out.sae_out, out.fvu, out.auxk_loss
            kept = torch.zeros(64, 128, dtype=torch.float64).scatter_add_(
                1, out.top_indices, out.top_acts.detach())
        else:
            recon, keep, fvu, auxk = reference_losses(sae, x, dead, batch_topk)
            ref = (recon, fvu, auxk)
        (fvu + sae.cfg.aux_coef * auxk).backward()
        grads.append({name: p.grad.clone() for name, p in sae.named_parameters()})
    torch.testing.assert_close(recon, ref[0])
    torch.testing.assert_close(fvu, ref[1])
    torch.testing.assert_close(auxk, ref[2])
    assert torch.equal(kept != 0, keep & (sae.pre_acts(x) > 0))
    assert (auxk > 0) == (n_dead > 0)
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


@pytest.mark.parametrize("layout", ["dense", "lists", "lists-buffered"])
def test_fused_step_is_deterministic(layout):
    runs = []
    for _ in range(2):
        sae = make(d_in=16, expansion=8, k=4)
        sae.DENSE_MAX_RATIO = 10**9 if layout == "dense" else 0
        sae.BUFFER_MIN = 0 if layout == "lists-buffered" else sae.BUFFER_MIN
        opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
        torch.manual_seed(1)
        dead = torch.zeros(128, dtype=torch.bool)
        dead[:20] = True
        for _ in range(5):
            out = sae(torch.randn(64, 16), dead_mask=dead, batch_topk=True)
            opt.zero_grad()
            (out.fvu + out.auxk_loss / 32).backward()
            sae.remove_parallel_gradient()
            opt.step()
            sae.normalize_decoder()
        runs.append(sae.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_batch_topk_threshold_search_is_exact():
    from saeuron.sae import _batch_topk_rows, _kth_largest

    torch.manual_seed(0)
    # Float32, large enough for the radix select; zeros (ReLU) and -0.0 included.
    pre = (torch.randn(512, 256) * torch.rand(512, 1).pow(3)).relu()
    pre[0, :8] = -0.0
    for kk in (1, 1000, 32 * 512, pre.numel()):
        assert _kth_largest(pre.flatten(), kk) == pre.flatten().topk(kk).values.min()
    # Rows that keep far more than 2k latents make the row-wise search widen.
    vals, idx, entries = _batch_topk_rows(pre, 8)
    threshold = pre.flatten().topk(8 * 512).values.min()
    kept = torch.zeros_like(pre).scatter_add_(1, idx, vals)
    assert vals.shape[1] > 16
    assert torch.equal(kept != 0, pre >= threshold)
    assert torch.equal(kept[kept != 0], pre[kept != 0])
    assert len(entries.vals) == 8 * 512


def test_released_gradient_memory_is_written_again_with_the_same_values():
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=64, expansion_factor=64, k=8))  # the list layout
    sae.BUFFER_MIN = 0
    x = torch.randn(256, 64)
    dead = torch.zeros(4096, dtype=torch.bool)
    dead[:100] = True

    def grads():
        out = sae(x, dead_mask=dead, batch_topk=True)
        (out.fvu + out.auxk_loss / 32).backward()
        return [p.grad.clone() for p in sae.parameters()]

    fresh = grads()
    kept = sae.W_dec.grad.data_ptr(), sae.encoder.weight.grad.data_ptr()
    sae.release_gradients()
    assert all(p.grad is None for p in sae.parameters())
    again = grads()
    assert (sae.W_dec.grad.data_ptr(), sae.encoder.weight.grad.data_ptr()) == kept
    assert all(torch.equal(a, b) for a, b in zip(fresh, again))
