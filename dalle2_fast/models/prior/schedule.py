"""The cosine noise schedule and the x0-parameterised DDIM update used by the diffusion prior.

A small self-contained piece so the prior trains and samples on its own; the numbers are the
Improved-DDPM cosine schedule (Nichol & Dhariwal 2021, Eq. 17, betas capped at 0.999), computed in
float64, and the DDIM update (Song et al. 2021, Eq. 12) written for a model that predicts x0.
"""
from __future__ import annotations

import math

import torch


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """alpha-bar_t for t = 0 .. T-1, float64 (Eq. 17 of Improved DDPM, betas clipped to max_beta)."""
    if timesteps < 1:
        raise ValueError(f"cosine_alphas_cumprod: timesteps must be >= 1, got {timesteps}")
    f = lambda u: math.cos((u / timesteps + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = torch.tensor([min(1 - f(i + 1) / f(i), max_beta) for i in range(timesteps)], dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


class CosineSchedule:
    """q(x_t | x0) and the DDIM step for x0-predicting models. t: (B,) int64 in [0, T)."""

    def __init__(self, timesteps: int = 1000):
        self.timesteps = timesteps
        self.alphas_cumprod = cosine_alphas_cumprod(timesteps)

    def _ab(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        ab = self.alphas_cumprod.to(t.device)[t].to(like.dtype)
        return ab.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps."""
        ab = self._ab(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def respaced(self, steps: int) -> list[int]:
        """``steps`` timesteps evenly spaced over [0, T), descending (T-1 first, 0 last)."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"steps must be in [1, {self.timesteps}], got {steps}")
        ts = torch.linspace(0, self.timesteps - 1, steps).round().long().unique()
        return ts.flip(0).tolist()

    def ddim_step(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, t_prev: int, eta: float,
                  noise: torch.Tensor | None) -> torch.Tensor:
        """x_{t_prev} from x_t and the predicted x0 (t_prev < 0 means: return x0)."""
        if t_prev < 0:
            return x0
        ab, ab_prev = float(self.alphas_cumprod[t]), float(self.alphas_cumprod[t_prev])
        eps = (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        out = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma ** 2, 0.0)) * eps
        if sigma > 0:
            out = out + sigma * noise
        return out
