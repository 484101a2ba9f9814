"""DCGAN (Radford et al. 2016): transposed-conv generator with BatchNorm + ReLU, strided-conv
discriminator with LeakyReLU and BatchNorm (Sec. 3) or spectral normalisation (Miyato et al.
2018), N(0, 0.02) weight init, trained with the non-saturating loss (Goodfellow et al. 2014)
or the hinge loss (Lim & Ye 2017)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.seeding import check_seeds, per_sample_randn


@dataclass(frozen=True)
class GANConfig:
    resolution: int = 32  # 4 * 2^k, k >= 1
    channels: int = 3
    z_dim: int = 64
    g_width: int = 64  # generator channels at the last stage (doubling towards 4x4)
    d_width: int = 64
    loss: str = "ns"  # 'ns' (non-saturating) or 'hinge'
    d_norm: str = "batch"  # discriminator: 'batch' (DCGAN), 'spectral' or 'none'


def _stages(resolution: int) -> int:
    k = (resolution // 4).bit_length() - 1
    if resolution < 8 or 4 << k != resolution:
        raise ValueError(f"GANConfig.resolution must be 4 * 2^k >= 8, got {resolution}")
    return k


def _dcgan_init(m: nn.Module) -> None:
    """N(0, 0.02) conv / linear weights, N(1, 0.02) BatchNorm scales (DCGAN Sec. 4)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
        nn.init.normal_(w, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    def __init__(self, c: GANConfig):
        super().__init__()
        k = _stages(c.resolution)
        ch = c.g_width << (k - 1)
        self.fc = nn.Linear(c.z_dim, ch * 16)
        self.ch = ch
        layers: list[nn.Module] = [nn.BatchNorm2d(ch), nn.ReLU()]
        for _ in range(k):
            layers += [nn.ConvTranspose2d(ch, max(ch // 2, c.g_width), 4, 2, 1, bias=False),
                       nn.BatchNorm2d(max(ch // 2, c.g_width)), nn.ReLU()]
            ch = max(ch // 2, c.g_width)
        layers += [nn.Conv2d(ch, c.channels, 3, padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, self.ch, 4, 4))  # (B, C, R, R)


class Discriminator(nn.Module):
    def __init__(self, c: GANConfig):
        super().__init__()
        k = _stages(c.resolution)
        sn = spectral_norm if c.d_norm == "spectral" else (lambda m: m)
        layers: list[nn.Module] = []
        ch_in, ch = c.channels, c.d_width
        for s in range(k):
            layers.append(sn(nn.Conv2d(ch_in, ch, 4, 2, 1)))
            if c.d_norm == "batch" and s > 0:  # not on the input layer (DCGAN Sec. 3)
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2))
            ch_in, ch = ch, ch * 2
        self.net = nn.Sequential(*layers)
        self.fc = sn(nn.Linear(ch_in * 16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.net(x).flatten(1)).squeeze(1)  # (B,) logits


@register_model("gan")
class GAN(nn.Module, Pretrained):
    config_class = GANConfig

    def __init__(self, config: GANConfig):
        super().__init__()
        if config.loss not in ("ns", "hinge"):
            raise ValueError(f"GANConfig.loss must be 'ns' or 'hinge', got {config.loss!r}")
        if config.loss not in ("ns", "hinge"):
            raise ValueError(f"GANConfig.loss must be 'ns' or 'hinge', got {config.loss!r}")
        if config.d_norm not in ("batch", "spectral", "none"):
            raise ValueError(f"GANConfig.d_norm must be 'batch', 'spectral' or 'none', got {config.d_norm!r}")
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.apply(_dcgan_init)

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "hinge":
            return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "hinge":
            return -fake_logits.mean()
        return F.softplus(-fake_logits).mean()  # non-saturating: -log D(G(z))

    def noise(self, n: int, generator: torch.Generator | None = None, device=None, seeds=None) -> torch.Tensor:
        """(n, z_dim) latents: row i from seeds[i] when given (batch-independent), else ``generator``."""
        dev = device or next(self.parameters()).device
        if seeds is not None:
            return per_sample_randn(check_seeds(seeds, n), (self.config.z_dim,), dev)
        return torch.randn(n, self.config.z_dim, generator=generator, device=dev)

    @torch.no_grad()
    def sample(self, n: int | None = None, generator: torch.Generator | None = None, device=None, *,
               seeds=None) -> torch.Tensor:
        """n images (n, C, R, R) in [-1, 1] (generator in eval mode: running BN statistics). With
        ``seeds`` (n = len(seeds)) image i depends only on seeds[i]."""
        if seeds is not None:
            n = len(seeds)
        if n is None or n < 1:
            raise ValueError(f"GAN.sample: expected n >= 1 images (or seeds), got {n!r}")
        was = self.generator.training
        self.generator.eval()
        out = self.generator(self.noise(n, generator, device, seeds))
        self.generator.train(was)
        return out
