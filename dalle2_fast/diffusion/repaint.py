"""RePaint (Lugmayr et al. 2022): inpainting with resampling — the sampler goes down one step at
a time with the known region blended in (inside the fused step, ``ops.sampling``), and every
``jump_length`` steps it jumps back up ``jump_length`` steps by forward noising,
``jump_n_sample - 1`` times per jump point, so the generated region harmonises with its border.

The schedule is over the step indices of ``diffusion`` (respace it first, as ``run_sampler``
does): every sample of the batch follows the same schedule; noise is per sample (``seeds``).
Cost: ``num_model_calls(T, jump_length, jump_n_sample)`` network evaluations for T indices.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from dalle2_fast.diffusion.gaussian import GaussianDiffusion
from dalle2_fast.diffusion.plan import NoiseSource, inpaint_inputs


def repaint_schedule(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> list[int]:
    """Visited step indices, from ``num_steps - 1`` down to -1 (the data), with jumps: landing on
    an index i in range(0, num_steps - jump_length, jump_length), the walk goes back up
    ``jump_length`` indices, ``jump_n_sample - 1`` times in all at that i (RePaint's schedule)."""
    for name, v, lo in (("num_steps", num_steps, 1), ("jump_length", jump_length, 1), ("jump_n_sample", jump_n_sample, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    jumps = {i: jump_n_sample - 1 for i in range(0, num_steps - jump_length, jump_length)}
    i, out = num_steps - 1, [num_steps - 1]
    while i >= 0:
        i -= 1
        out.append(i)
        if jumps.get(i, 0) > 0:  # one jump of jump_length (q(x_b | x_a) in one draw)
            jumps[i] -= 1
            i += jump_length
            out.append(i)
    return out


def num_model_calls(num_steps: int, jump_length: int = 10, jump_n_sample: int = 10) -> int:
    """Network evaluations of a RePaint run: one per downward move of the schedule."""
    s = repaint_schedule(num_steps, jump_length, jump_n_sample)
    return sum(1 for a, b in zip(s, s[1:]) if b < a)


@torch.no_grad()
def repaint_sample(denoiser, diffusion: GaussianDiffusion, x_T, *, known=None, mask=None, jump_length: int = 10,
                   jump_n_sample: int = 10, base: str = "ddpm", eta: float = 0.0, model_kwargs=None, clip=None,
                   dynamic_p=0.995, seeds=None, generator=None, progress=False, callback=None, backend=None,
                   device=None, dtype=torch.float32, timesteps=None, cuda_graph=False):
    """RePaint over every index of ``diffusion`` (respace it for fewer steps).

    Args:
        x_T: (B, C, *S) starting noise or a shape. known: (B or 1, C, *S) the clean image of the
            known region; mask: (B or 1, C or 1, *S), 1 = keep known, 0 = generate.
        jump_length, jump_n_sample: RePaint's j and r (r = 1: no resampling, the plain blend).
        base: the downward step, 'ddpm' (ancestral, as the paper) or 'ddim' (with ``eta``).
        Other arguments as ``samplers.ddpm_sample``; callback(step, x, x0) after each downward
        move (step counts the moves).
    Returns:
        x_0 (B, C, *S); where the mask is 1 it equals ``known`` (binary mask).
    """
    from dalle2_fast.diffusion.samplers import _check_finite, make_plan, make_step, start_shape

    if base not in ("ddpm", "ddim"):
        raise ValueError(f"base must be 'ddpm' or 'ddim', got {base!r}")
    if timesteps is not None:
        raise ValueError("repaint walks every index of the (respaced) process; respace it instead of timesteps")
    if cuda_graph:
        raise ValueError("cuda_graph=True does not capture RePaint's loop")
    shape, device, dtype = start_shape(x_T, device, dtype)
    inpaint = inpaint_inputs(known, mask, shape, device, dtype)
    if inpaint is None:
        raise ValueError("repaint needs known and mask")
    sched = repaint_schedule(diffusion.num_timesteps, jump_length, jump_n_sample)
    noise = NoiseSource(shape[0], shape[1:], device, dtype, seeds, generator)
    x = x_T if isinstance(x_T, torch.Tensor) else noise.draw()
    T = diffusion.num_timesteps
    plan = make_plan(base, diffusion, None, shape[0], device, eta)  # row T-1-i: the step down from index i
    step = make_step(plan, denoiser, diffusion, dict(model_kwargs or {}), noise, clip, dynamic_p, backend, inpaint)
    abar = diffusion.alphas_cumprod
    moves = list(zip(sched, sched[1:]))
    n = 0
    for a, b in tqdm(moves, disable=not progress, desc="repaint"):
        if b < a:  # one step down, the known region blended in the fused step
            k = T - 1 - a
            x, x0 = step(k, x, None)
            _check_finite(x, k, plan.model_t[k])
            if callback is not None:
                callback(n, x, x0)
            n += 1
        else:  # back up from index a to b: q(x_b | x_a)
            ratio = float(abar[b] / abar[a])
            x = ratio**0.5 * x + (1.0 - ratio) ** 0.5 * noise.draw()
            step.redraw_known()  # a deterministic base's known-region noise: new after each jump
    return x


def inpaint_sampling(sampler: str, eta: float, known, mask, jumps=None) -> tuple[str, float, dict]:
    """What a model's ``sample`` hands ``run_sampler`` for inpainting: (sampler, eta, extra
    keyword arguments). No ``known``: unchanged. ``jumps`` = (jump_length, jump_n_sample):
    RePaint over the model's sampler (ancestral, or DDIM with its eta; DPM-Solver++ is
    multistep, so DDIM stands in for it); None: the model's sampler with the plain fused blend."""
    if known is None and mask is None:
        if jumps is not None:
            raise ValueError("jumps: RePaint's resampling needs known and mask")
        return sampler, eta, {}
    kw = {"known": known, "mask": mask}
    if jumps is None:
        return sampler, eta, kw
    try:
        jl, jn = (int(v) for v in jumps)
    except (TypeError, ValueError):
        raise ValueError(f"jumps must be (jump_length, jump_n_sample), got {jumps!r}") from None
    base = "ddpm" if sampler == "ddpm" else "ddim"
    return "repaint", (eta if base == "ddim" else 0.0), dict(kw, jump_length=jl, jump_n_sample=jn, base=base)


__all__ = ["repaint_sample", "repaint_schedule", "num_model_calls", "inpaint_sampling"]
