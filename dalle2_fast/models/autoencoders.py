"""AE, denoising AE and VAE on one conv encoder/decoder family.

Latents are spatial (``z_dim == 0``: (B, latent_channels, R/2^d, R/2^d)) or a vector
(``z_dim > 0``: the encoder's map is flattened through a linear layer, which gives the VAE
coherent samples from its N(0, I) prior). Losses are means over pixels, images in [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.models.blocks import ConvDecoder, ConvEncoder, check_image, check_power_of_two_factor
from dalle2_fast.seeding import check_seeds, per_sample_rand, per_sample_randn


@dataclass(frozen=True)
class AEConfig:
    resolution: int = 32
    in_channels: int = 3
    channels: int = 64
    n_res: int = 2
    downsample: int = 2  # number of stride-2 stages
    latent_channels: int = 16
    z_dim: int = 0  # 0: spatial latent; > 0: vector latent of this size


@dataclass(frozen=True)
class DAEConfig(AEConfig):
    corruption: str = "gaussian"  # 'gaussian' or 'mask'
    noise_std: float = 0.3  # gaussian: x + noise_std * eps
    mask_prob: float = 0.3  # mask: each mask_patch x mask_patch patch zeroed with this probability
    mask_patch: int = 4

    def __post_init__(self):
        if self.corruption not in ("gaussian", "mask"):
            raise ValueError(f"DAEConfig.corruption must be 'gaussian' or 'mask', got {self.corruption!r}")
        if not (self.noise_std >= 0):
            raise ValueError(f"DAEConfig.noise_std must be >= 0, got {self.noise_std!r}")


@dataclass(frozen=True)
class VAEConfig(AEConfig):
    z_dim: int = 64
    beta: float = 1.0  # weight of the KL term (beta-VAE, Higgins et al. 2017)
    recon_sigma: float = 0.1  # std of the Gaussian likelihood p(x|z), in [-1, 1] units

    def __post_init__(self):
        if not (self.beta >= 0):
            raise ValueError(f"VAEConfig.beta must be >= 0, got {self.beta!r}")
        if not (self.recon_sigma > 0):
            raise ValueError(f"VAEConfig.recon_sigma must be > 0, got {self.recon_sigma!r}")


class AEOutput(NamedTuple):
    recon: torch.Tensor  # (B, C, R, R)
    loss: torch.Tensor  # scalar
    recon_loss: torch.Tensor  # scalar MSE
    kl: torch.Tensor  # scalar (0 for AE / DAE), nats per image


@register_model("ae")
class AutoEncoder(nn.Module, Pretrained):
    config_class = AEConfig

    def __init__(self, config: AEConfig):
        super().__init__()
        self.config = c = config
        check_power_of_two_factor(c.resolution, c.downsample, type(self).__name__)
        self.latent_hw = c.resolution >> c.downsample
        enc_out = 2 * c.latent_channels if self._stochastic_spatial() else c.latent_channels
        self.encoder = ConvEncoder(c.in_channels, c.channels, enc_out, c.downsample, c.n_res)
        self.decoder = ConvDecoder(c.latent_channels, c.channels, c.in_channels, c.downsample, c.n_res)
        flat = c.latent_channels * self.latent_hw**2
        if c.z_dim > 0:
            self.to_z = nn.Linear(flat, self._z_out())
            self.from_z = nn.Linear(c.z_dim, flat)

    def _stochastic_spatial(self) -> bool:
        return False

    def _z_out(self) -> int:
        return self.config.z_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, R, R) -> latent (B, z_dim) or (B, latent_channels, r, r)."""
        check_image(x, self.config.resolution, self.config.in_channels, type(self).__name__)
        h = self.encoder(x)
        return self.to_z(h.flatten(1)) if self.config.z_dim > 0 else h

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        c = self.config
        if c.z_dim > 0:
            z = self.from_z(z).view(-1, c.latent_channels, self.latent_hw, self.latent_hw)  # (B, Cl, r, r)
        return self.decoder(z)

    def corrupt(self, x: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor, seeds: Sequence[int] | None = None) -> AEOutput:
        """x: (B, C, R, R). seeds: optional, one per image: the stochastic part of training (DAE
        corruption, VAE reparameterisation noise) draws image i's noise from its own generator
        seeded ``seeds[i]`` instead of the global RNG, so it does not depend on the batch."""
        recon = self.decode(self.encode(self.corrupt(x, seeds) if self.training else x))
        mse = F.mse_loss(recon, x)
        return AEOutput(recon, mse, mse, mse.new_zeros(()))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)).clamp(-1, 1)


@register_model("dae")
class DenoisingAutoEncoder(AutoEncoder):
    """Trained to reconstruct x from a corrupted copy (Vincent et al. 2008)."""
    config_class = DAEConfig

    def __init__(self, config: DAEConfig):
        if config.corruption not in ("gaussian", "mask"):
            raise ValueError(f"DAEConfig.corruption must be 'gaussian' or 'mask', got {config.corruption!r}")
        super().__init__(config)

    def corrupt(self, x: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """x: (B, C, H, W) -> corrupted copy; seeds (optional, B): per-image generators."""
        c = self.config
        if c.corruption == "gaussian":
            noise = torch.randn_like(x) if seeds is None else per_sample_randn(check_seeds(seeds, len(x)), x.shape[1:],
                                                                               x.device, x.dtype)
            return x + c.noise_std * noise
        B, _, H, W = x.shape
        p = c.mask_patch
        shape = (1, -(-H // p), -(-W // p))
        u = (torch.rand(B, *shape, device=x.device) if seeds is None
             else per_sample_rand(check_seeds(seeds, B), shape, x.device))
        keep = (u >= c.mask_prob).to(x.dtype)
        keep = keep.repeat_interleave(p, 2).repeat_interleave(p, 3)[:, :, :H, :W]  # (B, 1, H, W)
        return x * keep


@register_model("vae")
class VAE(AutoEncoder):
    """Kingma & Welling 2014: q(z|x) = N(mu, sigma^2), reparameterised z = mu + sigma * eps;
    loss = (||x - x'||^2 / (2 s^2) + beta * KL(q || N(0, I))) / pixels."""
    config_class = VAEConfig

    def _stochastic_spatial(self) -> bool:
        return self.config.z_dim == 0

    def _z_out(self) -> int:
        return 2 * self.config.z_dim

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, logvar), each (B, z_dim) or (B, latent_channels, r, r)."""
        return self.encode(x).chunk(2, dim=1)

    def forward(self, x: torch.Tensor, seeds: Sequence[int] | None = None) -> AEOutput:
        c = self.config
        mu, logvar = self.posterior(x)
        if self.training:
            eps = (torch.randn_like(mu) if seeds is None
                   else per_sample_randn(check_seeds(seeds, len(x)), mu.shape[1:], mu.device, mu.dtype))
            z = mu + torch.exp(0.5 * logvar) * eps
        else:
            z = mu
        recon = self.decode(z)
        sq = (recon - x).pow(2).flatten(1).sum(1)  # (B,)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)  # (B,) nats
        loss = (sq / (2 * c.recon_sigma**2) + c.beta * kl).mean() / x[0].numel()
        return AEOutput(recon, loss, sq.mean() / x[0].numel(), kl.mean())

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.posterior(x)[0]).clamp(-1, 1)

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | None = None, device=None, *,
               seeds=None) -> torch.Tensor:
        """n images (n, C, R, R) decoded from z ~ N(0, I). With ``seeds`` (n = len(seeds)) image i
        depends only on seeds[i]."""
        c = self.config
        if seeds is not None:
            n = len(seeds)
        if n is None or n < 1:
            raise ValueError(f"VAE.sample: expected n >= 1 images (or seeds), got {n!r}")
        latent = (c.z_dim,) if c.z_dim > 0 else (c.latent_channels, self.latent_hw, self.latent_hw)
        dev = device or next(self.parameters()).device
        z = (per_sample_randn(check_seeds(seeds, n), latent, dev) if seeds is not None
             else torch.randn((n, *latent), generator=generator, device=dev))
        return self.decode(z).clamp(-1, 1)
