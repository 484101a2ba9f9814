"""Training timestep samplers: uniform, and importance sampling by the loss's second moment
(Nichol & Dhariwal Sec. 3.3: p_t proportional to sqrt(E[L_t^2]), used once every t has 10
recorded losses; the loss is reweighted by 1/(T p_t) so its expectation is unchanged)."""
from __future__ import annotations

import torch


class UniformSampler:
    def __init__(self, num_timesteps: int):
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
        self.num_timesteps = num_timesteps

    def weights(self) -> torch.Tensor:
        """(T,) unnormalised sampling weights (float64)."""
        return torch.ones(self.num_timesteps, dtype=torch.float64)

    def sample(self, batch_size: int, device="cpu", generator: torch.Generator | None = None):
        """(t (B,) int64, loss weights (B,) float32 = 1 / (T p_t))."""
        w = self.weights()
        p = w / w.sum()
        t = torch.multinomial(p, batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p[t])
        return t.to(device), weights.float().to(device)

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record per-sample losses at their timesteps (no-op for the uniform sampler)."""


class LossSecondMomentSampler(UniformSampler):
    """Importance sampling by sqrt(E[L_t^2]) over the last ``history`` losses of each t, mixed
    with ``uniform_prob`` of uniform; uniform until every t has ``history`` losses."""

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        if history < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"need history >= 1 and uniform_prob in [0, 1], got {history}, {uniform_prob}")
        self.history, self.uniform_prob = history, uniform_prob
        self._losses = torch.zeros(num_timesteps, history, dtype=torch.float64)
        self._counts = torch.zeros(num_timesteps, dtype=torch.long)

    def warmed_up(self) -> bool:
        return bool((self._counts == self.history).all())

    def weights(self) -> torch.Tensor:
        if not self.warmed_up():
            return torch.ones(self.num_timesteps, dtype=torch.float64)
        w = (self._losses**2).mean(dim=1).sqrt()
        w = w / w.sum()
        return w * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps

    def update(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        if t.shape != losses.shape:
            raise ValueError(f"t and losses must have the same shape, got {tuple(t.shape)} and {tuple(losses.shape)}")
        for ti, li in zip(t.tolist(), losses.detach().double().cpu().tolist()):
            if self._counts[ti] == self.history:
                self._losses[ti, :-1] = self._losses[ti, 1:].clone()
                self._losses[ti, -1] = li
            else:
                self._losses[ti, self._counts[ti]] = li
                self._counts[ti] += 1


__all__ = ["UniformSampler", "LossSecondMomentSampler"]
