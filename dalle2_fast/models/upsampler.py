"""The unCLIP diffusion upsamplers (Ramesh et al. 2022, Sec. 2.1 and App. C).

A U-Net without attention (only convolutions, so it trains on random crops and runs on the full
image) sees the noised high-resolution image concatenated with the low-resolution conditioning
image upsampled to its size. Noise-conditioning augmentation corrupts the conditioning image in
training: Gaussian blur for the first upsampler (``augment='blur'``), the BSR degradation pipeline
for the second (``augment='bsr'``); see :mod:`dalle2_fast.data.degradations`. Sampling uses few
DDIM steps over the respaced process.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.data.degradations import bsr_degrade, downsample, random_gaussian_blur
from dalle2_fast.diffusion import DiffusionConfig, GaussianDiffusion, ddim_sample, respace
from dalle2_fast.models.unet import UNet, UNetConfig
from dalle2_fast.nn.unet_blocks import AttentionBlock


def _default_unet() -> UNetConfig:
    return UNetConfig(image_size=64, in_channels=3, low_res_channels=3, model_channels=32, channel_mult=(1, 2, 2),
                      num_res_blocks=1, attention_resolutions=(), use_scale_shift_norm=True)


def _default_diffusion() -> DiffusionConfig:
    return DiffusionConfig(schedule="cosine", num_timesteps=1000, mean_type="eps", var_type="fixed_small",
                           loss="simple")


@dataclass(frozen=True)
class UpsamplerConfig:
    unet: UNetConfig = field(default_factory=_default_unet)  # in_channels 3 + low_res_channels 3
    diffusion: DiffusionConfig = field(default_factory=_default_diffusion)
    low_res: int = 32
    high_res: int = 64
    augment: str = "blur"                     # 'blur' (first upsampler) | 'bsr' (second) | 'none'
    blur_sigma: tuple[float, float] = (0.4, 0.6)
    train_crop: int = 0                       # high-res crop side for training (0 = whole image)

    def __post_init__(self):
        object.__setattr__(self, "blur_sigma", tuple(float(v) for v in self.blur_sigma))


@register_model("unclip_upsampler")
class UnCLIPUpsampler(Pretrained, nn.Module):
    """``upsampler(x_t, t, low_res)`` -> U-Net output; ``sample(low_res, seeds, steps)`` -> images."""

    config_class = UpsamplerConfig

    def __init__(self, config: UpsamplerConfig):
        super().__init__()
        c = self.config = config
        if c.high_res % c.low_res:
            raise ValueError(f"UpsamplerConfig: high_res ({c.high_res}) must be a multiple of low_res ({c.low_res})")
        if c.augment not in ("blur", "bsr", "none"):
            raise ValueError(f"UpsamplerConfig: augment must be 'blur', 'bsr' or 'none', got {c.augment!r}")
        if c.unet.in_channels != 3 or c.unet.low_res_channels != 3 or c.unet.attention_resolutions:
            raise ValueError("UpsamplerConfig: unet needs in_channels=3, low_res_channels=3 and no "
                             "attention_resolutions")
        if c.train_crop and (c.train_crop % (c.high_res // c.low_res) or c.train_crop > c.high_res):
            raise ValueError(f"UpsamplerConfig: train_crop ({c.train_crop}) must divide by the factor and fit")
        self.unet = UNet(c.unet)
        # convolutions only: drop the U-Net's middle self-attention (global, it would tie the model
        # to the training crop size)
        mid = self.unet.middle_block
        for i, layer in enumerate(mid):
            if isinstance(layer, AttentionBlock):
                mid[i] = nn.Identity()
        self.diffusion = GaussianDiffusion.from_config(c.diffusion)

    @property
    def factor(self) -> int:
        return self.config.high_res // self.config.low_res

    def forward(self, x, t, low_res):  # noqa: D102
        return self.unet(x, t, low_res=low_res)  # the U-Net upsamples low_res and concatenates it

    def degrade(self, hr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The training conditioning: high-res (B, 3, H, W) -> corrupted low-res (B, 3, H/f, W/f)."""
        size = (hr.shape[-2] // self.factor, hr.shape[-1] // self.factor)
        c = self.config
        if c.augment == "bsr":
            return bsr_degrade(hr, size, generator)
        lr = downsample(hr, size)
        return random_gaussian_blur(lr, generator, c.blur_sigma) if c.augment == "blur" else lr

    def loss(self, hr: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoising loss on (random crops of) high-res images (B, 3, high_res, high_res) in [-1, 1]."""
        g = generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        b, dev, crop = hr.shape[0], hr.device, self.config.train_crop
        if crop and crop < hr.shape[-1]:
            ys = torch.randint(0, hr.shape[-2] - crop + 1, (b,), generator=g).tolist()
            xs = torch.randint(0, hr.shape[-1] - crop + 1, (b,), generator=g).tolist()
            hr = torch.stack([hr[i, :, y:y + crop, x:x + crop] for i, (y, x) in enumerate(zip(ys, xs))])
        lr = self.degrade(hr, g)
        t = torch.randint(0, self.diffusion.num_timesteps, (b,), generator=g).to(dev)
        noise = torch.randn(hr.shape, generator=g).to(dev, hr.dtype)
        return self.diffusion.training_losses(self, hr, t, noise=noise, model_kwargs={"low_res": lr})["loss"].mean()

    @torch.no_grad()
    def sample(self, low_res: torch.Tensor, seeds: Sequence[int], steps: int = 10,
               progress: bool = False) -> torch.Tensor:
        """(B, 3, h, w) in [-1, 1] -> (B, 3, h*f, w*f); DDIM over ``steps`` respaced steps."""
        b, _, h, w = low_res.shape
        shape = (b, 3, h * self.factor, w * self.factor)
        return ddim_sample(self, respace(self.diffusion, str(steps)), shape, model_kwargs={"low_res": low_res},
                           seeds=list(seeds), clip="static", progress=progress, device=low_res.device)
