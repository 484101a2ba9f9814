"""Respacing: sample with a few steps from a model trained on many (Nichol & Dhariwal Sec. 4).

A kept subsequence S of the trained timesteps defines a new process with
beta_i = 1 - abar_{S_i} / abar_{S_{i-1}}, so that its abar at step i equals the trained
abar at timestep S_i; the model is still called with the trained timestep S_i.

One vocabulary, accepted everywhere a step count is (``respace``, every model's ``sample``,
the command line): an int or "250" (250 evenly spaced steps, first and last included),
"10,10,3,2,2" (the trained range cut into equal sections, each strided to that many steps:
dense where counts are large), "ddim25" (25 steps starting at 0 with the DDIM paper's uniform
stride: the integer stride that gives exactly 25 when one exists, as guided-diffusion does,
else the fractional stride T/25 rounded). diffusers' spacings, for checkpoints whose scheduler
used them (``diffusion.conventions.SamplingConfig.spacing``): "linspace25" (round(k (T-1)/24),
k = 0..24: ``UnCLIPScheduler`` and ``DDPMScheduler``'s 'linspace'; differs from "25" for some N
because "25" accumulates the stride before rounding), "leading25" (k * (T // 25)) and
"trailing25" (round(T - k T/25) - 1).
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from dalle2_fast.diffusion.gaussian import GaussianDiffusion

_DIFFUSERS = ("linspace", "leading", "trailing")


def _diffusers_spacing(num_timesteps: int, kind: str, spec: str) -> list[int]:
    """diffusers' ``set_timesteps`` rules (numpy's round-half-to-even, as theirs)."""
    try:
        n = int(spec[len(kind):])
    except ValueError:
        raise ValueError(f"respacing {spec!r}: expected '{kind}N' with an integer N") from None
    T = num_timesteps
    if not 1 <= n <= T:
        raise ValueError(f"respacing {spec!r}: expected 1 <= N <= {T} (the trained steps)")
    if kind == "linspace":
        ts = np.linspace(0, T - 1, n).round() if n > 1 else np.zeros(1)
    elif kind == "leading":
        ts = np.arange(0, n) * (T // n)
    else:
        ts = np.round(np.arange(T, 0, -T / n)) - 1
    return sorted({int(t) for t in ts})


def space_timesteps(num_timesteps: int, spec: int | str | Iterable[int]) -> list[int]:
    """Sorted timesteps of [0, num_timesteps) kept by ``spec`` (see the module docstring)."""
    if isinstance(spec, bool):
        raise ValueError(f"respacing: expected a step count, 'N1,N2,...' or 'ddimN', got {spec!r}")
    if isinstance(spec, int):
        spec = str(spec)
    if isinstance(spec, str):
        spec = spec.strip()
        for kind in _DIFFUSERS:
            if spec.startswith(kind):
                return _diffusers_spacing(num_timesteps, kind, spec)
        if spec.startswith("ddim"):
            try:
                want = int(spec[4:])
            except ValueError:
                raise ValueError(f"respacing {spec!r}: expected 'ddimN' with an integer N") from None
            if not 1 <= want <= num_timesteps:
                raise ValueError(f"respacing {spec!r}: expected 1 <= N <= {num_timesteps} (the trained steps)")
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == want:
                    return list(range(0, num_timesteps, stride))
            return sorted({min(num_timesteps - 1, round(i * num_timesteps / want)) for i in range(want)})
        try:
            counts = [int(c) for c in spec.split(",")]
        except ValueError:
            raise ValueError(f"respacing {spec!r}: expected 'N', 'N1,N2,...', 'ddimN', 'linspaceN', 'leadingN' or "
                             f"'trailingN'") from None
    else:
        counts = [int(c) for c in spec]
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"respacing {spec!r}: section counts must be positive integers")
    base, extra = divmod(num_timesteps, len(counts))
    kept, start = [], 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"respacing {spec!r}: cannot take {count} steps from a section of {size}")
        stride = (size - 1) / (count - 1) if count > 1 else 1.0
        pos = 0.0
        for _ in range(count):  # accumulated (not j * stride): the rounding checkpoints were made with
            kept.append(start + round(pos))
            pos += stride
        start += size
    return sorted(set(kept))


def respace(diffusion: GaussianDiffusion, spec: int | str | Iterable[int] | None = None, *,
            keep: Iterable[int] | None = None) -> GaussianDiffusion:
    """A process over a subset of ``diffusion``'s steps (same mean/var/loss types); its
    ``timestep_map`` sends each new step to the timestep the model was trained with.
    ``spec``: a step count, a spec string or a list of section counts; or ``keep``: the step
    indices to keep. A spec that keeps every step returns ``diffusion`` itself."""
    if (spec is None) == (keep is None):
        raise ValueError("respace: pass exactly one of spec and keep")
    if keep is not None:
        keep = sorted(set(int(k) for k in keep))
        if not keep or keep[0] < 0 or keep[-1] >= diffusion.num_timesteps:
            raise ValueError(f"respace: keep must be step indices in [0, {diffusion.num_timesteps}), got {keep[:5]}...")
    else:
        keep = space_timesteps(diffusion.num_timesteps, spec)
        if len(keep) == diffusion.num_timesteps:
            return diffusion
    ab = diffusion.alphas_cumprod[keep]
    prev = torch.cat([ab.new_ones(1), ab[:-1]])
    betas = 1.0 - ab / prev
    return GaussianDiffusion(betas, mean_type=diffusion.mean_type, var_type=diffusion.var_type,
                             loss=diffusion.loss_type, vlb_weight=diffusion.vlb_weight,
                             timestep_map=diffusion.timestep_map[keep])


__all__ = ["space_timesteps", "respace"]
