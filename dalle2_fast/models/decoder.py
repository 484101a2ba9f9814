"""The unCLIP decoder P(x | z_i, y) (Ramesh et al. 2022, Sec. 2.1; GLIDE-style conditioning).

An ADM U-Net with learned variance, conditioned on the CLIP image embedding z_i twice:
projected and added to the timestep embedding (the U-Net's ``cond``), and projected into
``unet.cond_tokens`` (4) extra context tokens concatenated to the text encoder's outputs, which
every attention block cross-attends to (both done by :class:`~dalle2_fast.models.unet.UNet`).
The "text encoder outputs" here are CLIP's own token features (:class:`dalle2_fast.models.clip.TextEncoding`)
through a learned projection.

Classifier-free guidance: in training z_i is replaced by zeros with probability
``clip_drop_prob`` (10%) and the caption is dropped (all its tokens masked) with probability
``text_drop_prob`` (50%); sampling combines conditional and unconditional outputs in one batched
forward (``dalle2_fast.diffusion.ClassifierFreeGuidance``). Without a caption (variations) the
text is masked and z_i alone conditions the image.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.diffusion import (ClassifierFreeGuidance, DiffusionConfig, GaussianDiffusion, ddim_invert, respace,
                                   run_sampler)
from dalle2_fast.models.unet import UNet, UNetConfig, convert_v1_unet_state_dict
from dalle2_fast.seeding import Draws, check_seeds


def _default_unet() -> UNetConfig:
    return UNetConfig(image_size=32, in_channels=3, model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attention_resolutions=(16, 8), num_head_channels=32, learn_sigma=True,
                      use_scale_shift_norm=True, resblock_updown=True, cond_dim=64, context_dim=128,
                      cond_tokens=4)


def _default_decoder_diffusion() -> DiffusionConfig:
    return DiffusionConfig(schedule="cosine", num_timesteps=1000, mean_type="eps", var_type="learned_range",
                           loss="hybrid")


@dataclass(frozen=True)
class DecoderConfig:
    unet: UNetConfig = field(default_factory=_default_unet)  # cond_dim = clip_dim, context_dim, cond_tokens set
    diffusion: DiffusionConfig = field(default_factory=_default_decoder_diffusion)
    clip_dim: int = 64
    text_width: int = 128        # W of the CLIP token features
    text_len: int = 24
    clip_drop_prob: float = 0.1
    text_drop_prob: float = 0.5


@register_model("unclip_decoder")
class UnCLIPDecoder(Pretrained, nn.Module):
    """``decoder(x_t, t, image_embed, text_tokens, text_mask)`` -> U-Net output (B, 2*3 or 3, H, W).

    image_embed: (B, D) unit-norm z_i (zeros = dropped); text_tokens: (B, L, W); text_mask: (B, L)
    bool, True on real tokens (all False = no caption).
    """

    config_class = DecoderConfig

    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = self.config = config
        u = c.unet
        if u.cond_dim != c.clip_dim:
            raise ValueError(f"DecoderConfig: unet.cond_dim must equal clip_dim ({c.clip_dim}), got {u.cond_dim}")
        if not u.context_dim or not u.cond_tokens:
            raise ValueError("DecoderConfig: unet.context_dim and unet.cond_tokens (the paper's 4) must be set: "
                             "z_i is projected into extra context tokens")
        if u.learn_sigma != (c.diffusion.var_type == "learned_range"):
            raise ValueError("DecoderConfig: unet.learn_sigma must match diffusion.var_type == 'learned_range'")
        self.unet = UNet(u)
        self.text_proj = nn.Sequential(nn.LayerNorm(c.text_width), nn.Linear(c.text_width, u.context_dim))
        self.diffusion = GaussianDiffusion.from_config(c.diffusion)

    @classmethod
    def _upgrade_state_dict(cls, state: dict, config) -> dict:
        """Files with the U-Net's v1 attention-block keys (the shipped weights) load unchanged."""
        return convert_v1_unet_state_dict(state, prefix="unet.")

    def forward(self, x, t, image_embed, text_tokens, text_mask):  # noqa: D102
        # text context (B, L, context_dim), padding mask True = padded; the U-Net prepends the
        # cond_tokens CLIP tokens (never padded) and adds cond to the time embedding
        ctx = self.text_proj(text_tokens)
        return self.unet(x, t, cond=image_embed, context=ctx, context_mask=~text_mask.to(torch.bool))

    @property
    def image_size(self) -> int:
        """Side of the images this decoder draws (the base resolution of the cascade)."""
        return self.config.unet.image_size

    def _kwargs(self, image_embed, text_tokens=None, text_mask=None):
        b, c = image_embed.shape[0], self.config
        if text_tokens is None:  # no caption: every token masked
            text_tokens = image_embed.new_zeros(b, c.text_len, c.text_width)
            text_mask = torch.zeros(b, c.text_len, dtype=torch.bool, device=image_embed.device)
        if text_tokens.shape != (b, c.text_len, c.text_width):
            raise ValueError(f"UnCLIPDecoder: text tokens must be ({b}, {c.text_len}, {c.text_width}), got "
                             f"{tuple(text_tokens.shape)}")
        if text_mask is None or text_mask.shape != (b, c.text_len):
            raise ValueError(f"UnCLIPDecoder: text_mask must be ({b}, {c.text_len}) bool (True on real tokens), got "
                             f"{None if text_mask is None else tuple(text_mask.shape)}")
        return {"image_embed": image_embed, "text_tokens": text_tokens, "text_mask": text_mask.to(torch.bool)}

    @staticmethod
    def _text(text):
        return (None, None) if text is None else (text.tokens, text.mask)

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Hybrid loss (MSE on eps + lambda VLB for the variance) with CFG dropping.

        batch: ``image`` (B, 3, S, S) in [-1, 1], ``image_embed`` (B, D) unit-norm z_i, optional
        ``text_tokens`` (B, L, W) and ``text_mask`` (B, L) (absent: no caption), optional ``seeds`` /
        ``generator``. Per item: z_i dropped with ``clip_drop_prob``, the caption with
        ``text_drop_prob``, the timestep and the noise — all from the batch's draws."""
        x0, zi = batch["image"], batch["image_embed"]
        b, dev = x0.shape[0], x0.device
        kw = self._kwargs(zi, batch.get("text_tokens"), batch.get("text_mask"))
        draws = Draws.of(batch, b, dev)
        drop_clip = draws.bernoulli("clip_drop", self.config.clip_drop_prob)
        drop_text = draws.bernoulli("text_drop", self.config.text_drop_prob)
        kw["image_embed"] = torch.where(drop_clip[:, None], torch.zeros_like(zi), zi)
        kw["text_mask"] = kw["text_mask"] & ~drop_text[:, None]
        t = draws.randint("t", self.diffusion.num_timesteps)
        noise = draws.randn("noise", x0.shape[1:], x0.dtype)
        terms = self.diffusion.training_losses(self, x0, t, noise=noise, model_kwargs=kw)
        return {k: v.mean() for k, v in terms.items()}

    def guided(self, guidance: float, kw: dict):
        """The denoiser sampling uses: the decoder itself, or classifier-free guidance over
        (z_i, caption) against (z_i dropped, caption dropped) with scale ``guidance``."""
        if guidance == 1.0:
            return self
        null = {"image_embed": torch.zeros_like(kw["image_embed"][:1]),
                "text_mask": torch.zeros_like(kw["text_mask"][:1])}
        return ClassifierFreeGuidance(self, guidance, null)

    @torch.no_grad()
    def sample(self, image_embed: torch.Tensor, text=None, *, seeds: Sequence[int], steps: int | str | None = 50,
               guidance: float = 3.0, sampler: str = "ddim", eta: float = 1.0, clip: str | None = "dynamic",
               x_T: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] for z_i (B, D) and an optional caption encoding (``.tokens``
        (B, L, W), ``.mask`` (B, L)); image i depends only on seeds[i]. ``steps`` in the respacing
        vocabulary; classifier-free guidance ``guidance`` (1 = off). ``x_T``: start from this latent
        (e.g. from :meth:`invert`, then use ``eta=0``) instead of seeded noise. Defaults: DDIM with
        ``eta=1`` (the DDPM posterior variance, per-image seeded noise) and dynamic thresholding of
        x0 (Saharia et al. 2022) — on the shipped shapes decoder they raised the caption match of new
        single-object prompts from 62% (eta 0, static clip) to 80% (seed-1 selection set,
        benchmarks/results/cpu-xeon-2core/unclip-shipped/)."""
        b = image_embed.shape[0]
        seeds = check_seeds(seeds, b)
        kw = self._kwargs(image_embed, *self._text(text))
        s = self.image_size
        start = (b, 3, s, s) if x_T is None else x_T
        return run_sampler(sampler, self.guided(guidance, kw), self.diffusion, start, steps=steps, eta=eta,
                           model_kwargs=kw, seeds=seeds, clip=clip, progress=progress, device=image_embed.device)

    @torch.no_grad()
    def invert(self, images: torch.Tensor, image_embed: torch.Tensor, text=None, *, steps: int | str = 50,
               guidance: float = 1.0, progress: bool = False) -> torch.Tensor:
        """DDIM inversion (eta = 0): the x_T that :meth:`sample` with the same ``steps``, ``guidance``
        and ``eta=0, clip=None`` maps back to ``images`` (B, 3, S, S) in [-1, 1]. Used for variations
        from the input image and text-diff edits (Ramesh et al. Sec. 3.3)."""
        s = self.image_size
        if images.dim() != 4 or images.shape[1:] != (3, s, s):
            raise ValueError(f"UnCLIPDecoder.invert: images must be (B, 3, {s}, {s}), got {tuple(images.shape)}")
        kw = self._kwargs(image_embed, *self._text(text))
        return ddim_invert(self.guided(guidance, kw), respace(self.diffusion, steps), images, model_kwargs=kw,
                           progress=progress)
