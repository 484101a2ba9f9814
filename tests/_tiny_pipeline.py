"""A tiny randomly initialised unCLIP pipeline (the recipe's architectures at toy widths: CLIP,
a 1-layer diffusion prior, a 16x16 decoder and one 16->32 upsampler) with few steps: fast enough
for batch-job and service tests on a 2-core CPU. Random weights draw noise-like images, which is
all these tests need (bytes, seeds, batching, files)."""
from pathlib import Path

import torch

TINY_DEFAULTS = dict(prior_steps=2, decoder_steps=2, upsampler_steps=1, prior_guidance=2.0, decoder_guidance=3.0)


def tiny_pipeline(seed: int = 0):
    from dalle2_fast.pipeline import UnCLIPPipeline
    from dalle2_fast.recipes.unclip import UnCLIPRecipe, build_pipeline

    r = UnCLIPRecipe(base_res=16, upsample_res=(32,), prior_width=32, prior_layers=1, decoder_channels=16,
                     upsampler_channels=16)
    p = build_pipeline(r, seed=seed)
    return UnCLIPPipeline(p.clip, p.prior, p.decoder, p.upsamplers, defaults=TINY_DEFAULTS)


def save_tiny_pipeline(path: Path, seed: int = 0) -> Path:
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        return tiny_pipeline(seed).save_pretrained(path)
    finally:
        torch.set_num_threads(n)
