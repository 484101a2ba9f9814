"""Noise schedules beta_1..beta_T, computed in float64.

- ``linear``: Ho et al. 2020 (beta from 1e-4 to 0.02 at T = 1000; scaled by 1000/T for other
  T, as Improved DDPM does so that any T gives a similar process).
- ``cosine``: Nichol & Dhariwal 2021, Eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2),
  s = 0.008, with beta_t = 1 - abar(t)/abar(t-1) capped at 0.999 (their clipping, Sec. 3.2).
- any user-given betas (validated: 1-D, in (0, 1]).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch


def linear_betas(num_timesteps: int, beta_start: float | None = None, beta_end: float | None = None) -> torch.Tensor:
    """(T,) float64 betas spaced linearly; defaults scale Ho et al.'s 1e-4..0.02 by 1000/T."""
    _check_T(num_timesteps)
    scale = 1000.0 / num_timesteps
    start = scale * 1e-4 if beta_start is None else beta_start
    end = scale * 0.02 if beta_end is None else beta_end
    return torch.linspace(start, end, num_timesteps, dtype=torch.float64)


def betas_for_alpha_bar(num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> torch.Tensor:
    """Betas that discretise a continuous abar(t), t in [0, 1]: beta_i = min(1 - abar((i+1)/T) /
    abar(i/T), max_beta)."""
    _check_T(num_timesteps)
    out = [min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
           for i in range(num_timesteps)]
    return torch.tensor(out, dtype=torch.float64)


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """(T,) float64 betas of the cosine schedule (Nichol & Dhariwal Eq. 17, capped at 0.999)."""
    return betas_for_alpha_bar(num_timesteps, lambda t: math.cos((t + s) / (1 + s) * math.pi / 2) ** 2, max_beta)


def get_betas(schedule: str | Sequence[float] | torch.Tensor, num_timesteps: int | None = None) -> torch.Tensor:
    """Betas from a name ('linear' | 'cosine') and T, or validated user-given betas."""
    if isinstance(schedule, str):
        if num_timesteps is None:
            raise ValueError(f"num_timesteps is required for the named schedule {schedule!r}")
        if schedule == "linear":
            return linear_betas(num_timesteps)
        if schedule == "cosine":
            return cosine_betas(num_timesteps)
        raise ValueError(f"schedule must be 'linear', 'cosine' or a sequence of betas, got {schedule!r}")
    betas = torch.as_tensor(schedule, dtype=torch.float64).detach().cpu()
    if betas.dim() != 1 or betas.numel() == 0:
        raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
    if not bool(((betas > 0) & (betas <= 1)).all()):
        raise ValueError(f"betas must lie in (0, 1], got min {betas.min().item()} max {betas.max().item()}")
    if num_timesteps is not None and betas.numel() != num_timesteps:
        raise ValueError(f"got {betas.numel()} betas but num_timesteps={num_timesteps}")
    return betas.clone()


def _check_T(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, int) or num_timesteps < 1:
        raise ValueError(f"num_timesteps must be a positive int, got {num_timesteps!r}")


__all__ = ["linear_betas", "cosine_betas", "betas_for_alpha_bar", "get_betas"]
