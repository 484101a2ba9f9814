"""The unCLIP diffusion upsamplers (Ramesh et al. 2022, Sec. 2.1 and App. C).

A U-Net without attention (only convolutions, so it trains on random crops and runs on the full
image) sees the noised high-resolution image concatenated with the low-resolution conditioning
image upsampled to its size. Noise-conditioning augmentation corrupts the conditioning image in
training (Gaussian blur for the first upsampler, the BSR degradation pipeline for the second):
that is the training data's job (``dalle2_fast.recipes.unclip`` with
:mod:`dalle2_fast.data.degradations`), so ``loss`` takes the corrupted low-res image in the batch.
With ``residual`` the model diffuses hr - bicubic(low_res) (SRDiff-style) instead of hr. Sampling
uses few DDIM steps over the respaced process.

Karlo's 64 -> 256 upsampler (diffusers' ``super_res_first`` / ``super_res_last``) differs in two
conventions, each a config field whose default is ours: ``low_res_upsample='bicubic_antialias'``
(the low-res image is upsampled once, outside the network, bicubic with antialiasing, instead of
bilinearly inside it at every step) and ``last_step_unet`` (a second network of the same
architecture, ``unet_last``, runs the final sampling step); its ``sampling`` is ancestral with
x0 clipped to [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.diffusion import DiffusionConfig, GaussianDiffusion, SamplingConfig, respace, run_sampler
from dalle2_fast.diffusion.repaint import inpaint_sampling
from dalle2_fast.diffusion.conventions import FROM_CONFIG
from dalle2_fast.models.unet import UNet, UNetConfig, convert_v1_unet_state_dict
from dalle2_fast.nn.unet_blocks import AttentionBlock
from dalle2_fast.seeding import Draws, check_seeds


def _default_unet() -> UNetConfig:
    return UNetConfig(image_size=64, in_channels=3, low_res_channels=3, model_channels=32, channel_mult=(1, 2, 2),
                      num_res_blocks=1, attention_resolutions=(), use_scale_shift_norm=True)


def _default_diffusion() -> DiffusionConfig:
    return DiffusionConfig(schedule="cosine", num_timesteps=1000, mean_type="eps", var_type="fixed_small",
                           loss="simple")


def _default_sampling() -> SamplingConfig:
    return SamplingConfig(sampler="ddim", clip="static")


_UPSAMPLES = ("bilinear", "bicubic_antialias")


@dataclass(frozen=True)
class UpsamplerConfig:
    unet: UNetConfig = field(default_factory=_default_unet)  # in_channels 3 + low_res_channels 3
    diffusion: DiffusionConfig = field(default_factory=_default_diffusion)
    low_res: int = 32
    high_res: int = 64
    residual: bool = False                    # diffuse hr - bicubic(low_res) instead of hr (SRDiff-style)
    low_res_upsample: str = "bilinear"        # 'bilinear' (inside the U-Net) | 'bicubic_antialias' (once, outside)
    last_step_unet: bool = False              # a second network (unet_last) for the final sampling step
    sampling: SamplingConfig = field(default_factory=_default_sampling)


@register_model("unclip_upsampler")
class UnCLIPUpsampler(Pretrained, nn.Module):
    """``upsampler(x_t, t, low_res)`` -> U-Net output; ``sample(low_res, seeds, steps)`` -> images."""

    config_class = UpsamplerConfig

    def __init__(self, config: UpsamplerConfig):
        super().__init__()
        c = self.config = config
        if c.high_res % c.low_res:
            raise ValueError(f"UpsamplerConfig: high_res ({c.high_res}) must be a multiple of low_res ({c.low_res})")
        if c.unet.in_channels != 3 or c.unet.low_res_channels != 3 or c.unet.attention_resolutions:
            raise ValueError("UpsamplerConfig: unet needs in_channels=3, low_res_channels=3 and no "
                             "attention_resolutions")
        if c.low_res_upsample not in _UPSAMPLES:
            raise ValueError(f"UpsamplerConfig.low_res_upsample must be one of {_UPSAMPLES}, got {c.low_res_upsample!r}")
        self.unet = _conv_only(UNet(c.unet))
        self.unet_last = _conv_only(UNet(c.unet)) if c.last_step_unet else None
        self.diffusion = GaussianDiffusion.from_config(c.diffusion)

    @classmethod
    def _upgrade_config(cls, raw: dict) -> dict:
        """Before the redesign the config also held the training recipe's conditioning
        augmentation and crop (now the recipe's): dropped on load."""
        for k in ("augment", "blur_sigma", "train_crop"):
            raw.pop(k, None)
        return raw

    @classmethod
    def _upgrade_state_dict(cls, state: dict, config) -> dict:
        """Files with the U-Net's v1 attention-block keys load unchanged."""
        return convert_v1_unet_state_dict(state, prefix="unet.")

    @property
    def factor(self) -> int:
        return self.config.high_res // self.config.low_res

    def forward(self, x, t, low_res):  # noqa: D102
        return self.unet(x, t, low_res=low_res)  # the U-Net upsamples low_res (unless already x's size)

    def condition(self, low_res: torch.Tensor, size) -> torch.Tensor:
        """What the network is given as ``low_res``: the image itself ('bilinear': the U-Net
        upsamples it), or its bicubic antialiased upsampling to ``size`` ('bicubic_antialias',
        as Karlo / diffusers' UnCLIPPipeline; not clamped, like theirs)."""
        if self.config.low_res_upsample == "bilinear":
            return low_res
        return F.interpolate(low_res, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)

    @staticmethod
    def base(low_res: torch.Tensor, size) -> torch.Tensor:
        """The interpolated low-res image a residual upsampler adds its sample to (bicubic, clamped)."""
        return F.interpolate(low_res, size=tuple(size), mode="bicubic", align_corners=False).clamp(-1, 1)

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """batch: ``image`` (B, 3, H, W) high-res images (or crops) in [-1, 1] and ``low_res``
        (B, 3, H/f, W/f) their (corrupted) low-res conditioning, optional ``seeds`` / ``generator``.
        Per-item timestep and noise from the batch's draws. Returns {'loss', 'mse'}."""
        hr, lr = batch["image"], batch["low_res"]
        f = self.factor
        if lr.dim() != 4 or hr.dim() != 4 or tuple(hr.shape[-2:]) != (lr.shape[-2] * f, lr.shape[-1] * f):
            raise ValueError(f"UnCLIPUpsampler.loss: image must be low_res x {f}, got image {tuple(hr.shape)} and "
                             f"low_res {tuple(lr.shape)}")
        if self.unet_last is not None:
            raise ValueError("UnCLIPUpsampler.loss: training an upsampler with a separate last-step network "
                             "(last_step_unet) is not supported; train the two networks as separate upsamplers")
        target = hr - self.base(lr, hr.shape[-2:]) if self.config.residual else hr
        draws = Draws.of(batch, hr.shape[0], hr.device)
        t = draws.randint("t", self.diffusion.num_timesteps)
        noise = draws.randn("noise", hr.shape[1:], hr.dtype)
        terms = self.diffusion.training_losses(self, target, t, noise=noise,
                                               model_kwargs={"low_res": self.condition(lr, hr.shape[-2:])})
        return {k: v.mean() for k, v in terms.items()}

    @torch.no_grad()
    def sample(self, low_res: torch.Tensor, *, seeds: Sequence[int], steps: int | str | None = 10,
               sampler: str | None = None, eta: float | None = None, clip=FROM_CONFIG,
               progress: bool = False, known=None, mask=None, jumps=None) -> torch.Tensor:
        """(B, 3, h, w) in [-1, 1] -> (B, 3, h*f, w*f); image i depends only on seeds[i]; ``steps``
        in the respacing vocabulary; ``sampler`` / ``eta`` / ``clip`` default to ``config.sampling``
        (ours: DDIM, eta 0, x0 clipped to [-1, 1]). Inpainting at high resolution: ``known``
        (B or 1, 3, h*f, w*f) and ``mask`` (B or 1, 1 or 3, h*f, w*f), 1 = keep; ``jumps`` as
        ``UnCLIPDecoder.sample`` (a residual upsampler blends the known residual)."""
        b, _, h, w = low_res.shape
        seeds = check_seeds(seeds, b)
        shape = (b, 3, h * self.factor, w * self.factor)
        sampler, eta, clip = self.config.sampling.resolve(sampler, eta, clip)
        known_image = known
        if known is not None and self.config.residual and isinstance(known, torch.Tensor):
            known = known - self.base(low_res, shape[-2:])  # the model samples the residual
        sampler, eta, inpaint = inpaint_sampling(sampler, eta, known, mask, jumps)
        spec = self.config.sampling.steps(steps)
        denoiser = self
        if self.unet_last is not None:  # the final step's model timestep: the smallest kept one
            proc = self.diffusion if spec is None else respace(self.diffusion, spec)
            denoiser = _LastStepSwitch(self, int(proc.timestep_map[0]))
        x = run_sampler(sampler, denoiser, self.diffusion, shape, steps=spec, eta=eta,
                        model_kwargs={"low_res": self.condition(low_res, shape[-2:])}, seeds=seeds, clip=clip,
                        progress=progress, device=low_res.device, **inpaint)
        if self.config.residual:  # the model drew the detail on top of the interpolated image
            x = (x + self.base(low_res, shape[-2:])).clamp(-1, 1)
            if inpaint:  # (known - base) + base is known only up to rounding: the kept pixels exactly
                w = inpaint["mask"].to(x.dtype)
                x = w * known_image.to(x) + (1 - w) * x
        return x


def _conv_only(unet: UNet) -> UNet:
    """Convolutions only: the U-Net's middle self-attention dropped (global, it would tie the model
    to the training crop size)."""
    mid = unet.middle_block
    for i, layer in enumerate(mid):
        if isinstance(layer, AttentionBlock):
            mid[i] = nn.Identity()
    return unet


class _LastStepSwitch:
    """The denoiser of an upsampler with ``last_step_unet``: ``unet_last`` at the final step's
    timestep ``t_last``, ``unet`` everywhere else (per sample)."""

    def __init__(self, model: UnCLIPUpsampler, t_last: int):
        self.model, self.t_last = model, t_last

    def __call__(self, x, t, low_res):
        last = t == self.t_last
        if bool(last.all()):
            return self.model.unet_last(x, t, low_res=low_res)
        out = self.model.unet(x, t, low_res=low_res)
        if bool(last.any()):
            out = torch.where(last.view(-1, 1, 1, 1), self.model.unet_last(x, t, low_res=low_res), out)
        return out
