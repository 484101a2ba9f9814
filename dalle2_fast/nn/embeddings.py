"""Embeddings shared by every network of the package (one copy each)."""
from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps (Ho et al. 2020, Sec. 4; Vaswani
    et al. 2017), in the (cos, sin) order guided-diffusion uses. t: (B,) -> (B, dim) float32
    [cos(t f_i), sin(t f_i)], f_i = max_period^(-i / (dim // 2)); a zero column is appended for
    odd ``dim``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


__all__ = ["timestep_embedding"]
