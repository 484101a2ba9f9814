"""Every seed derivation of the package, in one place.

- **Sampling** (pipeline, suite models, batch jobs, the command line, the service): image k of a
  call with seed s is the image of seed s + k (:func:`sample_seeds`), whatever the batch size,
  ``-n`` or number of ranks; any single image can be redrawn alone from its seed. Inside one
  image, each stage of a cascade (prior, decoder, upsamplers, ...) draws from its own stream
  (:func:`stage_seeds`).
- **Per-sample streams**: sample i draws from its own ``torch.Generator(seed_i)``
  (:func:`per_sample_randn` ...), so what it gets does not depend on the batch it is computed in.
- **Training items** (:class:`ItemSeeds`): the streams of item i of a run are a function of
  (run seed, global item index, purpose), so N ranks on slices of the global batch draw exactly
  what one process draws; :class:`Draws` is what a model's ``loss(batch)`` draws from.
"""
from __future__ import annotations

import zlib
from typing import Sequence

import torch


MAX_SEED = 2**63 - 1


def check_seed(seed, name: str = "seed") -> int:
    """A user-given seed: an int in [0, 2^63 - 1] (bool and float refused)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name}: expected an integer in [0, 2^63 - 1], got {seed!r}")
    return seed


def sample_seeds(seed: int, n: int, start: int = 0, name: str = "seed") -> list[int]:
    """The seeds of images start .. start + n - 1 of a call with ``seed``: seed + k for image k."""
    check_seed(seed, name)
    if seed + start + n - 1 > MAX_SEED:
        raise ValueError(f"{name}: {seed} + {start + n - 1} images exceeds the largest seed 2^63 - 1")
    return [seed + start + k for k in range(n)]


def stage_seeds(seeds: Sequence[int], stage: int) -> list[int]:
    """Independent per-image seeds for stage ``stage`` (1, 2, ...) of a cascade, derived from the
    images' own seeds (prior 1, decoder 2, upsampler i 3 + i, ... as the pipeline numbers them)."""
    return [(int(s) * 1_000_003 + 7919 * stage) % MAX_SEED for s in seeds]


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


class Draws:
    """The random draws of a batch of ``n`` items, per item and per purpose: from the items'
    :class:`ItemSeeds` when the batch has them (exact under DDP: an item draws the same numbers
    on any rank or batch slice), else from ``generator`` (or the global RNG). Models' ``loss(batch)``
    use ``Draws.of(batch, n, device)``."""

    def __init__(self, n: int, seeds: ItemSeeds | None = None, generator: torch.Generator | None = None,
                 device=None):
        if seeds is not None and len(seeds) != n:
            raise ValueError(f"Draws: {len(seeds)} item seeds for a batch of {n}")
        self.n, self.seeds, self.generator, self.device = n, seeds, generator, device

    @classmethod
    def of(cls, batch: dict, n: int, device=None) -> "Draws":
        return cls(n, batch.get("seeds"), batch.get("generator"), device)

    def randn(self, purpose: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(n, *shape) standard normal."""
        if self.seeds is not None:
            return per_sample_randn(self.seeds(purpose), shape, self.device, dtype)
        return torch.randn((self.n, *shape), generator=self.generator, dtype=dtype).to(self.device)

    def rand(self, purpose: str, shape: Sequence[int] = ()) -> torch.Tensor:
        """(n, *shape) uniform in [0, 1)."""
        if self.seeds is not None:
            return per_sample_rand(self.seeds(purpose), shape, self.device)
        return torch.rand((self.n, *shape), generator=self.generator).to(self.device)

    def randint(self, purpose: str, high: int) -> torch.Tensor:
        """(n,) int64 uniform in [0, high)."""
        if self.seeds is not None:
            return per_sample_randint(self.seeds(purpose), high, self.device)
        return torch.randint(0, high, (self.n,), generator=self.generator).to(self.device)

    def bernoulli(self, purpose: str, p: float) -> torch.Tensor:
        """(n,) bool, True with probability ``p``."""
        return self.rand(purpose) < p
