"""VectorQuantizer: straight-through gradients, EMA updates, dead-code revival, perplexity on a
toy clustering task, cosine codebooks, shapes and bad input."""
import pytest
import torch

from dalle2_fast.nn import VectorQuantizer


def _clusters(n_clusters=16, dim=8, n=2048, seed=0, spread=0.05):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_clusters, dim, generator=g) * 3
    assign = torch.randint(0, n_clusters, (n,), generator=g)
    return centres, centres[assign] + spread * torch.randn(n, dim, generator=g)


def test_shapes_conv_and_sequence_layouts():
    vq = VectorQuantizer(32, 6)
    out = vq(torch.randn(2, 6, 5, 7))  # (B, D, H, W)
    assert out.quantized.shape == (2, 6, 5, 7) and out.indices.shape == (2, 5, 7)
    assert out.loss.dim() == 0 and out.perplexity.dim() == 0
    vq_seq = VectorQuantizer(32, 6, channel_dim=-1).eval()  # eval: no EMA update after lookup
    out = vq_seq(torch.randn(3, 11, 6))  # (B, T, D)
    assert out.quantized.shape == (3, 11, 6) and out.indices.shape == (3, 11)
    # quantized vectors are codebook rows
    torch.testing.assert_close(out.quantized.reshape(-1, 6), vq_seq.embed(out.indices).reshape(-1, 6))


@pytest.mark.parametrize("ema", [True, False])
def test_straight_through_gradient_reaches_encoder(ema):
    enc = torch.nn.Linear(4, 8)
    vq = VectorQuantizer(16, 8, ema=ema, channel_dim=-1)
    x = torch.randn(32, 4)
    out = vq(enc(x))
    (out.quantized.square().sum() + out.loss).backward()
    assert enc.weight.grad is not None and enc.weight.grad.abs().sum() > 0
    # straight-through: d(quantized)/d(z) is the identity
    z = torch.randn(10, 8, requires_grad=True)
    vq(z).quantized.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    if not ema:  # the codebook loss trains the codes
        assert vq.embedding.grad is not None and vq.embedding.grad.abs().sum() > 0


def test_ema_moves_codes_toward_assigned_vectors():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 3, decay=0.5, dead_code_after=0, channel_dim=-1)
    target = torch.tensor([5.0, -2.0, 1.0])
    z = target + 0.01 * torch.randn(64, 3)
    idx0 = vq(z).indices  # training mode: one EMA update
    code = idx0.mode().values.item()
    before = (vq.embedding[code] - target).norm().item()
    for _ in range(10):
        vq(z)
    after = (vq.embedding[code] - target).norm().item()
    assert after < 0.1 * before, (before, after)


def test_eval_mode_does_not_update():
    vq = VectorQuantizer(8, 3, channel_dim=-1).eval()
    e0 = vq.embedding.clone()
    vq(torch.randn(50, 3) + 4)
    assert torch.equal(vq.embedding, e0)


def test_dead_codes_are_revived_from_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, dead_code_after=3, channel_dim=-1)
    with torch.no_grad():
        vq.embedding.copy_(torch.randn(8, 2) + 100.0)  # all far away; one will win every time
        vq.embed_avg.copy_(vq.embedding)
    z = torch.randn(256, 2)
    for _ in range(4):
        vq(z)
    # the codes that never won have been replaced by points near the data
    near = (vq.embedding.norm(dim=1) < 10).sum().item()
    assert near >= 6, vq.embedding


def test_perplexity_rises_on_toy_clustering():
    torch.manual_seed(0)
    centres, data = _clusters(n_clusters=16, dim=8)
    vq = VectorQuantizer(32, 8, decay=0.8, dead_code_after=5, channel_dim=-1)
    first = vq(data).perplexity.item()
    for _ in range(60):
        out = vq(data[torch.randperm(len(data))[:512]])
    last = vq.eval()(data).perplexity.item()
    assert last > first + 3, (first, last)
    assert last > 12, last  # ~16 clusters in use
    # and quantisation error is small: codes sit on the clusters
    assert (vq(data).quantized - data).pow(2).sum(1).mean() < 0.1


def test_cosine_codebook_uses_normalised_lookup():
    vq = VectorQuantizer(16, 5, cosine=True, channel_dim=-1)
    z = torch.randn(40, 5) * 10
    out = vq(z)
    torch.testing.assert_close(out.quantized.norm(dim=1), torch.ones(40), rtol=1e-5, atol=1e-5)
    # the chosen code maximises cosine similarity
    sims = torch.nn.functional.normalize(z, dim=1) @ vq.codebook.T
    assert torch.equal(out.indices, sims.argmax(1))


@pytest.mark.parametrize(
    "kwargs, x, match",
    [
        (dict(num_codes=8, dim=4), torch.randn(2, 5, 3, 3), "expected dim=4"),
        (dict(num_codes=8, dim=4), torch.randn(4), ">= 2 dims"),
        (dict(num_codes=8, dim=4), torch.randn(0, 4), "empty input"),
        (dict(num_codes=8, dim=4), torch.ones(2, 4, dtype=torch.long), "floating point"),
    ],
)
def test_bad_input(kwargs, x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        VectorQuantizer(**kwargs)(x)


@pytest.mark.parametrize("kwargs, match", [(dict(num_codes=0, dim=4), "num_codes"),
                                           (dict(num_codes=4, dim=4, decay=1.0), "decay")])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(**kwargs)
