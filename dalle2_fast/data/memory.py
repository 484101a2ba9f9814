"""A fixed set of training items held in memory (rendered images, precomputed CLIP embeddings),
served in the training loop's order: batch k is positions k*B .. k*B+B-1 of an endless stream in
which epoch e visits every item once, in a permutation drawn from (seed, e). Any position can be
computed without the ones before it, so ranks and resumed runs see exactly what one process sees."""
from __future__ import annotations

import torch


class InMemoryData:
    """items: a dict of equal-length fields, each a tensor (N, ...) or a list of N values."""

    def __init__(self, items: dict, seed: int = 0, shuffle: bool = True):
        lens = {k: len(v) for k, v in items.items()}
        if not lens or len(set(lens.values())) != 1 or next(iter(lens.values())) == 0:
            raise ValueError(f"InMemoryData: fields must be non-empty and of equal length, got {lens}")
        self.items, self.seed, self.shuffle = items, int(seed), shuffle
        self.n = next(iter(lens.values()))
        self._perms: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.n

    def _perm(self, epoch: int) -> torch.Tensor:
        p = self._perms.get(epoch)
        if p is None:
            p = (torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
                 if self.shuffle else torch.arange(self.n))
            self._perms = {epoch: p}  # keep one: the stream is read in order
        return p

    def indices(self, start: int, n: int) -> torch.Tensor:
        """(n,) item indices at stream positions start .. start + n - 1."""
        return torch.stack([self._perm(p // self.n)[p % self.n] for p in range(start, start + n)])

    def batch(self, start: int, n: int) -> dict:
        idx = self.indices(start, n)
        out = {}
        for k, v in self.items.items():
            out[k] = v[idx] if isinstance(v, torch.Tensor) else [v[i] for i in idx.tolist()]
        return out


__all__ = ["InMemoryData"]
