"""How a stage samples when the caller does not say: its sampler, DDIM's eta, the x0 clipping,
and how an integer step count picks timesteps. Stored in each unCLIP stage's config
(``DiffusionPriorConfig.sampling``, ``DecoderConfig.sampling``, ``UpsamplerConfig.sampling``),
so a model imported from another project samples the way that project does without flags
(e.g. Karlo's decoder: ancestral steps, learned variance, x0 clipped to [-1, 1], diffusers'
``linspace`` timesteps), while the package's own stages keep their defaults.

``spacing`` names the rule that turns ``steps=N`` into timesteps (see
:mod:`dalle2_fast.diffusion.respace`): ``even`` is ours (= guided-diffusion's
``space_timesteps``, which Karlo's original code uses); ``linspace`` is diffusers'
``UnCLIPScheduler`` (round(k (T-1)/(N-1))) and ``DDPMScheduler(timestep_spacing="linspace")``,
which differ from ``even`` for some N (e.g. 21, 23, 31 of 1000) because ``even`` accumulates
the stride before rounding; ``leading`` / ``trailing`` are ``DDPMScheduler``'s other two.
"""
from __future__ import annotations

from dataclasses import dataclass

SAMPLER_NAMES = ("ddpm", "ddim", "dpmpp")
CLIP_NAMES = (None, "static", "dynamic")
SPACINGS = ("even", "linspace", "leading", "trailing")


class _FromConfig:
    """Sentinel default of ``sample(clip=...)``: take the stage config's value (None already
    means 'no clipping')."""

    def __repr__(self) -> str:
        return "FROM_CONFIG"


FROM_CONFIG = _FromConfig()


@dataclass(frozen=True)
class SamplingConfig:
    """A stage's sampling defaults. sampler: 'ddpm' (ancestral, the process's variance), 'ddim'
    (with ``eta``) or 'dpmpp'; clip: None, 'static' (x0 clamped to [-1, 1]) or 'dynamic'
    (Imagen thresholding); spacing: how an int ``steps`` picks timesteps (module docstring)."""

    sampler: str = "ddim"
    eta: float = 0.0
    clip: str | None = None
    spacing: str = "even"

    def __post_init__(self):
        if self.sampler not in SAMPLER_NAMES:
            raise ValueError(f"SamplingConfig.sampler must be one of {SAMPLER_NAMES}, got {self.sampler!r}")
        if self.clip not in CLIP_NAMES:
            raise ValueError(f"SamplingConfig.clip must be one of {CLIP_NAMES}, got {self.clip!r}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"SamplingConfig.spacing must be one of {SPACINGS}, got {self.spacing!r}")
        if self.eta < 0 or (self.eta and self.sampler != "ddim"):
            raise ValueError(f"SamplingConfig.eta must be >= 0 and only set for 'ddim', got {self.eta} with "
                             f"{self.sampler!r}")

    def steps(self, steps):
        """The respacing spec for ``steps``: an int N under this spacing; strings, sequences and
        None pass through (an explicit spec always wins)."""
        if isinstance(steps, bool) or not isinstance(steps, int) or self.spacing == "even":
            return steps
        return f"{self.spacing}{steps}"

    def resolve(self, sampler: str | None, eta: float | None, clip) -> tuple[str, float, str | None]:
        """(sampler, eta, clip) of a call: each argument left at its default (None, None,
        FROM_CONFIG) takes this config's value; eta is 0 for a sampler other than 'ddim'."""
        s = self.sampler if sampler is None else sampler
        if eta is None:
            eta = self.eta if s == "ddim" and s == self.sampler else 0.0
        return s, float(eta), self.clip if clip is FROM_CONFIG else clip


__all__ = ["SamplingConfig", "FROM_CONFIG", "SPACINGS"]
