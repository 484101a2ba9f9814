"""Likelihood terms of the diffusion VLB (Ho et al. 2020, Sec. 3.3; Nichol & Dhariwal 2021)."""
from __future__ import annotations

import math

import torch


def mean_flat(t: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one: (B, ...) -> (B,)."""
    return t.reshape(t.shape[0], -1).mean(dim=1)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats (broadcasts)."""
    ref = next(v for v in (mean1, logvar1, mean2, logvar2) if isinstance(v, torch.Tensor))
    lv1 = torch.as_tensor(logvar1, dtype=ref.dtype, device=ref.device)
    lv2 = torch.as_tensor(logvar2, dtype=ref.dtype, device=ref.device)
    return 0.5 * (lv2 - lv1 - 1.0 + torch.exp(lv1 - lv2) + (mean1 - mean2) ** 2 * torch.exp(-lv2))


def approx_std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) ~= (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2 (the approximation the DDPM
    bits/dim numbers were reported with)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log p(x) in nats of 8-bit data in [-1, 1] under N(mean, e^(2 log_scale)) integrated over
    each pixel's bin of width 2/255, with open-ended outer bins (Ho et al. Eq. 13). Elementwise."""
    if not (x.shape == mean.shape == log_scale.shape):
        raise ValueError(f"x, mean, log_scale shapes differ: {tuple(x.shape)}, {tuple(mean.shape)}, "
                         f"{tuple(log_scale.shape)}")
    inv_std = torch.exp(-log_scale)
    d = x - mean
    cdf_hi = approx_std_normal_cdf(inv_std * (d + 1.0 / 255.0))
    cdf_lo = approx_std_normal_cdf(inv_std * (d - 1.0 / 255.0))
    log_hi = torch.log(cdf_hi.clamp(min=1e-12))  # the lowest bin: P(X <= x + 1/255)
    log_1m_lo = torch.log((1.0 - cdf_lo).clamp(min=1e-12))  # the highest bin
    log_mid = torch.log((cdf_hi - cdf_lo).clamp(min=1e-12))
    return torch.where(x < -0.999, log_hi, torch.where(x > 0.999, log_1m_lo, log_mid))


__all__ = ["mean_flat", "normal_kl", "approx_std_normal_cdf", "discretized_gaussian_log_likelihood"]
