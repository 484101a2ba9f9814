"""Diffusion core: schedules, the Gaussian process (losses, VLB, learned variance),
respacing, samplers (plain functions) and guidance (denoiser wrappers).

    diffusion = GaussianDiffusion(cosine_betas(1000), mean_type="eps", var_type="learned_range", loss="hybrid")
    terms = diffusion.training_losses(unet, x0, t)                # unet(x_t, t, **kw) -> (B, 2C, H, W)
    fast = respace(diffusion, "ddim25")
    images = ddim_sample(ClassifierFreeGuidance(unet, 3.0, {"y": null}), fast, (16, 3, 64, 64),
                         model_kwargs={"y": labels}, seeds=range(16), progress=True)
"""
from dalle2_fast.diffusion.conventions import FROM_CONFIG, SamplingConfig
from dalle2_fast.diffusion.gaussian import DiffusionConfig, GaussianDiffusion, clip_x0
from dalle2_fast.diffusion.guidance import (ClassifierFreeGuidance, ClassifierGuidance, CLIPGuidance,
                                            GradientGuidance, ImageGuidance, SplitGuidance, gram_matrix)
from dalle2_fast.diffusion.plan import SamplingNaNError
from dalle2_fast.diffusion.repaint import num_model_calls, repaint_sample, repaint_schedule
from dalle2_fast.diffusion.respace import respace, space_timesteps
from dalle2_fast.diffusion.samplers import (SAMPLERS, ddim_invert, ddim_sample, ddpm_sample, dpmpp_2m_sample,
                                            run_sampler)
from dalle2_fast.diffusion.schedules import betas_for_alpha_bar, cosine_betas, get_betas, linear_betas
from dalle2_fast.diffusion.timesteps import LossSecondMomentSampler, UniformSampler

__all__ = [
    "GaussianDiffusion", "DiffusionConfig", "SamplingConfig", "FROM_CONFIG", "clip_x0", "linear_betas", "cosine_betas", "betas_for_alpha_bar",
    "get_betas", "respace", "space_timesteps", "SAMPLERS", "run_sampler", "ddpm_sample", "ddim_sample", "dpmpp_2m_sample", "ddim_invert",
    "repaint_sample", "repaint_schedule", "num_model_calls",
    "SamplingNaNError", "ClassifierFreeGuidance", "SplitGuidance", "ClassifierGuidance", "CLIPGuidance", "ImageGuidance",
    "GradientGuidance", "gram_matrix", "UniformSampler", "LossSecondMomentSampler",
]
