"""What a sampling loop needs before it starts: per-sample step indices, the per-step
per-sample coefficient tables (built in float64 once, moved to the device once — no host work
or sync inside the loop), per-sample noise streams, and the NaN error."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from dalle2_fast.diffusion.gaussian import GaussianDiffusion
from dalle2_fast.ops.sampling import ddim_coefs, ddpm_coefs, dpmpp_2m_coefs


class SamplingNaNError(FloatingPointError):
    """Non-finite values appeared in x; ``step`` is the 0-based loop step, ``samples`` the bad rows."""

    def __init__(self, step: int, timestep: list[int], samples: list[int]):
        self.step, self.timestep, self.samples = step, timestep, samples
        super().__init__(f"non-finite values in x after sampling step {step} (model timestep "
                         f"{timestep[:4]}{'...' if len(timestep) > 4 else ''}) in samples {samples[:8]}"
                         f"{'...' if len(samples) > 8 else ''}")


def step_indices(diffusion: GaussianDiffusion, timesteps, batch: int, ascending: bool = False) -> torch.Tensor:
    """(S, B) int64 step indices into ``diffusion``: None -> every step (T-1 .. 0); (S,) -> the
    same for every sample; (S, B) -> per-sample sequences. Strictly decreasing along S
    (increasing with ``ascending``, for inversion), each in [0, T)."""
    T = diffusion.num_timesteps
    if timesteps is None:
        idx = torch.arange(T - 1, -1, -1)
        if ascending:
            idx = idx.flip(0)
    else:
        idx = torch.as_tensor(timesteps).cpu()
        if idx.is_floating_point():
            raise ValueError(f"timesteps must be integer step indices, got {idx.dtype}")
        idx = idx.long()
    if idx.dim() == 1:
        idx = idx[:, None].expand(-1, batch)
    if idx.dim() != 2 or idx.shape[1] != batch or idx.shape[0] == 0:
        raise ValueError(f"timesteps must be (S,) or (S, {batch}) with S >= 1, got {tuple(idx.shape)}")
    if bool(((idx < 0) | (idx >= T)).any()):
        raise ValueError(f"timesteps must be step indices in [0, {T}), got min {idx.min()} max {idx.max()}")
    d = idx[1:] - idx[:-1]
    if idx.shape[0] > 1 and not bool(((d > 0) if ascending else (d < 0)).all()):
        raise ValueError(f"timesteps must be strictly {'increasing' if ascending else 'decreasing'} along S")
    return idx.contiguous()


def _abar(diffusion: GaussianDiffusion, idx: torch.Tensor) -> torch.Tensor:
    """abar at step indices, with index -1 meaning the end of sampling (abar = 1)."""
    ab = torch.cat([diffusion.alphas_cumprod, torch.ones(1, dtype=torch.float64)])
    return ab[idx]


def _next(idx: torch.Tensor) -> torch.Tensor:
    return torch.cat([idx[1:], torch.full_like(idx[:1], -1)])


def ddpm_table(diffusion: GaussianDiffusion, idx: torch.Tensor) -> torch.Tensor:
    """(S, B, 12): ancestral steps idx[k] -> idx[k+1] (-> the end after the last); the
    variance is the process's (fixed small / fixed large / learned range) for that transition."""
    nxt = _next(idx)
    ab_t, ab_s = _abar(diffusion, idx), _abar(diffusion, nxt)
    beta_ts = 1.0 - ab_t / ab_s
    small = beta_ts * (1.0 - ab_s) / (1.0 - ab_t)
    last = nxt < 0  # no noise is added there; keep its log-variances finite (clipped, as at t = 0)
    lv_small = torch.where(last, diffusion.tables["post_logvar"][idx], torch.log(small.clamp_min(1e-300)))
    lv_large = torch.log(beta_ts)
    if diffusion.var_type == "fixed_small":
        lo, hi = lv_small, lv_small
    elif diffusion.var_type == "fixed_large":
        lo = hi = torch.where(last, lv_small, lv_large)
    else:
        lo, hi = lv_small, lv_large
    return ddpm_coefs(ab_t, ab_s, lo, hi, (~last).double())


def ddim_table(diffusion: GaussianDiffusion, idx: torch.Tensor, eta: float = 0.0, invert: bool = False,
               abar_shift: int = 0) -> torch.Tensor:
    """(S, B, 12): DDIM steps idx[k] -> idx[k+1] (-> the end). With ``invert``: the model is
    read at idx[k] and x moves to idx[k+1] (ascending), S-1 steps.

    ``abar_shift=-1``: the update (x0 and eps weights, noise) uses abar one step earlier than
    the indices, abar_{idx-1} -> abar_{idx[k+1]-1} (abar_{-1} = 1; the end stays the end), while
    eps is still read from x at abar_idx: the DDIM of DALLE2-pytorch's diffusion prior, whose
    ``p_sample_loop_ddim`` indexes ``alphas_cumprod_prev`` by the timestep."""
    if abar_shift not in (0, -1):
        raise ValueError(f"ddim_table: abar_shift must be 0 or -1, got {abar_shift}")
    if invert:
        if abar_shift:
            raise ValueError("ddim_table: abar_shift applies to sampling, not to inversion")
        ab_t, ab_s = _abar(diffusion, idx[:-1]), _abar(diffusion, idx[1:])
        return ddim_coefs(ab_t, ab_s, eta)
    nxt = _next(idx)
    table = ddim_coefs(_abar(diffusion, idx), _abar(diffusion, nxt), eta)
    if abar_shift:
        upd_t = _abar(diffusion, idx - 1)
        upd_s = torch.where(nxt < 0, torch.ones((), dtype=torch.float64), _abar(diffusion, (nxt - 1).clamp_min(-1)))
        upd = ddim_coefs(upd_t, upd_s, eta)[..., 4:]
        end = torch.zeros_like(upd)
        end[..., 0] = 1.0  # the last step returns x0 (from t = 0, abar_{-1} = 1 would give 0 / 0)
        end[..., 6] = 1.0  # ... and a known region at its own level (sqrt(abar) = 1, column 10)
        table = torch.cat([table[..., :4], torch.where((nxt < 0)[..., None], end, upd)], dim=-1)
    return table


def dpmpp_2m_table(diffusion: GaussianDiffusion, idx: torch.Tensor) -> torch.Tensor:
    """(S, B, 12): DPM-Solver++(2M) steps idx[k] -> idx[k+1] (-> the end, first order there)."""
    ab_t, ab_s = _abar(diffusion, idx), _abar(diffusion, _next(idx))
    _, h = dpmpp_2m_coefs(ab_t, ab_s)  # h of every step, (S, B)
    h_prev = torch.cat([torch.full_like(h[:1], float("nan")), h[:-1]])  # none before the first step
    return dpmpp_2m_coefs(ab_t, ab_s, h_prev)[0]


def inpaint_inputs(known, mask, shape: Sequence[int], device, dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Checked inpainting inputs of a sampling loop over x of ``shape`` (B, C, *S): ``known``
    (B or 1, C, *S) the clean image of the known region, ``mask`` (B or 1, C or 1, *S), 1 = keep
    the known value, 0 = generate (values in [0, 1]; a soft mask interpolates). Returns (known
    (B, C, *S) contiguous, mask in ``dtype``) on ``device``, or None when neither is given."""
    if known is None and mask is None:
        return None
    if known is None or mask is None:
        raise ValueError("inpainting needs both known (the image) and mask (1 = keep), got only "
                         f"{'known' if known is not None else 'mask'}")
    B, rest = shape[0], tuple(shape[1:])
    if not isinstance(known, torch.Tensor) or known.dim() != len(shape) or known.shape[0] not in (1, B) \
            or tuple(known.shape[1:]) != rest:
        raise ValueError(f"known must be ({B} or 1, {', '.join(map(str, rest))}) like x, got "
                         f"{tuple(getattr(known, 'shape', ())) or type(known).__name__}")
    ok = isinstance(mask, torch.Tensor) and mask.dim() == len(shape) and mask.shape[0] in (1, B) \
        and mask.shape[1] in (1, shape[1]) and tuple(mask.shape[2:]) == tuple(shape[2:])
    if not ok:
        raise ValueError(f"mask must be ({B} or 1, {shape[1]} or 1, {', '.join(map(str, shape[2:]))}), got "
                         f"{tuple(getattr(mask, 'shape', ())) or type(mask).__name__}")
    known = known.to(device=device, dtype=dtype).expand(B, *rest).contiguous()
    return known, mask.to(device=device, dtype=dtype)


@dataclass
class Plan:
    """A sampling loop, fixed before it starts. ``coefs`` (S, B, 12) and ``model_t`` (S, B)
    live on the sampling device; ``idx`` (S, B) are this process's step indices (CPU)."""

    kind: str  # 'ddpm' | 'ddim' | 'dpmpp_2m'
    idx: torch.Tensor
    model_t: torch.Tensor
    coefs: torch.Tensor
    needs_noise: bool

    @property
    def num_steps(self) -> int:
        return self.coefs.shape[0]


class NoiseSource:
    """Gaussian noise for a batch. With ``seeds`` each sample owns a generator, so sample i
    draws the same numbers whatever the batch it is in; else one ``generator`` (or the global
    RNG) serves the whole batch."""

    def __init__(self, batch: int, sample_shape: Sequence[int], device, dtype, seeds=None, generator=None):
        self.shape, self.device, self.dtype = tuple(sample_shape), torch.device(device), dtype
        self.seeds = None if seeds is None else [int(s) for s in seeds]
        if self.seeds is not None and len(self.seeds) != batch:
            raise ValueError(f"seeds must have one entry per sample ({batch}), got {len(self.seeds)}")
        if self.seeds is not None and generator is not None:
            raise ValueError("pass seeds or generator, not both")
        self.batch, self.generator = batch, generator
        self.gens = None if self.seeds is None else [self._gen(s) for s in self.seeds]

    def _gen(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def reseed(self) -> None:
        if self.gens is not None:
            for g, s in zip(self.gens, self.seeds):
                g.manual_seed(s)

    def draw(self) -> torch.Tensor:
        """(B, *sample_shape) standard normal."""
        if self.gens is None:
            return torch.randn((self.batch, *self.shape), generator=self.generator, device=self.device,
                               dtype=self.dtype)
        return torch.stack([torch.randn(self.shape, generator=g, device=self.device, dtype=self.dtype)
                            for g in self.gens])


__all__ = ["Plan", "NoiseSource", "SamplingNaNError", "step_indices", "ddpm_table", "ddim_table",
           "dpmpp_2m_table", "inpaint_inputs"]
