"""diffusers scheduler configs -> our process + sampling conventions; DDPMScheduler's steps (Stable
unCLIP's prior scheduler) one at a time against ours with the same model outputs and noise."""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from dalle2_fast.checkpoint import CheckpointError  # noqa: E402
from dalle2_fast.diffusion import GaussianDiffusion, cosine_betas, run_sampler  # noqa: E402
from dalle2_fast.interop.diffusers_schedulers import scheduler_conventions  # noqa: E402
from tests.interop._unclip_refs import Recorder  # noqa: E402


def test_karlo_schedulers_map_to_our_conventions():
    d, s, r = scheduler_conventions(dict(diffusers.UnCLIPScheduler(prediction_type="sample", clip_sample_range=5.0)
                                         .config), "prior")
    assert (d.schedule, d.mean_type, d.var_type, s.sampler, s.spacing, s.clip, r) == (
        "cosine", "x0", "fixed_small", "ddpm", "linspace", None, 5.0)
    d, s, r = scheduler_conventions(dict(diffusers.UnCLIPScheduler(variance_type="learned_range").config), "dec")
    assert (d.mean_type, d.var_type, d.loss, s.clip, r) == ("eps", "learned_range", "hybrid", "static", 1.0)


def test_ddpm_scheduler_options():
    d, s, _ = scheduler_conventions(dict(diffusers.DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", variance_type="fixed_large",
        timestep_spacing="trailing", clip_sample=False).config), "x")
    assert (d.mean_type, d.var_type, s.spacing, s.clip) == ("v", "fixed_large", "trailing", None)
    bad = [(dict(thresholding=True), "thresholding"), (dict(steps_offset=1), "steps_offset"),
           (dict(beta_schedule="scaled_linear"), "beta_schedule"), (dict(prediction_type="flow"), "prediction_type")]
    for kw, word in bad:
        cfg = {**dict(diffusers.DDPMScheduler().config), **kw}
        with pytest.raises(CheckpointError, match=word):
            scheduler_conventions(cfg, "x")
    with pytest.raises(CheckpointError, match="EulerDiscreteScheduler"):
        scheduler_conventions({"_class_name": "EulerDiscreteScheduler"}, "x")


@pytest.mark.parametrize("pred", ["sample", "epsilon"])
def test_ddpm_scheduler_steps_equal_ours(pred):
    """'leading' spacing, fixed_small_log variance, clip 5 (Stable unCLIP's prior) / 1: from our x_k,
    DDPMScheduler (float64 tables) with the same model output and noise lands on our x_(k+1)."""
    import diffusers.schedulers.scheduling_ddpm as sd

    cfg = dict(diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=pred, clip_sample=True,
                                       clip_sample_range=5.0 if pred == "sample" else 1.0,
                                       variance_type="fixed_small_log").config)
    dconf, sconf, rng = scheduler_conventions(cfg, "x")
    diffusion = GaussianDiffusion.from_config(dconf)
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(0)) / 3

    def model(x, t):  # a fixed smooth function of (x, t)
        return torch.tanh(x @ w + t[:, None].float() / 1000) * (3.0 if pred == "sample" else 1.0)

    def denoiser(x, t):
        out = model(x, t)
        return out.clamp(-rng, rng) if pred == "sample" else out

    steps = 7
    with Recorder() as rec:
        run_sampler(sconf.sampler, denoiser, diffusion, (3, 8), steps=sconf.steps(steps), seeds=[1, 2, 3],
                    clip=sconf.clip)
    sched = diffusers.DDPMScheduler.from_config(cfg)
    sched.set_timesteps(steps)
    betas = cosine_betas(1000)
    sched.betas, sched.alphas = betas, 1 - betas
    sched.alphas_cumprod, sched.one = torch.cumprod(1 - betas, 0), torch.tensor(1.0, dtype=torch.float64)
    xs = [rec.draws[0]] + rec.xs
    for k, t in enumerate(sched.timesteps.tolist()):
        noise = rec.draws[k + 1].double()
        saved = sd.randn_tensor
        sd.randn_tensor = lambda shape, **kw: noise  # noqa: E731
        try:
            want = sched.step(model(xs[k], torch.full((3,), t)).double(), t, xs[k].double()).prev_sample
        finally:
            sd.randn_tensor = saved
        torch.testing.assert_close(xs[k + 1].double(), want, atol=2e-5, rtol=2e-5)
