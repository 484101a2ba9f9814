"""Samplers: recover a known Gaussian with the exact-score denoiser, per-sample seeds and
timesteps, DDIM determinism and inversion, NaN detection, progress, CUDA-graph capture."""
import pytest
import torch

from dalle2_fast.diffusion import (GaussianDiffusion, SamplingNaNError, cosine_betas, ddim_invert, ddim_sample,
                                   ddpm_sample, dpmpp_2m_sample, linear_betas, respace)
from tests.conftest import HAS_GPU

MU, SD = 0.3, 0.5  # data ~ N(MU, SD^2) per coordinate


def exact_denoiser(base: GaussianDiffusion, mean_type: str = "eps", mu=None):
    """E[x0 | x_t] of Gaussian data (Tweedie), in ``mean_type``: the exact score model. It is
    called with trained timesteps, so it reads ``base``'s (un-respaced) schedule. ``mu``: the
    data mean, a float or a callable (x, **kw) -> (B,) per-sample means (conditional data)."""
    ab_all = base.alphas_cumprod

    def den(x, t, **kw):
        shape = (-1, *([1] * (x.dim() - 1)))
        ab = ab_all.to(x.device)[t].to(x.dtype).reshape(shape)
        m = MU if mu is None else (mu(x, **kw).to(x.dtype).reshape(shape) if callable(mu) else mu)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x0 = m + a * SD**2 / (ab * SD**2 + s * s) * (x - a * m)
        eps = (x - a * x0) / s
        return {"eps": eps, "x0": x0, "v": a * eps - s * x0}[mean_type]

    return den


CASES = [  # (sampler, var_type, mean_type, respacing, kwargs, backend)
    (ddpm_sample, "fixed_small", "eps", "250", {}, "cpu"),
    (ddpm_sample, "fixed_large", "x0", "250", {}, "torch"),
    (ddim_sample, "fixed_small", "v", "100", {}, "cpu"),
    (ddim_sample, "fixed_small", "eps", "100", {"eta": 1.0}, "cpu"),
    (dpmpp_2m_sample, "fixed_small", "eps", "50", {}, "cpu"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0].__name__}-{c[1]}-{c[2]}-{c[3]}-{c[5]}")
def test_recovers_gaussian(case):
    fn, var_type, mean_type, spacing, kw, backend = case
    base = GaussianDiffusion(cosine_betas(1000), mean_type=mean_type, var_type=var_type)
    proc = respace(base, spacing)
    x = fn(exact_denoiser(base, mean_type), proc, (3000, 1, 2, 2), generator=torch.Generator().manual_seed(0),
           backend=backend, **kw)
    assert abs(x.mean().item() - MU) < 0.02
    assert abs(x.std().item() / SD - 1) < 0.04, x.std().item()


def test_seeds_make_samples_batch_independent():
    base = GaussianDiffusion(linear_betas(200))
    proc = respace(base, "20")
    den = exact_denoiser(base)
    big = ddpm_sample(den, proc, (4, 2, 3, 3), seeds=[11, 12, 13, 14])
    small = ddpm_sample(den, proc, (2, 2, 3, 3), seeds=[13, 14])
    torch.testing.assert_close(big[2:], small, rtol=0, atol=0)
    other = ddpm_sample(den, proc, (2, 2, 3, 3), seeds=[14, 13])
    torch.testing.assert_close(other[1], small[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="one entry per sample"):
        ddpm_sample(den, proc, (2, 2, 3, 3), seeds=[1])


def test_per_sample_timesteps():
    """A (S, B) schedule runs each sample on its own timesteps in one batch."""
    base = GaussianDiffusion(cosine_betas(100))
    den = exact_denoiser(base)
    a = torch.tensor([99, 80, 50, 20, 0])
    b = torch.tensor([90, 60, 30, 10, 2])
    x_T = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    both = ddim_sample(den, base, x_T, timesteps=torch.stack([a, b], 1))
    one = ddim_sample(den, base, x_T[:1], timesteps=a)
    two = ddim_sample(den, base, x_T[1:], timesteps=b)
    torch.testing.assert_close(both, torch.cat([one, two]), rtol=0, atol=1e-6)
    dpm = dpmpp_2m_sample(den, base, x_T, timesteps=torch.stack([a, b], 1))
    torch.testing.assert_close(dpm[1:], dpmpp_2m_sample(den, base, x_T[1:], timesteps=b), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="strictly decreasing"):
        ddim_sample(den, base, x_T, timesteps=torch.tensor([5, 9]))


def test_ddim_deterministic_and_inverts():
    base = GaussianDiffusion(cosine_betas(1000))
    proc = respace(base, "200")
    den = exact_denoiser(base)
    x_T = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = ddim_sample(den, proc, x_T, eta=0.0)
    b = ddim_sample(den, proc, x_T.clone(), eta=0.0, generator=torch.Generator().manual_seed(99))
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # eta = 0 uses no randomness
    idx = torch.arange(0, 180)  # invert up to an intermediate level, then come back down
    x_t = ddim_invert(den, proc, a, timesteps=idx)
    back = ddim_sample(den, proc, x_t, timesteps=idx.flip(0))
    assert (back - a).abs().max() < 2e-2, (back - a).abs().max()
    assert (x_t - a).abs().max() > 0.5  # the inversion did move x


def test_nan_detection_names_the_step():
    base = GaussianDiffusion(cosine_betas(50))

    def bad(x, t):
        return torch.where(t.reshape(-1, 1, 1) < 20, torch.full_like(x, float("nan")), torch.zeros_like(x))

    with pytest.raises(SamplingNaNError, match="step 30") as e:
        ddim_sample(bad, base, (3, 2, 2))
    assert e.value.step == 30 and e.value.samples == [0, 1, 2]


def test_progress_and_callback(capsys):
    base = GaussianDiffusion(cosine_betas(10))
    seen = []
    ddim_sample(exact_denoiser(base), base, (2, 1, 2), progress=True, callback=lambda k, x, x0: seen.append(k))
    assert seen == list(range(10))
    assert "ddim" in capsys.readouterr().err


def test_bad_arguments():
    base = GaussianDiffusion(cosine_betas(10))
    den = exact_denoiser(base)
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(den, base, (2, 1, 2), eta=-1)
    with pytest.raises(ValueError, match="x_T must be"):
        ddim_sample(den, base, (2,))
    with pytest.raises(ValueError, match="CUDA"):
        ddim_sample(den, base, (2, 1, 2), cuda_graph=True)
    with pytest.raises(ValueError, match="step indices"):
        ddim_sample(den, base, (2, 1, 2), timesteps=torch.tensor([10, 3]))


@pytest.mark.gpu
@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample, dpmpp_2m_sample])
def test_cuda_graph_matches_eager(sampler):
    base = GaussianDiffusion(cosine_betas(1000))
    proc = respace(base, "25")
    den = exact_denoiser(base)
    seeds = [5, 6, 7, 8]
    eager = sampler(den, proc, (4, 3, 16, 16), seeds=seeds, device="cuda")
    graphed = sampler(den, proc, (4, 3, 16, 16), seeds=seeds, device="cuda", cuda_graph=True)
    again = sampler(den, proc, (4, 3, 16, 16), seeds=seeds, device="cuda", cuda_graph=True)  # cached replay
    torch.testing.assert_close(graphed, again, rtol=0, atol=0)
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_cuda_graph_nan_detection():
    base = GaussianDiffusion(cosine_betas(20))

    def bad(x, t):
        return torch.where(t.reshape(-1, 1, 1) < 5, torch.full_like(x, float("nan")), torch.zeros_like(x))

    with pytest.raises(SamplingNaNError, match="step 15"):
        ddim_sample(bad, base, (2, 2, 2), device="cuda", cuda_graph=True)


@pytest.mark.skipif(HAS_GPU, reason="checks the CPU refusal only")
def test_cuda_graph_refused_on_cpu():
    base = GaussianDiffusion(cosine_betas(5))
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        ddim_sample(exact_denoiser(base), base, (1, 1, 2), cuda_graph=True)
