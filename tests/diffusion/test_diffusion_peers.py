"""Agreement with peers on the same inputs (test-only dependencies):
- diffusers DDPMScheduler / DDIMScheduler ('linear', 'squaredcos_cap_v2'): alphas_cumprod and
  one step's output (float64) to 1e-6;
- guided-diffusion's create_gaussian_diffusion: respacing, p_mean_variance with learned range,
  training_losses terms, one p_sample / ddim_sample step;
- diffusers DPMSolverMultistepScheduler (2M, data prediction): a whole 20-step sampling run.
"""
import warnings

import pytest
import torch

from dalle2_fast.diffusion import DiffusionConfig, GaussianDiffusion, cosine_betas, get_betas, linear_betas, respace
from dalle2_fast.diffusion.plan import ddim_table, ddpm_table
from dalle2_fast.diffusion.samplers import dpmpp_2m_sample
from dalle2_fast.ops import ddim_coefs, ddim_step, ddpm_coefs, ddpm_step

diffusers = pytest.importorskip("diffusers")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    gd_script = pytest.importorskip("guided_diffusion.script_util")

SCHEDULES = [("linear", "linear"), ("squaredcos_cap_v2", "cosine")]


def _toy_model(C_out):
    """A deterministic stand-in network: a smooth function of x and t (any batch)."""
    w = torch.linspace(-1, 1, C_out * 3, dtype=torch.float64).reshape(C_out, 3)

    def model(x, t):
        h = torch.einsum("oc,bc...->bo...", w[:, : x.shape[1]], x)
        return torch.tanh(h + 0.001 * t.double().reshape(-1, *([1] * (x.dim() - 1))))

    return model


@pytest.mark.parametrize("hf_name,ours", SCHEDULES)
def test_diffusers_alphas_cumprod(hf_name, ours):
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=hf_name)
    ab = GaussianDiffusion(get_betas(ours, 1000)).alphas_cumprod
    # diffusers keeps float32 tables: agreement is at float32 rounding, well inside 1e-6.
    assert (sched.alphas_cumprod.double() - ab).abs().max() < 1e-6


def _float64_tables(sched, betas):
    """Give a diffusers scheduler float64 tables of the same schedule (it stores float32)."""
    sched.betas = betas.clone()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, 0)
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)


@pytest.mark.parametrize("hf_name,ours", SCHEDULES)
@pytest.mark.parametrize("t", [999, 500, 1])
def test_diffusers_ddpm_step(hf_name, ours, t):
    betas = get_betas(ours, 1000)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=hf_name, clip_sample=True)
    _float64_tables(sched, betas)
    g = torch.Generator().manual_seed(t)
    x = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64)
    want = sched.step(eps, t, x, generator=torch.Generator().manual_seed(7)).prev_sample
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    d = GaussianDiffusion(betas)
    coefs = ddpm_table(d, torch.tensor([[t], [t - 1]]).expand(2, 3))[0]  # the step t -> t-1
    for backend in ("torch", "cpu"):
        got, _ = ddpm_step(x, eps, coefs, noise, clip="static", backend=backend)
        assert (got - want).abs().max() < 1e-6, backend


@pytest.mark.parametrize("hf_name,ours", SCHEDULES)
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_diffusers_ddim_step(hf_name, ours, eta):
    betas = get_betas(ours, 1000)
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule=hf_name, clip_sample=True)
    _float64_tables(sched, betas)
    sched.set_timesteps(50)
    ab = torch.cumprod(1 - betas, 0)
    g = torch.Generator().manual_seed(1)
    for t in (int(sched.timesteps[0]), int(sched.timesteps[25]), int(sched.timesteps[-1])):
        x = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
        eps = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
        z = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
        want = sched.step(eps, t, x, eta=eta, use_clipped_model_output=True, variance_noise=z).prev_sample
        prev = t - 1000 // 50
        ab_s = ab[prev] if prev >= 0 else torch.tensor(1.0, dtype=torch.float64)
        coefs = ddim_coefs(ab[t].expand(2), ab_s, eta)
        got, _ = ddim_step(x, eps, coefs, z, clip="static", backend="cpu")
        assert (got - want).abs().max() < 1e-6, t


def test_diffusers_dpmpp_2m_whole_run():
    """A 20-step DPM-Solver++(2M) run on the same timesteps and denoiser as diffusers'
    DPMSolverMultistepScheduler (its sigmas are float32, hence the looser tolerance)."""
    base = GaussianDiffusion(cosine_betas(1000))
    fast = respace(base, "20")
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                                                  algorithm_type="dpmsolver++", solver_order=2,
                                                  lower_order_final=False)
    sched.set_timesteps(timesteps=fast.timestep_map.flip(0).tolist())
    model = _toy_model(3)
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = x.clone()
    for t in sched.timesteps:
        y = sched.step(model(y, torch.full((4,), int(t))), t, y).prev_sample
    ours = dpmpp_2m_sample(model, fast, x)
    # The toy eps-model is no real denoiser (|x_0| grows to ~1e5): compare relatively.
    assert (ours - y).abs().max() < 1e-5 * y.abs().max()


# ----------------------------------------------------------------------------- guided-diffusion
def _pair(spacing, learn_sigma=True, schedule="cosine", predict_xstart=False, sigma_small=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = gd_script.create_gaussian_diffusion(steps=1000, learn_sigma=learn_sigma, sigma_small=sigma_small,
                                                     noise_schedule=schedule, predict_xstart=predict_xstart,
                                                     rescale_learned_sigmas=True, timestep_respacing=spacing)
    var = "learned_range" if learn_sigma else ("fixed_small" if sigma_small else "fixed_large")
    cfg = DiffusionConfig(schedule, 1000, "x0" if predict_xstart else "eps", var,
                          "hybrid" if learn_sigma else "simple", 0.001, spacing or None)
    return theirs, GaussianDiffusion.from_config(cfg)


@pytest.mark.parametrize("spacing", ["", "250", "10,10,3,2,2", "ddim25"])
def test_guided_respacing(spacing):
    theirs, ours = _pair(spacing)
    assert ours.timestep_map.tolist() == list(theirs.timestep_map)
    assert (ours.betas - torch.from_numpy(theirs.betas)).abs().max() < 1e-12


# guided-diffusion gathers its float64 tables as float32, so agreement is at float32 rounding.
TOL = 2e-5


@pytest.mark.parametrize("spacing,learn_sigma,predict_xstart", [("", True, False), ("50", True, False),
                                                               ("", False, True), ("10,10,3,2,2", False, False)])
def test_guided_p_mean_variance(spacing, learn_sigma, predict_xstart):
    theirs, ours = _pair(spacing, learn_sigma=learn_sigma, predict_xstart=predict_xstart)
    model = _toy_model(6 if learn_sigma else 3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, ours.num_timesteps // 2, ours.num_timesteps - 1])
    want = theirs.p_mean_variance(model, x, t, clip_denoised=True)
    got = ours.p_mean_variance(model, x, t, clip="static")
    for a, b in [("mean", "mean"), ("log_variance", "log_variance"), ("pred_xstart", "pred_x0")]:
        assert (got[b] - want[a].double()).abs().max() < TOL, a


@pytest.mark.parametrize("spacing,learn_sigma", [("", True), ("100", True), ("", False)])
def test_guided_training_losses(spacing, learn_sigma):
    theirs, ours = _pair(spacing, learn_sigma=learn_sigma)
    model = _toy_model(6 if learn_sigma else 3)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(5, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(5, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 7, ours.num_timesteps // 2, ours.num_timesteps - 1])
    want = theirs.training_losses(model, x0, t, noise=noise)
    got = ours.training_losses(model, x0, t, noise=noise)
    assert set(want) == set(got)
    for k in want:
        assert (got[k] - want[k].double()).abs().max() < TOL * (1 + want[k].abs().max()), k


@pytest.mark.parametrize("learn_sigma,sigma_small", [(True, False), (False, False), (False, True)])
def test_guided_p_sample_and_ddim_step(learn_sigma, sigma_small):
    """One ancestral step and one DDIM step of the fused kernels (through the samplers' tables)
    against guided-diffusion's p_sample / ddim_sample on the same noise."""
    theirs, ours = _pair("50", learn_sigma=learn_sigma, sigma_small=sigma_small)
    model = _toy_model(6 if learn_sigma else 3)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for i in (49, 20, 0):
        t = torch.full((3,), i)
        torch.manual_seed(i)
        want = theirs.p_sample(model, x, t, clip_denoised=True)["sample"]
        torch.manual_seed(i)
        noise = torch.randn_like(x)
        idx = torch.tensor([[i], [i - 1]]).expand(2, 3)
        out = model(x, ours.timestep_map[t])
        got, _ = ddpm_step(x, out, ddpm_table(ours, idx)[0], noise, clip="static", learned_var=learn_sigma,
                           backend="cpu")
        assert (got - want.double()).abs().max() < TOL, ("p_sample", i)
        torch.manual_seed(i)
        want = theirs.ddim_sample(model, x, t, clip_denoised=True, eta=0.5)["sample"]
        torch.manual_seed(i)
        noise = torch.randn_like(x)
        got, _ = ddim_step(x, out, ddim_table(ours, idx, 0.5)[0], noise, clip="static", backend="cpu")
        assert (got - want.double()).abs().max() < TOL, ("ddim", i)
