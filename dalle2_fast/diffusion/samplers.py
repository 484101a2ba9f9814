"""Samplers as plain functions of (denoiser, diffusion, x_T or shape, options).

``denoiser(x_t, t, **model_kwargs) -> output`` is the network (or a guidance wrapper around
it) in ``diffusion``'s parameterisation; ``t`` are the timesteps it was trained with
(``diffusion.timestep_map`` of the step indices). A denoiser with a ``forward_pair`` method
(``ClassifierFreeGuidance``) hands the batched (cond; uncond) output to the fused step, which
does the guidance combine in the same pass.

Every step is one fused op (``dalle2_fast.ops.sampling``) with per-sample coefficients, so
``timesteps`` may be (S, B): each sample on its own schedule. ``seeds`` gives each sample its
own generator: sample i is the same whatever batch it is drawn in (for a batch-independent
denoiser). Non-finite values stop the loop with ``SamplingNaNError`` naming the step.
``cuda_graph=True`` (CUDA only) captures the whole loop once and replays it (``graphs.py``).

Inpainting: ``known`` (the clean image) and ``mask`` (1 = keep the known value) make every step
replace the known region by the known image forward-noised to the step's level, inside the
fused step (``ops.sampling``); the last step returns the known pixels exactly (binary mask).
The ancestral sampler reuses its step noise for the known region (each element reads one of
them for a binary mask); DDIM and DPM-Solver++ draw it. RePaint's resampling with jumps back in
time is ``repaint.repaint_sample``.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from dalle2_fast.diffusion.gaussian import GaussianDiffusion
from dalle2_fast.diffusion.plan import (NoiseSource, Plan, SamplingNaNError, ddim_table, ddpm_table,
                                        dpmpp_2m_table, inpaint_inputs, step_indices)
from dalle2_fast.ops.sampling import ddim_step, ddpm_step, dpmpp_2m_step

StepCallback = Callable[[int, torch.Tensor, torch.Tensor | None], None]
SAMPLERS = ("ddpm", "ddim", "dpmpp")  # plain samplers; run_sampler also runs "repaint" (inpainting)


def ddpm_sample(denoiser, diffusion: GaussianDiffusion, x_T, *, timesteps=None, model_kwargs=None, clip=None,
                dynamic_p=0.995, seeds=None, generator=None, progress=False, callback=None, cuda_graph=False,
                backend=None, device=None, dtype=torch.float32, known=None, mask=None):
    """Ancestral sampling (Ho et al. Alg. 2) with the process's variance (fixed or learned).

    Args:
        x_T: (B, C, *S) starting noise, or a shape tuple (noise drawn from ``seeds`` /
            ``generator`` on ``device`` in ``dtype``).
        timesteps: None (every step of ``diffusion``, respace it for fewer), (S,) or (S, B)
            strictly decreasing step indices.
        clip: None | 'static' | 'dynamic' (x0 clipping / Imagen thresholding, ``dynamic_p``).
        seeds: one int per sample (own generator each), or None. callback(step, x, x0).
        known, mask: inpainting (module docstring; ``plan.inpaint_inputs`` for the shapes).
    Returns:
        x_0 (B, C, *S).
    """
    return _sample("ddpm", denoiser, diffusion, x_T, timesteps, model_kwargs, clip, dynamic_p, seeds, generator,
                   progress, callback, cuda_graph, backend, device, dtype, known=known, mask=mask)


def ddim_sample(denoiser, diffusion: GaussianDiffusion, x_T, *, eta=0.0, timesteps=None, model_kwargs=None,
                clip=None, dynamic_p=0.995, seeds=None, generator=None, progress=False, callback=None,
                cuda_graph=False, backend=None, device=None, dtype=torch.float32, abar_shift=0, known=None, mask=None):
    """DDIM (Song et al. 2021, Eq. 12); ``eta`` = 0 is deterministic, 1 matches DDPM's
    posterior variance. ``abar_shift=-1``: DALLE2-pytorch's prior DDIM (see ``plan.ddim_table``).
    Other arguments as ``ddpm_sample``."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    return _sample("ddim", denoiser, diffusion, x_T, timesteps, model_kwargs, clip, dynamic_p, seeds, generator,
                   progress, callback, cuda_graph, backend, device, dtype, eta=eta, abar_shift=abar_shift,
                   known=known, mask=mask)


def dpmpp_2m_sample(denoiser, diffusion: GaussianDiffusion, x_T, *, timesteps=None, model_kwargs=None, clip=None,
                    dynamic_p=0.995, seeds=None, generator=None, progress=False, callback=None, cuda_graph=False,
                    backend=None, device=None, dtype=torch.float32, known=None, mask=None):
    """DPM-Solver++(2M) (Lu et al. 2022), deterministic, for 10-25 steps (respace the process or
    pass ``timesteps``). Arguments as ``ddpm_sample``."""
    return _sample("dpmpp_2m", denoiser, diffusion, x_T, timesteps, model_kwargs, clip, dynamic_p, seeds,
                   generator, progress, callback, cuda_graph, backend, device, dtype, known=known, mask=mask)


def run_sampler(sampler: str, denoiser, diffusion: GaussianDiffusion, x_T, *, steps=None, eta: float = 0.0,
                **kw) -> torch.Tensor:
    """The one entry point models sample through: respace ``diffusion`` to ``steps`` (an int,
    "ddimN" or section counts — the respacing vocabulary; None: every step) and run the named
    sampler ('ddpm' ancestral, 'ddim' with ``eta``, 'dpmpp' = DPM-Solver++(2M), 'repaint' =
    RePaint's resampling over ancestral steps, needs ``known``/``mask``, takes ``jump_length``,
    ``jump_n_sample``). Other keyword arguments go to the sampler (model_kwargs, clip, seeds,
    progress, known, mask, ...)."""
    from dalle2_fast.diffusion.respace import respace

    if sampler not in SAMPLERS + ("repaint",):
        raise ValueError(f"sampler must be one of {SAMPLERS + ('repaint',)}, got {sampler!r}")
    if eta and sampler not in ("ddim", "repaint"):
        raise ValueError(f"eta applies to the 'ddim' sampler only, got eta={eta} with {sampler!r}")
    if sampler != "repaint" and ("jump_length" in kw or "jump_n_sample" in kw):
        raise ValueError(f"jump_length / jump_n_sample apply to the 'repaint' sampler only, got {sampler!r}")
    proc = diffusion if steps is None else respace(diffusion, steps)
    if sampler == "repaint":
        from dalle2_fast.diffusion.repaint import repaint_sample

        return repaint_sample(denoiser, proc, x_T, eta=eta, **kw)
    if sampler == "ddim":
        return ddim_sample(denoiser, proc, x_T, eta=eta, **kw)
    return (ddpm_sample if sampler == "ddpm" else dpmpp_2m_sample)(denoiser, proc, x_T, **kw)


@torch.no_grad()
def ddim_invert(denoiser, diffusion: GaussianDiffusion, x0: torch.Tensor, *, timesteps=None, model_kwargs=None,
                progress=False, backend=None) -> torch.Tensor:
    """Deterministic DDIM inversion: runs the eta = 0 update forwards from data ``x0`` (taken as
    the level of the first index) to the last index of ``timesteps`` (ascending step indices;
    default all). ``ddim_sample`` over the same indices, descending, maps the result back."""
    idx = step_indices(diffusion, timesteps, x0.shape[0], ascending=True)
    table = ddim_table(diffusion, idx, 0.0, invert=True).to(device=x0.device)
    model_t = diffusion.timestep_map[idx[:-1]].to(x0.device)
    x = x0
    for k in tqdm(range(table.shape[0]), disable=not progress, desc="ddim invert"):
        out, g = _denoise(denoiser, x, model_t[k], model_kwargs or {})
        x, _ = ddim_step(x, out, table[k], None, pred=diffusion.mean_type, guidance=g, backend=backend)
        _check_finite(x, k, model_t[k])
    return x


# ----------------------------------------------------------------------------- the loop
def _denoise(denoiser, x, t, model_kwargs):
    """(model output, guidance scale (B,) or None). A CFG wrapper returns the batched pair."""
    pair = getattr(denoiser, "forward_pair", None)
    out, g = pair(x, t, **model_kwargs) if pair is not None else (denoiser(x, t, **model_kwargs), None)
    if out.dtype != x.dtype:  # a network under autocast (bf16 / fp16): the sampler's state keeps x's dtype
        out = out.to(x.dtype)
    return out, g


def start_shape(x_T, device, dtype) -> tuple[tuple[int, ...], torch.device, torch.dtype]:
    """(shape, device, dtype) of a sampling loop's start: a tensor x_T gives its own, a shape
    (B, C, ...) takes ``device`` (default CPU) and ``dtype``."""
    if isinstance(x_T, torch.Tensor):
        if x_T.dim() < 2:
            raise ValueError(f"x_T must be (B, C, ...), got shape {tuple(x_T.shape)}")
        return tuple(x_T.shape), x_T.device, x_T.dtype
    shape = tuple(int(s) for s in x_T)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"x_T must be a tensor or a shape (B, C, ...) of positive sizes, got {x_T!r}")
    return shape, torch.device(device or "cpu"), dtype


def _check_finite(x, k, model_t):
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).nonzero().flatten().tolist()
        raise SamplingNaNError(k, model_t.tolist(), bad)


def make_plan(kind: str, diffusion: GaussianDiffusion, timesteps, batch: int, device, eta: float = 0.0,
              abar_shift: int = 0) -> Plan:
    idx = step_indices(diffusion, timesteps, batch)
    if kind == "ddpm":
        table = ddpm_table(diffusion, idx)
    elif kind == "ddim":
        table = ddim_table(diffusion, idx, eta, abar_shift=abar_shift)
    else:
        table = dpmpp_2m_table(diffusion, idx)
    needs_noise = kind == "ddpm" or (kind == "ddim" and eta > 0)
    return Plan(kind, idx, diffusion.timestep_map[idx].to(device), table.to(device), needs_noise)


def make_step(plan: Plan, denoiser, diffusion: GaussianDiffusion, model_kwargs, noise: NoiseSource, clip,
              dynamic_p, backend, inpaint=None):
    """step(k, x, prev_x0) -> (x_next, x0): one model call and one fused op, device work only.
    ``inpaint``: (known, mask) from ``plan.inpaint_inputs``, blended inside the fused op. The
    known region is forward-noised with the step's own noise in a stochastic loop (DDPM, DDIM
    eta > 0); a deterministic loop (DDIM eta 0, DPM-Solver++) draws that noise once and keeps
    it, as its own trajectory keeps x_T's (``step.redraw_known()`` draws it anew: RePaint after
    a jump) — one ``randn`` per loop instead of one per step."""
    pred, learned = diffusion.mean_type, diffusion.learned_var
    known, mask = inpaint if inpaint is not None else (None, None)
    deterministic = plan.kind == "dpmpp_2m" or (plan.kind == "ddim" and not plan.needs_noise)
    held = {}

    def known_noise():
        if not deterministic:
            return noise.draw()
        if "z" not in held:
            held["z"] = noise.draw()
        return held["z"]

    def step(k, x, prev_x0):
        out, g = _denoise(denoiser, x, plan.model_t[k], model_kwargs)
        coefs = plan.coefs[k]
        # the known region's noise: none at the last step (abar_s = 1 there)
        kz_needed = known is not None and k < plan.num_steps - 1
        kw = dict(pred=pred, guidance=g, clip=clip, dynamic_p=dynamic_p, known=known, mask=mask, backend=backend)
        if plan.kind == "ddpm":
            z = noise.draw()
            return ddpm_step(x, out, coefs, z, learned_var=learned, want_x0=True,
                             known_noise=z if kz_needed else None, **kw)
        if plan.kind == "ddim":
            z = noise.draw() if plan.needs_noise else None
            kz = (z if z is not None else known_noise()) if kz_needed else None
            return ddim_step(x, out, coefs, z, want_x0=True, known_noise=kz, **kw)
        return dpmpp_2m_step(x, out, coefs, prev_x0, known_noise=known_noise() if kz_needed else None, **kw)

    step.redraw_known = held.clear
    return step


@torch.no_grad()
def _sample(kind, denoiser, diffusion, x_T, timesteps, model_kwargs, clip, dynamic_p, seeds, generator, progress,
            callback, cuda_graph, backend, device, dtype, eta=0.0, abar_shift=0, known=None, mask=None):
    model_kwargs = dict(model_kwargs or {})
    shape, device, dtype = start_shape(x_T, device, dtype)
    inpaint = inpaint_inputs(known, mask, shape, device, dtype)
    if inpaint is not None and cuda_graph:
        raise ValueError("cuda_graph=True does not capture inpainting (known / mask); sample without it")
    noise = NoiseSource(shape[0], shape[1:], device, dtype, seeds, generator)
    x = x_T if isinstance(x_T, torch.Tensor) else noise.draw()
    plan = make_plan(kind, diffusion, timesteps, shape[0], device, eta, abar_shift)
    step = make_step(plan, denoiser, diffusion, model_kwargs, noise, clip, dynamic_p, backend, inpaint)
    if cuda_graph:
        from dalle2_fast.diffusion.graphs import run_graphed

        key = (id(denoiser), id(diffusion), clip, dynamic_p, backend, eta > 0, abar_shift)
        return run_graphed(step, plan, x, model_kwargs, noise, key, draw_x=not isinstance(x_T, torch.Tensor))
    prev = None
    for k in tqdm(range(plan.num_steps), disable=not progress, desc=kind):
        x, prev = step(k, x, prev)
        _check_finite(x, k, plan.model_t[k])
        if callback is not None:
            callback(k, x, prev)
    return x


__all__ = ["SAMPLERS", "run_sampler", "ddpm_sample", "ddim_sample", "dpmpp_2m_sample", "ddim_invert", "SamplingNaNError", "make_plan",
           "make_step"]
