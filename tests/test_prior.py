"""unCLIP priors: the attention helper, the diffusion prior, the PCA quantiser and the AR prior."""
import math

import pytest
import torch
import torch.nn.functional as F

from dalle2_fast.models.prior import (ARPriorConfig, AutoregressivePrior, DiffusionPrior, DiffusionPriorConfig,
                                      PCAQuantizer, QuantileBuckets, attention)
from dalle2_fast.models.prior.diffusion_prior import select_best
from dalle2_fast.models.prior.transformer import attention_sdpa
from dalle2_fast.models.prior.schedule import CosineSchedule, cosine_alphas_cumprod


pytestmark = pytest.mark.usefixtures("one_thread")


D, L, W, K = 16, 6, 8, 8  # toy CLIP dim, text length, text width, number of caption classes


class Toy:
    """K caption classes, each with fixed text tokens, z_t and a target z_i (plus small noise)."""

    def __init__(self, seed=0, noise=0.0):
        g = torch.Generator().manual_seed(seed)
        self.text = F.normalize(torch.randn(K, D, generator=g), dim=-1)
        self.img = F.normalize(torch.randn(K, D, generator=g), dim=-1)
        self.tok = torch.randn(K, L, W, generator=g)
        self.noise = noise

    def batch(self, n, g):
        c = torch.randint(0, K, (n,), generator=g)
        zi = F.normalize(self.img[c] + self.noise * torch.randn(n, D, generator=g), dim=-1)
        mask = torch.ones(n, L, dtype=torch.bool)
        mask[:, 4:] = c[:, None] % 2 == 0  # half the captions are padded after 4 tokens
        return zi, self.tok[c], mask, self.text[c], c


def attention_ref(q, k, v, causal, kpm):
    s = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    sq, sk = s.shape[-2:]
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        allowed = allowed & (torch.arange(sk)[None] <= torch.arange(sq)[:, None] + (sk - sq))
    if kpm is not None:
        allowed = allowed & ~kpm[:, None, None, :]  # True = padding
    return (s.masked_fill(~allowed, float("-inf")).softmax(-1) @ v.double()).float()


@pytest.mark.parametrize("sq,sk,causal,masked", [
    (7, 7, True, False),   # plain causal (the is_causal fast path)
    (7, 7, True, True),    # causal + key padding (the boolean-mask path)
    (3, 9, True, False),   # query suffix: causal must be bottom-right aligned, not top-left
    (5, 5, False, True),   # padding only
])
def test_attention_helper_against_float64(sq, sk, causal, masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, s, 16, generator=g) for s in (sq, sk, sk))
    kpm = None
    if masked:
        kpm = torch.rand(2, sk, generator=g) < 0.3  # True = padding
        kpm[:, 0] = False  # every row keeps a key
    ref = attention_ref(q, k, v, causal, kpm)
    torch.testing.assert_close(attention(q, k, v, causal=causal, key_padding_mask=kpm), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(attention_sdpa(q, k, v, causal, kpm), ref, atol=1e-5, rtol=1e-4)


def test_cosine_schedule_and_ddim():
    ab = cosine_alphas_cumprod(1000)
    assert ab.dtype == torch.float64 and ab.shape == (1000,)
    assert (ab[1:] < ab[:-1]).all() and 0.99 < ab[0] < 1 and ab[-1] < 1e-3
    sch = CosineSchedule(1000)
    ts = sch.respaced(10)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10
    with pytest.raises(ValueError, match="steps"):
        sch.respaced(0)
    # with the true x0 the DDIM (eta=0) step lands exactly on q_sample's mean path
    x0, eps = torch.randn(4, D, dtype=torch.float64), torch.randn(4, D, dtype=torch.float64)
    xt = sch.q_sample(x0, torch.full((4,), 700), eps)
    prev = sch.ddim_step(xt, x0, 700, 400, 0.0, None)
    torch.testing.assert_close(prev, sch.q_sample(x0, torch.full((4,), 400), eps))
    # the last step returns x0; eta > 0 and guidance follow Eq. 12 written out
    torch.testing.assert_close(sch.ddim_step(xt, x0, 0, -1, 1.0, torch.randn_like(x0)), x0)
    cond, uncond, z = (torch.randn(4, D, dtype=torch.float64) for _ in range(3))
    g, eta, ab, abp = 3.0, 0.7, float(sch.alphas_cumprod[700]), float(sch.alphas_cumprod[400])
    x0g = uncond + g * (cond - uncond)
    sig = eta * math.sqrt((1 - abp) / (1 - ab) * (1 - ab / abp))
    want = math.sqrt(abp) * x0g + math.sqrt(1 - abp - sig ** 2) * (xt - math.sqrt(ab) * x0g) / math.sqrt(1 - ab) + sig * z
    torch.testing.assert_close(sch.ddim_step(xt, torch.cat([cond, uncond]), 700, 400, eta, z, guidance=g), want)


# ---- diffusion prior ---------------------------------------------------------------------------
def small_diffusion_prior(**kw):
    cfg = DiffusionPriorConfig(clip_dim=D, text_width=W, text_len=L, width=64, layers=2, heads=2, **kw)
    torch.manual_seed(0)
    return DiffusionPrior(cfg)


def test_diffusion_prior_shapes_padding_and_dropping():
    p = small_diffusion_prior().eval()
    zi, tok, mask, zt, _ = Toy().batch(6, torch.Generator().manual_seed(0))
    t = torch.tensor([0, 5, 100, 500, 999, 3])
    out = p(zi * 4, t, tok, mask, zt)
    assert out.shape == (6, D)
    # padded text positions are masked out: changing them changes nothing
    tok2 = tok.clone()
    tok2[~mask] = 100.0
    torch.testing.assert_close(p(zi * 4, t, tok2, mask, zt), out)
    # dropping the text uses the null conditioning: the output no longer depends on the text
    drop = torch.ones(6, dtype=torch.bool)
    a = p(zi * 4, t, tok, mask, zt, drop)
    b = p(zi * 4, t, torch.randn_like(tok), mask, -zt, drop)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, out)
    with pytest.raises(ValueError, match="x_t must be"):
        p(torch.zeros(6, D + 1), t, tok, mask, zt)
    with pytest.raises(ValueError, match="L=6"):
        p(zi, t, tok[:, :5], mask[:, :5], zt)


def test_diffusion_prior_trains_and_lands_near_the_image_embedding():
    toy = Toy()
    p = small_diffusion_prior()
    assert float(p.embed_scale) == pytest.approx(math.sqrt(D))
    opt = torch.optim.AdamW(p.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    fixed = toy.batch(64, torch.Generator().manual_seed(9))
    first = float(p.loss(*fixed[:4], generator=torch.Generator().manual_seed(1)).detach())
    for _ in range(150):
        zi, tok, mask, zt, _ = toy.batch(32, g)
        loss = p.loss(zi, tok, mask, zt, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(p.loss(*fixed[:4], generator=torch.Generator().manual_seed(1)).detach())
    assert last < 0.2 * first, (first, last)
    zi, tok, mask, zt, c = toy.batch(16, torch.Generator().manual_seed(5))
    p.eval()
    out = p.sample(tok, mask, zt, seeds=range(16), steps=16)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(16))
    cos = (out * zi).sum(-1)
    assert cos.min() > 0.9, cos
    # guided sampling runs and still lands on the target
    out_g = p.sample(tok, mask, zt, seeds=range(16), steps=8, guidance=3.0)
    assert (out_g * zi).sum(-1).mean() > 0.9

    # per-sample seeds: results do not depend on how the captions are batched
    parts = torch.cat([p.sample(tok[:5], mask[:5], zt[:5], seeds=range(5), steps=16),
                       p.sample(tok[5:], mask[5:], zt[5:], seeds=range(5, 16), steps=16)])
    torch.testing.assert_close(parts, out, atol=1e-5, rtol=0)
    other = p.sample(tok, mask, zt, seeds=range(100, 116), steps=16, eta=1.0)
    assert not torch.equal(other, out)


def test_diffusion_prior_keeps_the_candidate_closest_to_the_text():
    p = small_diffusion_prior().eval()
    _, tok, mask, zt, _ = Toy().batch(5, torch.Generator().manual_seed(0))
    cands = p.sample_candidates(tok, mask, zt, seeds=range(5), steps=4, n_candidates=3)
    assert cands.shape == (3, 5, D)
    best = p.sample(tok, mask, zt, seeds=range(5), steps=4, n_candidates=3)
    dots = (cands * zt[None]).sum(-1)  # (3, 5)
    torch.testing.assert_close((best * zt).sum(-1), dots.max(0).values)
    torch.testing.assert_close(select_best(cands, zt), best)
    with pytest.raises(ValueError, match="5 seeds"):
        p.sample(tok, mask, zt, seeds=range(4))


def test_guidance_combines_conditional_and_unconditional():
    p = small_diffusion_prior().eval()
    zi, tok, mask, zt, _ = Toy().batch(3, torch.Generator().manual_seed(0))
    x = torch.randn(3, D)
    t = torch.full((3,), 400)
    cond = p(x, t, tok, mask, zt)
    unc = p(x, t, tok, mask, zt, torch.ones(3, dtype=torch.bool))
    torch.testing.assert_close(p._x0_rows(x, 400, tok, mask, zt, 2.5), torch.cat([cond, unc]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p._x0_rows(x, 400, tok, mask, zt, 1.0), cond)
    # the step kernel combines them: a final step (-> x0) returns uncond + g (cond - uncond)
    x0 = p.schedule.ddim_step(x, p._x0_rows(x, 400, tok, mask, zt, 2.5), 400, -1, 0.0, None, guidance=2.5)
    torch.testing.assert_close(x0, unc + 2.5 * (cond - unc), atol=1e-5, rtol=1e-5)


def test_fit_embed_scale_gives_unit_variance():
    p = small_diffusion_prior()
    z = F.normalize(torch.randn(500, D) * 0.1 + 1.0, dim=-1)
    s = p.fit_embed_scale(z)
    assert (z * s).std() == pytest.approx(1.0, rel=1e-4)
    assert p.config.embed_scale == s


# ---- quantisation -----------------------------------------------------------------------------------
def test_quantile_buckets_equal_mass_and_decode():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(4000, 3, generator=g) * torch.tensor([1.0, 5.0, 0.1])
    qb = QuantileBuckets(3, 8).fit(v)
    codes = qb.encode(v)
    assert codes.dtype == torch.long and codes.min() == 0 and codes.max() == 7
    counts = torch.stack([torch.bincount(codes[:, j], minlength=8) for j in range(3)])
    assert (counts - 500).abs().max() <= 2  # equal mass
    dec = qb.decode(codes)
    assert ((dec - v).abs() / v.std(0)).mean() < 0.2
    assert (qb.encode(dec) == codes).all()  # a centre lies in its own bucket
    with pytest.raises(ValueError, match="codes must be in"):
        qb.decode(torch.full((1, 3), 8))
    with pytest.raises(ValueError, match="rows"):
        QuantileBuckets(3, 8).fit(v[:5])


def test_pca_quantizer_orders_components_and_reconstructs():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D, D, generator=g))[0]
    z = F.normalize((torch.randn(3000, D, generator=g) * (3 * 0.5 ** torch.arange(D))) @ basis.T + 2 * basis[:, 0],
                    dim=-1)
    q = PCAQuantizer(D, 6, 64).fit(z)
    var = q.project(z).var(0)
    assert (var[:-1] >= var[1:]).all()  # decreasing eigenvalues: most important first
    torch.testing.assert_close(q.components @ q.components.T, torch.eye(6), atol=1e-5, rtol=0)
    rec = q.decode(q.encode(z))
    pca_only = F.normalize(q.mean + q.project(z) @ q.components, dim=-1)
    assert (rec * pca_only).sum(-1).mean() > 0.99  # 64 buckets lose little
    assert (rec * z).sum(-1).mean() > 0.95
    with pytest.raises(ValueError, match="n_components"):
        PCAQuantizer(D, D + 1, 8)


# ---- autoregressive prior ----------------------------------------------------------------------------
def small_ar_prior():
    torch.manual_seed(0)
    return AutoregressivePrior(ARPriorConfig(clip_dim=D, text_width=W, text_len=L, n_components=6, n_buckets=16,
                                             n_dot_buckets=4, width=64, layers=2, heads=2))


def test_ar_prior_shapes_causality_and_errors():
    toy = Toy(noise=0.05)
    p = small_ar_prior()
    zi, tok, mask, zt, _ = toy.batch(8, torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="fit_quantizers"):
        p.loss(zi, tok, mask, zt)
    big = toy.batch(500, torch.Generator().manual_seed(1))
    p.fit_quantizers(big[0], big[3])
    p.eval()
    codes = p.quantizer.encode(zi)
    dot = torch.zeros(8, dtype=torch.long)
    logits = p(codes[:, :3], tok, mask, zt, dot)
    assert logits.shape == (8, 4, 16)
    # causal: the logits for code j do not see codes >= j
    changed = codes[:, :3].clone()
    changed[:, 2] = (changed[:, 2] + 5) % 16
    torch.testing.assert_close(p(changed, tok, mask, zt, dot)[:, :3], logits[:, :3])
    with pytest.raises(ValueError, match="at most 5"):
        p(codes, tok, mask, zt, dot)
    with pytest.raises(ValueError, match="dot_range"):
        p.sample(tok, mask, zt, seeds=range(8), dot_range=(0.7, 0.2))


def test_ar_prior_trains_and_samples_near_the_image_embedding():
    toy = Toy(noise=0.05)
    p = small_ar_prior()
    big = toy.batch(1000, torch.Generator().manual_seed(1))
    p.fit_quantizers(big[0], big[3])
    opt = torch.optim.AdamW(p.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    fixed = toy.batch(128, torch.Generator().manual_seed(9))
    first = float(p.loss(*fixed[:4], generator=torch.Generator().manual_seed(1)).detach())
    for _ in range(200):
        zi, tok, mask, zt, _ = toy.batch(32, g)
        loss = p.loss(zi, tok, mask, zt, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(p.loss(*fixed[:4], generator=torch.Generator().manual_seed(1)).detach())
    assert last < first - 0.5, (first, last)
    p.eval()
    zi, tok, mask, zt, c = toy.batch(16, torch.Generator().manual_seed(5))
    out = p.sample(tok, mask, zt, seeds=range(16), temperature=0.5, guidance=2.0)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(16))
    to_target = (out * toy.img[c]).sum(-1)
    to_others = (out @ toy.img.T).masked_fill(F.one_hot(c, K).bool(), -2).max(-1).values
    assert (to_target > to_others).float().mean() >= 0.8, (to_target, to_others)
    parts = torch.cat([p.sample(tok[:7], mask[:7], zt[:7], seeds=range(7), temperature=0.5, guidance=2.0),
                       p.sample(tok[7:], mask[7:], zt[7:], seeds=range(7, 16), temperature=0.5, guidance=2.0)])
    torch.testing.assert_close(parts, out)
