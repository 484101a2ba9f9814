"""unCLIP priors P(z_i | y): diffusion prior and autoregressive prior (Ramesh et al. 2022, Sec. 2.1)."""
from dalle2_fast.models.prior.autoregressive import ARPriorConfig, AutoregressivePrior
from dalle2_fast.models.prior.diffusion_prior import DiffusionPrior, DiffusionPriorConfig
from dalle2_fast.models.prior.quantize import PCAQuantizer, QuantileBuckets
from dalle2_fast.models.prior.transformer import attention

__all__ = ["ARPriorConfig", "AutoregressivePrior", "DiffusionPrior", "DiffusionPriorConfig", "PCAQuantizer",
           "QuantileBuckets", "attention"]
