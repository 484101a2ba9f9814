"""Inpainting in the samplers: the fused known/mask blend in every sampler (known pixels kept
exactly, the generated region sampled), RePaint's resampling schedule, and its harmonisation on
a correlated Gaussian with an exact denoiser (the conditional mean of the hole is known in
closed form), per-sample seeds, bad input."""
import pytest
import torch

from dalle2_fast.diffusion import (GaussianDiffusion, cosine_betas, ddpm_sample, num_model_calls, repaint_sample,
                                   repaint_schedule, respace, run_sampler)
from tests.diffusion.test_samplers import exact_denoiser

MU, SDC, SDI = 0.1, 1.0, 0.1  # x0 = MU + c 1 + e, c ~ N(0, SDC^2) per sample, e ~ N(0, SDI^2 I)


def correlated_denoiser(base: GaussianDiffusion):
    """E[x0 | x_t] for the compound-symmetric Gaussian above, as eps: the component along the
    all-ones direction has variance SDI^2 + n SDC^2, the rest SDI^2."""
    ab_all = base.alphas_cumprod

    def den(x, t, **kw):
        B, n = x.shape[0], x[0].numel()
        ab = ab_all.to(x.device)[t].to(x.dtype).view(B, *([1] * (x.dim() - 1)))
        a, s = ab.sqrt(), (1 - ab).sqrt()
        d = x - a * MU
        dm = d.reshape(B, -1).mean(1).view_as(ab)
        f = lambda lam: a * lam / (a * a * lam + s * s)  # noqa: E731
        x0 = MU + f(SDI**2 + n * SDC**2) * dm + f(SDI**2) * (d - dm)
        return (x - a * x0) / s

    return den


def _half_mask():
    known = torch.full((1, 1, 4, 4), MU + 0.8)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1  # the left half is known
    return known, mask


def test_schedule():
    s = repaint_schedule(20, 5, 3)
    assert s[0] == 19 and s[-1] == -1
    steps = list(zip(s, s[1:]))
    assert all(b == a - 1 or b == a + 5 for a, b in steps)
    ups = [a for a, b in steps if b > a]
    assert sorted(set(ups)) == [0, 5, 10] and all(ups.count(i) == 2 for i in (0, 5, 10))  # r - 1 jumps each
    assert num_model_calls(20, 5, 3) == 20 + 3 * 2 * 5
    assert repaint_schedule(7, 10, 10) == list(range(6, -2, -1))  # no room to jump
    assert num_model_calls(50, 5, 1) == 50
    with pytest.raises(ValueError, match="jump_length"):
        repaint_schedule(10, 0, 2)
    with pytest.raises(ValueError, match="jump_n_sample"):
        repaint_schedule(10, 2, 1.5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp", "repaint"])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_known_pixels_kept_exactly(sampler, backend):
    from dalle2_fast.ops.sampling import sampling_family
    from tests.conftest import cpu_backends

    if backend not in cpu_backends(sampling_family):
        pytest.skip("not built")
    base = GaussianDiffusion(cosine_betas(200))
    known, mask = _half_mask()
    known = known + 0.05 * torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(jump_length=3, jump_n_sample=2) if sampler == "repaint" else {}
    x = run_sampler(sampler, correlated_denoiser(base), base, (3, 1, 4, 4), steps="12", known=known, mask=mask,
                    seeds=[1, 2, 3], backend=backend, **kw)
    assert torch.equal(x[..., :2], known[..., :2])
    assert torch.isfinite(x).all() and not torch.equal(x[..., 2:], known[..., 2:])


def test_repaint_harmonises_the_hole():
    """The hole's mean matches the exact conditional E[x_u | x_k] with resampling (r = 5); the
    plain blend (r = 1, no jumps) is measurably off — RePaint's point."""
    base = GaussianDiffusion(cosine_betas(1000))
    known, mask = _half_mask()
    nk = 8
    want = MU + SDC**2 * nk / (SDI**2 + nk * SDC**2) * 0.8
    errs = {}
    for r in (1, 5):
        x = run_sampler("repaint", correlated_denoiser(base), base, (400, 1, 4, 4), steps="50", known=known,
                        mask=mask, jump_length=5, jump_n_sample=r, seeds=range(400), backend="torch")
        errs[r] = abs(x[..., 2:].mean().item() - want)
    assert errs[5] < 0.01, errs
    assert errs[1] > 3 * errs[5] and errs[1] > 0.03, errs


def test_repaint_seeds_batch_independent_and_mask_zero_is_plain():
    base = GaussianDiffusion(cosine_betas(100))
    proc = respace(base, "10")
    den = correlated_denoiser(base)
    known, mask = _half_mask()
    big = repaint_sample(den, proc, (3, 1, 4, 4), known=known, mask=mask, jump_length=2, jump_n_sample=2,
                         seeds=[5, 6, 7], backend="torch")
    small = repaint_sample(den, proc, (1, 1, 4, 4), known=known, mask=mask, jump_length=2, jump_n_sample=2,
                           seeds=[6], backend="torch")
    torch.testing.assert_close(big[1:2], small, rtol=0, atol=1e-6)
    # an all-zero mask keeps nothing: ancestral sampling with the blend is plain ancestral sampling
    den2 = exact_denoiser(base)
    zero = ddpm_sample(den2, proc, (2, 1, 3, 3), known=torch.zeros(2, 1, 3, 3), mask=torch.zeros(1, 1, 3, 3),
                       seeds=[1, 2], backend="torch")
    plain = ddpm_sample(den2, proc, (2, 1, 3, 3), seeds=[1, 2], backend="torch")
    torch.testing.assert_close(zero, plain, rtol=0, atol=1e-6)


def test_bad_input():
    base = GaussianDiffusion(cosine_betas(50))
    den = exact_denoiser(base)
    known, mask = _half_mask()
    with pytest.raises(ValueError, match="both known"):
        run_sampler("ddim", den, base, (2, 1, 4, 4), steps="5", known=known)
    with pytest.raises(ValueError, match="mask must be"):
        run_sampler("ddim", den, base, (2, 1, 4, 4), steps="5", known=known, mask=torch.ones(2, 1, 4, 3))
    with pytest.raises(ValueError, match="known must be"):
        run_sampler("ddim", den, base, (2, 1, 4, 4), steps="5", known=torch.ones(3, 1, 4, 4), mask=mask)
    with pytest.raises(ValueError, match="repaint needs"):
        run_sampler("repaint", den, base, (2, 1, 4, 4), steps="5")
    with pytest.raises(ValueError, match="repaint.*only"):
        run_sampler("ddim", den, base, (2, 1, 4, 4), steps="5", known=known, mask=mask, jump_length=3)
    with pytest.raises(ValueError, match="base must be"):
        run_sampler("repaint", den, base, (2, 1, 4, 4), steps="5", known=known, mask=mask, base="dpmpp")
    with pytest.raises(ValueError, match="cuda_graph"):
        run_sampler("ddim", den, base, (2, 1, 4, 4), steps="5", known=known, mask=mask, cuda_graph=True)


@pytest.mark.parametrize("sampler,eta,draws", [
    ("ddim", 0.0, lambda steps, jumps: 1 + 1),          # x_T, then the known region's noise once
    ("dpmpp", 0.0, lambda steps, jumps: 1 + 1),
    ("ddim", 1.0, lambda steps, jumps: 1 + steps),  # stochastic: the step's own noise, every step
    ("repaint", 0.0, lambda steps, jumps: 1 + 1 + 2 * jumps),  # each jump: its noise and a new known noise
])
def test_known_noise_is_drawn_once_per_deterministic_loop(sampler, eta, draws, monkeypatch):
    from dalle2_fast.diffusion import plan as plan_mod

    base = GaussianDiffusion(cosine_betas(100))
    known, mask = _half_mask()
    n = [0]
    draw = plan_mod.NoiseSource.draw
    monkeypatch.setattr(plan_mod.NoiseSource, "draw", lambda self: n.__setitem__(0, n[0] + 1) or draw(self))
    kw = dict(jump_length=3, jump_n_sample=2, base="ddim") if sampler == "repaint" else {}
    x = run_sampler(sampler, correlated_denoiser(base), base, (2, 1, 4, 4), steps="12", known=known, mask=mask,
                    seeds=[1, 2], backend="torch", eta=eta, **kw)
    s = repaint_schedule(12, 3, 2)
    jumps = sum(1 for a, b in zip(s, s[1:]) if b > a)
    assert n[0] == draws(12, jumps) and torch.equal(x[..., :2], known.expand(2, 1, 4, 4)[..., :2])
