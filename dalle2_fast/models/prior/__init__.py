"""unCLIP priors P(z_i | y): diffusion prior and autoregressive prior (Ramesh et al. 2022, Sec. 2.1)."""
from dalle2_fast.models.prior.diffusion_prior import DiffusionPrior, DiffusionPriorConfig
from dalle2_fast.models.prior.transformer import attention

__all__ = ["DiffusionPrior", "DiffusionPriorConfig", "attention"]
