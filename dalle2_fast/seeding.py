"""Per-sample random streams: sample i draws from its own ``torch.Generator(seed_i)``, so what it
gets does not depend on the batch it is computed in."""
from __future__ import annotations

import zlib
from typing import Sequence

import torch


def check_seeds(seeds: Sequence[int], n: int, name: str = "seeds") -> list[int]:
    seeds = [int(s) for s in seeds]
    if len(seeds) != n:
        raise ValueError(f"{name}: expected {n} seeds (one per sample), got {len(seeds)}")
    return seeds


def per_sample_randn(seeds: Sequence[int], shape: Sequence[int], device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(len(seeds), *shape) standard normal; row i from ``torch.Generator().manual_seed(seeds[i])``."""
    out = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s), dtype=dtype) for s in seeds]
    return torch.stack(out).to(device) if out else torch.empty(0, *shape, dtype=dtype, device=device)


def per_sample_rand(seeds: Sequence[int], shape: Sequence[int], device=None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(len(seeds), *shape) uniform [0, 1); row i from its own generator."""
    out = [torch.rand(tuple(shape), generator=torch.Generator().manual_seed(s), dtype=dtype) for s in seeds]
    return torch.stack(out).to(device) if out else torch.empty(0, *shape, dtype=dtype, device=device)


def per_sample_randint(seeds: Sequence[int], high: int, device=None) -> torch.Tensor:
    """(len(seeds),) int64 uniform in [0, high); entry i from its own generator."""
    out = [int(torch.randint(high, (), generator=torch.Generator().manual_seed(s))) for s in seeds]
    return torch.tensor(out, dtype=torch.long, device=device)


_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a bijection of 64-bit ints that scatters nearby inputs."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class ItemSeeds:
    """The random streams of training items ``start .. start+n-1`` (global indices into the run's
    data order) of a run seeded ``seed``. ``seeds("noise")`` -> one generator seed per item for
    the purpose "noise"; distinct purposes give independent streams, and an item's draws depend
    only on (seed, global index, purpose) -- not on which process or batch slice computes it.
    That is what lets N ranks, each on a slice of the global batch, draw exactly what one
    process draws for the whole batch."""

    def __init__(self, seed: int, start: int, n: int):
        if n < 0 or start < 0:
            raise ValueError(f"ItemSeeds: expected start >= 0 and n >= 0, got start={start}, n={n}")
        self.seed, self.start, self.n = int(seed), int(start), int(n)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"ItemSeeds(seed={self.seed}, start={self.start}, n={self.n})"

    def __call__(self, purpose: str) -> list[int]:
        tag = _mix64(zlib.crc32(purpose.encode()) ^ _mix64(self.seed & _M64))
        return [_mix64(tag ^ (self.start + k)) >> 1 for k in range(self.n)]  # 63 bits: a valid seed
