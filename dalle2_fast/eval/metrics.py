"""Metrics: reconstruction (PSNR), and the interval of a match rate (Wilson)."""
from __future__ import annotations

import math

import torch


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (95% for z = 1.96); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> float:
    """Mean over images of PSNR in dB; x, y: (B, C, H, W) in [-1, 1] (data_range 2)."""
    if x.shape != y.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(data_range**2 / mse)).mean())
