"""The diffusion prior's noise schedule and DDIM update, on the diffusion core.

The numbers are the core's cosine schedule (``diffusion.schedules.cosine_betas``: Improved DDPM
Eq. 17, betas capped at 0.999, float64) and the step is the fused sampling kernel
(``ops.ddim_step``, Song et al. 2021 Eq. 12) with the prior's x0 prediction and, for
classifier-free guidance, its conditional and unconditional rows combined inside the kernel.
"""
from __future__ import annotations

import torch

from dalle2_fast.diffusion.schedules import cosine_betas
from dalle2_fast.ops.sampling import ddim_coefs, ddim_step


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """alpha-bar_t for t = 0 .. T-1, float64."""
    if timesteps < 1:
        raise ValueError(f"cosine_alphas_cumprod: timesteps must be >= 1, got {timesteps}")
    return torch.cumprod(1 - cosine_betas(timesteps, s, max_beta), 0)


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
                  noise: torch.Tensor | None, guidance: float | None = None) -> torch.Tensor:
        """x_{t_prev} from x_t (B, D) and the predicted x0 (t_prev < 0: return x0).

        With ``guidance``, ``x0`` holds 2B rows (conditional, then unconditional) combined as
        uncond + guidance * (cond - uncond) in the kernel."""
        b = x_t.shape[0]
        ab = self.alphas_cumprod[t].expand(b)
        ab_prev = self.alphas_cumprod[t_prev].expand(b) if t_prev >= 0 else torch.ones(b, dtype=torch.float64)
        coefs = ddim_coefs(ab, ab_prev, eta if t_prev >= 0 else 0.0).to(x_t.device)
        g = None if guidance is None else torch.full((b,), float(guidance), dtype=x_t.dtype, device=x_t.device)
        use_noise = eta > 0 and t_prev >= 0 and noise is not None
        x_prev, _ = ddim_step(x_t, x0, coefs, noise if use_noise else None, pred="x0", guidance=g)
        return x_prev
