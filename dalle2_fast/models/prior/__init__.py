"""unCLIP priors P(z_i | y): diffusion prior and autoregressive prior (Ramesh et al. 2022, Sec. 2.1)."""
from dalle2_fast.models.prior.autoregressive import ARPriorConfig, AutoregressivePrior
from dalle2_fast.models.prior.conditioning import TextConditioning, select_best
from dalle2_fast.models.prior.diffusion_prior import DiffusionPrior, DiffusionPriorConfig, prior_diffusion_config
from dalle2_fast.models.prior.laion import LaionDiffusionPrior, LaionPriorConfig
from dalle2_fast.models.prior.quantize import PCAQuantizer, QuantileBuckets

__all__ = ["ARPriorConfig", "AutoregressivePrior", "DiffusionPrior", "DiffusionPriorConfig", "LaionDiffusionPrior",
           "LaionPriorConfig", "PCAQuantizer",
           "QuantileBuckets", "TextConditioning", "prior_diffusion_config", "select_best"]
