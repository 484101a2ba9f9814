"""The diffusion process itself: schedules, q_sample / posterior identities, parameterisations,
training losses (eps / x0 / v targets, hybrid loss with stop-grad on the mean), the VLB in
bits/dim, respacing, importance-sampled timesteps, configs and bad input."""
import math

import pytest
import torch

from dalle2_fast.diffusion import (DiffusionConfig, GaussianDiffusion, LossSecondMomentSampler, UniformSampler,
                                   cosine_betas, get_betas, linear_betas, respace, space_timesteps)


def test_schedules():
    b = linear_betas(1000)
    assert b.dtype == torch.float64 and b[0] == 1e-4 and abs(b[-1] - 0.02) < 1e-15
    assert abs(linear_betas(4000)[-1] - 0.005) < 1e-15  # scaled by 1000 / T
    c = cosine_betas(1000)
    assert c.dtype == torch.float64 and c.max() == 0.999  # the cap bites at the end
    ab = torch.cumprod(1 - c, 0)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert abs(ab[499] - f(500) / f(0)) < 1e-12  # abar follows Eq. 17 where uncapped
    torch.testing.assert_close(get_betas([0.1, 0.2]), torch.tensor([0.1, 0.2], dtype=torch.float64))
    with pytest.raises(ValueError, match="betas must lie in"):
        get_betas([0.1, 0.0])
    with pytest.raises(ValueError, match="schedule must be"):
        get_betas("quadratic", 10)
    with pytest.raises(ValueError, match="num_timesteps is required"):
        get_betas("linear")


def _diff(**kw):
    return GaussianDiffusion(cosine_betas(100), **kw)


def test_q_sample_and_posterior():
    d = _diff()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4000, 1, dtype=torch.float64, generator=g) * 0.5 + 0.2
    t = torch.full((4000,), 60)
    xt = d.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    ab = d.alphas_cumprod[60]
    assert abs(xt.mean() - ab.sqrt() * 0.2) < 0.05
    assert abs(xt.var() - (ab * 0.25 + 1 - ab)) < 0.05
    # Posterior identity: q(x_{t-1}|x_t,x0) mean with x_t = sqrt(a_t) x_{t-1} (no noise) ...
    mean, var, lv = d.q_posterior(x0, xt, t)
    c0, c1 = d.tables["post_c_x0"][60], d.tables["post_c_xt"][60]
    torch.testing.assert_close(mean, c0 * x0 + c1 * xt)
    torch.testing.assert_close(lv, var.log())


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_parameterisations_round_trip(mean_type):
    d = _diff(mean_type=mean_type)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 50, 99])
    xt = d.q_sample(x0, t, noise)
    target = d.target(x0, noise, t)  # what a perfect model outputs
    torch.testing.assert_close(d.x0_from_output(xt, t, target), x0)
    torch.testing.assert_close(d.eps_from_x0(xt, t, x0), noise)
    torch.testing.assert_close(d.output_from_x0(xt, t, x0), target)


@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_perfect_model_has_zero_mse(mean_type):
    d = _diff(mean_type=mean_type)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 2, 4, 4, generator=g)
    noise = torch.randn(3, 2, 4, 4, generator=g)
    t = torch.tensor([3, 40, 90])

    def oracle(x, tt):  # knows x0: outputs the exact target
        return d.target(x0, noise, t)

    terms = d.training_losses(oracle, x0, t, noise=noise)
    assert terms["mse"].max() < 1e-10
    wrong = d.training_losses(lambda x, tt: torch.zeros_like(x), x0, t, noise=noise)
    assert wrong["mse"].min() > 0.01


def test_hybrid_loss_stop_grad_and_weight():
    d = GaussianDiffusion(cosine_betas(100), var_type="learned_range", loss="hybrid", vlb_weight=0.01)
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 2, 4, 4, generator=g) * 2 - 1
    out = torch.randn(4, 4, 4, 4, generator=g, requires_grad=True)
    t = torch.tensor([0, 10, 50, 99])
    terms = d.training_losses(lambda x, tt: out, x0, t, noise=torch.randn(x0.shape, generator=g))
    (gm,) = torch.autograd.grad(terms["vb"].sum(), out, retain_graph=True)
    assert gm[:, :2].abs().max() == 0  # VLB term: no gradient into the mean channels
    assert gm[:, 2:].abs().max() > 0  # ... but trains the variance channels
    vb_raw = d.vb_terms_bpd(None, x0, d.q_sample(x0, t, torch.zeros_like(x0)), t, model_output=out)["output"]
    assert vb_raw.shape == (4,)
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    kl = GaussianDiffusion(cosine_betas(100), var_type="learned_range", loss="kl")
    tk = kl.training_losses(lambda x, tt: out, x0, t)
    assert set(tk) == {"loss", "vb"}


def test_vlb_bits_per_dim():
    """The full VLB: an oracle-x0 model beats a zero-output one, and the terms add up."""
    d = GaussianDiffusion(cosine_betas(20), mean_type="x0", var_type="fixed_small")
    g = torch.Generator().manual_seed(4)
    x0 = (torch.randint(0, 256, (2, 1, 4, 4), generator=g).double() / 127.5 - 1.0)
    good = d.calc_bpd_loop(lambda x, t: x0.expand_as(x), x0, generator=g)
    bad = d.calc_bpd_loop(lambda x, t: torch.zeros_like(x), x0, generator=g)
    assert good["vb"].shape == (2, 20) and good["total_bpd"].shape == (2,)
    torch.testing.assert_close(good["total_bpd"], good["vb"].sum(1) + good["prior_bpd"])
    assert (good["total_bpd"] < bad["total_bpd"]).all()
    assert (good["prior_bpd"] >= 0).all() and (good["prior_bpd"] < 1e-2).all()


@pytest.mark.parametrize("spec", ["25", "10,10,3,2,2", "ddim20", [10, 5]])  # a list: section counts
def test_respacing_keeps_alphas_cumprod(spec):
    base = GaussianDiffusion(linear_betas(100), var_type="learned_range", loss="hybrid")
    fast = respace(base, spec)
    keep = space_timesteps(100, spec)
    assert fast.timestep_map.tolist() == keep
    torch.testing.assert_close(fast.alphas_cumprod, base.alphas_cumprod[keep])
    assert fast.var_type == "learned_range" and fast.num_timesteps == len(keep)
    # the model is called with trained timesteps
    seen = []
    fast.call_model(lambda x, t: seen.append(t) or x, torch.zeros(1, 1), torch.tensor([len(keep) - 1]))
    assert seen[0].item() == keep[-1]


def test_respace_explicit_steps():
    base = GaussianDiffusion(linear_betas(100))
    fast = respace(base, keep=[99, 0, 5])
    assert fast.timestep_map.tolist() == [0, 5, 99]
    torch.testing.assert_close(fast.alphas_cumprod, base.alphas_cumprod[[0, 5, 99]])
    with pytest.raises(ValueError, match="exactly one"):
        respace(base, "10", keep=[1])


def test_respacing_errors():
    with pytest.raises(ValueError, match="cannot take 20 steps"):
        space_timesteps(30, "20,20")
    with pytest.raises(ValueError, match="1 <= N <= 100"):
        space_timesteps(100, "ddim101")
    with pytest.raises(ValueError, match="expected a step count"):
        space_timesteps(100, True)


@pytest.mark.parametrize("T,n", [(1000, 300), (100, 33), (1000, 7), (10, 10), (1000, 1)])
def test_respacing_vocabulary_gives_exact_counts(T, n):
    """An int, "N" and "ddimN" all give exactly N steps in [0, T), for any N <= T (ddim300 of
    1000 has no integer stride: the fractional stride is used); "ddimN" starts at 0."""
    for spec in (n, str(n), f"ddim{n}"):
        keep = space_timesteps(T, spec)
        assert len(keep) == n and keep == sorted(set(keep)) and 0 <= keep[0] and keep[-1] < T, spec
    assert space_timesteps(T, f"ddim{n}")[0] == 0
    assert space_timesteps(T, n) == space_timesteps(T, str(n))
    if n > 1:
        assert space_timesteps(T, n)[-1] == T - 1  # "N" includes the last trained step
    assert space_timesteps(100, "ddim25") == list(range(0, 100, 4))  # guided-diffusion's integer stride
    with pytest.raises(ValueError, match="expected"):
        space_timesteps(100, "fast")


def test_importance_sampler():
    s = LossSecondMomentSampler(10, history=2, uniform_prob=0.0)
    g = torch.Generator().manual_seed(5)
    t, w = s.sample(64, generator=g)
    assert t.shape == (64,) and torch.allclose(w, torch.ones(64))  # uniform until warmed up
    for _ in range(2):
        t = torch.arange(10)
        s.update(t, torch.where(t == 3, 10.0, 1.0).double())
    assert s.warmed_up()
    t, w = s.sample(20000, generator=g)
    frac3 = (t == 3).double().mean()
    assert abs(frac3 - 10 / 19) < 0.02  # p_t proportional to sqrt(E[L_t^2])
    torch.testing.assert_close(w[t == 3][0], torch.tensor(1.0 / (10 * 10 / 19)).float())
    assert UniformSampler(5).weights().shape == (5,)


def test_config_round_trip_and_errors():
    cfg = DiffusionConfig("linear", 200, "v", "learned_range", "hybrid", 0.001, "ddim20")
    d = GaussianDiffusion.from_config(cfg)
    assert d.num_timesteps == 20 and d.mean_type == "v" and d.timestep_map[1] == 10
    with pytest.raises(ValueError, match="learned_range"):
        GaussianDiffusion(cosine_betas(10), var_type="learned_range", loss="simple")
    with pytest.raises(ValueError, match="mean_type"):
        GaussianDiffusion(cosine_betas(10), mean_type="score")
    with pytest.raises(ValueError, match="integer"):
        _diff().q_sample(torch.zeros(2, 3), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="2C=6"):
        GaussianDiffusion(cosine_betas(10), var_type="learned_range", loss="hybrid").p_mean_variance(
            lambda x, t: x, torch.zeros(2, 3, 4), torch.tensor([1, 2]))
