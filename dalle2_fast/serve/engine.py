"""What runs a batch: the unCLIP pipeline at one fixed batch shape.

Per-image seeds make an image's noise independent of its batch, but on the CPU a forward pass's
floating-point results depend on the batch *size* (GEMM and convolution kernels are chosen and
blocked per shape): measured on the shipped pipeline (8/6/3 steps, 2 threads), the same image
drawn in batches of 1, 2, 5 and 8 differs by up to 1.4e-4, enough to change PNG bytes. At one
shape the position in the batch made no difference (bit-identical at positions 0-3 of 4). So
with ``fixed_batch_shape`` every batch is padded to ``max_batch`` (copies of its last image,
thrown away): a request's bytes are the same whether it is served alone or with others. The
cost: a lone request pays for a full batch (see the ``serve`` benchmark).
"""
from __future__ import annotations

import threading
from typing import Sequence

import torch

from dalle2_fast.seeding import check_seed

GENERATION_SETTINGS = ("prior_steps", "decoder_steps", "upsampler_steps", "prior_guidance", "decoder_guidance")
VARIATION_SETTINGS = ("decoder_steps", "upsampler_steps", "decoder_guidance", "latent", "eta")
EDIT_SETTINGS = (*GENERATION_SETTINGS, "jumps", "image_mix", "mask_reduce", "harmonize")


def _pad_rows(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``x`` (B, ...) with its last row repeated ``pad`` more times (a fixed batch shape)."""
    return torch.cat([x, x[-1:].expand(pad, *x.shape[1:])]) if pad else x


class Engine:
    """``generate(prompts, seeds, settings)``, ``variations(embeds, seeds, settings, latents)`` and
    ``edit(prompts, images, fills, seeds, settings)`` -> images (3, H, W) in [-1, 1], each batch
    run at ``batch_shape`` images when that is set."""

    def __init__(self, pipe, batch_shape: int | None):
        self.pipe = pipe
        self.batch_shape = batch_shape
        self.lock = threading.Lock()  # one batch at a time: torch uses every core it was given

    @property
    def image_size(self) -> int:
        return self.pipe.image_size

    def settings(self, kind: str, overrides: dict) -> dict:
        """Every option a request's images use (the pipeline's defaults for what it leaves out)."""
        if kind == "variation":  # latent / eta: the pipeline's variations defaults; no eta for fresh noise
            from dalle2_fast.pipeline import VARIATION_ETA

            overrides = dict(overrides)
            latent, eta = overrides.pop("latent", "inverted"), overrides.pop("eta", VARIATION_ETA)
            if latent == "inverted" and not callable(getattr(getattr(self.pipe, "decoder", None), "invert", None)):
                raise ValueError("latent: this server's decoder cannot invert images; send latent=noise")
            s = self.pipe.settings(**overrides)
            return {**{k: s[k] for k in VARIATION_SETTINGS[:3]}, "latent": latent,
                    **({"eta": eta} if latent == "inverted" else {})}
        s = self.pipe.settings(**overrides)
        if kind in ("edit", "unchanged"):  # the pipeline's inpainting defaults (jumps overridable)
            from dalle2_fast.inpainting import EDIT_DEFAULTS

            s.update(EDIT_DEFAULTS, **{k: overrides[k] for k in ("jumps",) if k in overrides})
            return {k: s[k] for k in EDIT_SETTINGS}
        return {k: s[k] for k in GENERATION_SETTINGS}

    def _pad(self, n: int) -> int:
        if self.batch_shape is None:
            return 0
        if n > self.batch_shape:
            raise ValueError(f"Engine: a batch of {n} images is larger than the fixed shape {self.batch_shape}")
        return self.batch_shape - n

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], seeds: Sequence[int], settings: dict) -> torch.Tensor:
        n = len(prompts)
        for s in seeds:
            check_seed(s)
        pad = self._pad(n)
        prompts, seeds = list(prompts) + [prompts[-1]] * pad, list(seeds) + [seeds[-1]] * pad
        with self.lock:
            text, z = self.pipe.text_to_embeddings(prompts, seeds, settings["prior_steps"],
                                                   settings["prior_guidance"])
            x = self.pipe.decode_embeddings(z, text, seeds, settings["decoder_steps"], settings["upsampler_steps"],
                                            settings["decoder_guidance"])
        return x[:n]

    @torch.no_grad()
    def image_embed(self, image: torch.Tensor) -> torch.Tensor:
        """z_i (D,) of one image (3, H, W) in [-1, 1], always encoded alone (batch 1), as the
        pipeline's variations encode it (unnormalised for a decoder that reads it so)."""
        embed = getattr(self.pipe, "_image_embed", None)
        with self.lock:
            if embed is not None:
                return embed(image[None])[0]
            return self.pipe.clip.encode_image(image[None].to(self.pipe.device))[0]

    @torch.no_grad()
    def invert(self, image: torch.Tensor, embed: torch.Tensor, settings: dict) -> torch.Tensor:
        """x_T (3, s, s): the DDIM inversion of one image (3, H, W) under its z_i ``embed`` (D,),
        always computed alone (batch 1: the same floats whatever the company), with the steps and
        guidance the decode uses (:func:`dalle2_fast.manipulations.invert_images`)."""
        from dalle2_fast.manipulations import invert_images

        kw = {k: settings[k] for k in ("decoder_steps", "decoder_guidance")}
        with self.lock:
            return invert_images(self.pipe, image[None], embed[None], kw)[0]

    @torch.no_grad()
    def variations(self, embeds: torch.Tensor, seeds: Sequence[int], settings: dict,
                   latents: torch.Tensor | None = None) -> torch.Tensor:
        """Images that keep the CLIP content ``embeds`` (B, D) (the paper's variations:
        ``UnCLIPPipeline.variations``): decoded from ``latents`` (B, 3, s, s), the inputs' inverted
        x_T, with DDIM at ``settings['eta']`` when ``settings['latent']`` is 'inverted', else from new noise."""
        n = len(seeds)
        pad = self._pad(n)
        z = _pad_rows(embeds, pad)
        seeds = list(seeds) + [seeds[-1]] * pad
        extra = {}
        if settings.get("latent", "noise") == "inverted":
            if latents is None or len(latents) != n:
                raise ValueError(f"Engine.variations: latent='inverted' needs one inverted latent per image ({n}), got "
                                 f"{None if latents is None else len(latents)}")
            extra = {"x_T": _pad_rows(latents, pad).to(self.pipe.device), "decoder_eta": settings["eta"]}
        with self.lock:
            x = self.pipe.decode_embeddings(z, None, seeds, settings["decoder_steps"], settings["upsampler_steps"],
                                            settings["decoder_guidance"], **extra)
        return x[:n]

    @torch.no_grad()
    def edit(self, prompts: Sequence[str], images: torch.Tensor, fills: torch.Tensor, seeds: Sequence[int],
             settings: dict) -> torch.Tensor:
        """Inpainting (the pipeline's RePaint): ``images`` (B, 3, S, S) in [-1, 1] kept where ``fills``
        (B, 1, S, S) is 0, filled from ``prompts`` where it is 1 (``UnCLIPPipeline.inpaint``)."""
        from dalle2_fast.inpainting import edit_batch

        n = len(prompts)
        for s in seeds:
            check_seed(s)
        pad = self._pad(n)
        prompts, seeds = list(prompts) + [prompts[-1]] * pad, list(seeds) + [seeds[-1]] * pad
        images, fills = _pad_rows(images, pad), _pad_rows(fills, pad)
        dev = self.pipe.device
        with self.lock:
            x = edit_batch(self.pipe, images.to(dev), fills.to(dev), list(prompts), list(seeds), settings,
                           jumps=settings["jumps"], image_mix=settings["image_mix"],
                           mask_reduce=settings["mask_reduce"], harmonize_pass=settings["harmonize"])
        return x[:n]


__all__ = ["Engine", "GENERATION_SETTINGS", "VARIATION_SETTINGS", "EDIT_SETTINGS"]
