"""The conv encoder/decoder family shared by AE, DAE, VAE, VQ-VAE and VQ-VAE-2
(van den Oord et al. 2017, Sec. 4.1: stride-2 4x4 convs, then ReLU-conv3x3-ReLU-conv1x1
residual blocks)."""
from __future__ import annotations

import torch
from torch import nn


class ConvResidual(nn.Module):
    """x + conv1x1(ReLU(conv3x3(ReLU(x)))) (van den Oord et al. 2017): the VQ family's residual
    block, named apart from the U-Net's embedding-conditioned ``nn.unet_blocks.ResBlock``."""

    def __init__(self, ch: int, mid: int | None = None):
        super().__init__()
        mid = mid or max(ch // 2, 16)
        self.net = nn.Sequential(nn.ReLU(), nn.Conv2d(ch, mid, 3, padding=1), nn.ReLU(), nn.Conv2d(mid, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ConvEncoder(nn.Module):
    """(B, in_ch, H, W) -> (B, out_ch, H / 2^n_down, W / 2^n_down)."""

    def __init__(self, in_ch: int, ch: int, out_ch: int, n_down: int, n_res: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ch, 3, padding=1)]
        for _ in range(n_down):
            layers += [nn.ReLU(), nn.Conv2d(ch, ch, 4, stride=2, padding=1)]
        layers += [ConvResidual(ch) for _ in range(n_res)]
        layers += [nn.ReLU(), nn.Conv2d(ch, out_ch, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """(B, in_ch, h, w) -> (B, out_ch, h * 2^n_up, w * 2^n_up)."""

    def __init__(self, in_ch: int, ch: int, out_ch: int, n_up: int, n_res: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, ch, 3, padding=1)]
        layers += [ConvResidual(ch) for _ in range(n_res)]
        for _ in range(n_up):
            layers += [nn.ReLU(), nn.ConvTranspose2d(ch, ch, 4, stride=2, padding=1)]
        layers += [nn.ReLU(), nn.Conv2d(ch, out_ch, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def check_image(x: torch.Tensor, resolution: int, channels: int, who: str) -> None:
    if x.dim() != 4 or x.shape[1] != channels or x.shape[2] != resolution or x.shape[3] != resolution:
        raise ValueError(f"{who}: expected images (B, {channels}, {resolution}, {resolution}), got {tuple(x.shape)}")


def check_power_of_two_factor(resolution: int, n_down: int, who: str) -> None:
    if resolution % (1 << n_down):
        raise ValueError(f"{who}: resolution {resolution} must be divisible by 2^{n_down}")
