"""Per-sample random streams: sample i draws from its own ``torch.Generator(seed_i)``, so what it
gets does not depend on the batch it is computed in."""
from __future__ import annotations

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
    out = [torch.randn(*shape, generator=torch.Generator().manual_seed(s), dtype=dtype) for s in seeds]
    return torch.stack(out).to(device) if out else torch.empty(0, *shape, dtype=dtype, device=device)


def per_sample_rand(seeds: Sequence[int], shape: Sequence[int], device=None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(len(seeds), *shape) uniform [0, 1); row i from its own generator."""
    out = [torch.rand(*shape, generator=torch.Generator().manual_seed(s), dtype=dtype) for s in seeds]
    return torch.stack(out).to(device) if out else torch.empty(0, *shape, dtype=dtype, device=device)
