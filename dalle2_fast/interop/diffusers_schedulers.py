"""diffusers' ``UnCLIPScheduler`` / ``DDPMScheduler`` configs -> our process (``DiffusionConfig``)
and sampling conventions (``SamplingConfig``, plus the x0 clamp range).

What each field means in theirs, and ours:

- ``beta_schedule='squaredcos_cap_v2'``: the cosine schedule (Nichol & Dhariwal Eq. 17, betas
  capped at 0.999) = ``schedule='cosine'``; ``'linear'`` with diffusers' default 1e-4 .. 0.02 at
  T = 1000 = ``'linear'``. Other schedules / betas are refused.
- ``prediction_type``: 'epsilon' -> 'eps', 'sample' -> 'x0', 'v_prediction' -> 'v'.
- ``variance_type``: 'fixed_small(_log)' -> 'fixed_small' (the posterior variance of the
  respaced step, as ours), 'fixed_large(_log)' -> 'fixed_large', 'learned_range' -> ours
  (log-variance interpolated between the respaced step's posterior variance and its beta:
  ``UnCLIPScheduler``'s formula, which ours is).
- ``clip_sample`` / ``clip_sample_range``: x0 clamped to [-r, r] at every step: r = 1 is our
  ``clip='static'``; another r is the prior's ``x0_clamp`` (x0-predicting models only).
- timesteps: ``UnCLIPScheduler`` -> spacing 'linspace'; ``DDPMScheduler`` -> its
  ``timestep_spacing`` ('leading' with ``steps_offset`` 0 only).
- sampling is ancestral ('ddpm'); no noise is added on the step that ends the chain (theirs adds
  none at t = 0; with 'trailing' spacing theirs adds noise of std <= 1e-10 there under
  'fixed_small_log').
"""
from __future__ import annotations

from dalle2_fast.checkpoint import CheckpointError
from dalle2_fast.diffusion import DiffusionConfig, SamplingConfig

_PRED = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_VAR = {"fixed_small": "fixed_small", "fixed_small_log": "fixed_small", "fixed_large": "fixed_large",
        "fixed_large_log": "fixed_large", "learned_range": "learned_range"}
_CLASSES = ("UnCLIPScheduler", "DDPMScheduler")


def scheduler_conventions(cfg: dict, who: str) -> tuple[DiffusionConfig, SamplingConfig, float | None]:
    """(process, sampling defaults, clip range or None) of a scheduler config dict."""
    # a saved scheduler_config.json names its class; a config dict from ``scheduler.config`` does not
    cls = cfg.get("_class_name") or ("DDPMScheduler" if "timestep_spacing" in cfg else "UnCLIPScheduler")
    if cls not in _CLASSES:
        raise CheckpointError(f"{who}: scheduler {cls!r} is not supported (supported: {list(_CLASSES)})")
    T = int(cfg.get("num_train_timesteps", 1000))
    sched = cfg.get("beta_schedule", "squaredcos_cap_v2")
    if cfg.get("trained_betas") is not None:
        raise CheckpointError(f"{who}: trained_betas are not supported (a named schedule is)")
    if sched == "squaredcos_cap_v2":
        schedule = "cosine"
    elif sched == "linear" and T == 1000 and cfg.get("beta_start", 1e-4) == 1e-4 and cfg.get("beta_end", 0.02) == 0.02:
        schedule = "linear"
    else:
        raise CheckpointError(f"{who}: beta_schedule {sched!r} with these betas is not supported "
                              "(squaredcos_cap_v2, or linear 1e-4..0.02 at T=1000)")
    if cfg.get("rescale_betas_zero_snr"):
        raise CheckpointError(f"{who}: rescale_betas_zero_snr is not supported")
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in _PRED:
        raise CheckpointError(f"{who}: prediction_type {pred!r} (supported: {list(_PRED)})")
    var = cfg.get("variance_type", "fixed_small_log" if cls == "UnCLIPScheduler" else "fixed_small")
    if var not in _VAR:
        raise CheckpointError(f"{who}: variance_type {var!r} (supported: {list(_VAR)})")
    if cfg.get("thresholding"):
        raise CheckpointError(f"{who}: dynamic thresholding (thresholding=true) is not supported")
    clip_range = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", True) else None
    if cls == "UnCLIPScheduler":
        spacing = "linspace"
    else:
        spacing = cfg.get("timestep_spacing", "leading")
        if spacing not in ("linspace", "leading", "trailing"):
            raise CheckpointError(f"{who}: timestep_spacing {spacing!r} is not supported")
        if spacing == "leading" and cfg.get("steps_offset", 0):
            raise CheckpointError(f"{who}: steps_offset={cfg['steps_offset']} is not supported")
    vt = _VAR[var]
    diffusion = DiffusionConfig(schedule=schedule, num_timesteps=T, mean_type=_PRED[pred], var_type=vt,
                                loss="hybrid" if vt == "learned_range" else "simple")
    sampling = SamplingConfig(sampler="ddpm", clip="static" if clip_range == 1.0 else None, spacing=spacing)
    return diffusion, sampling, clip_range


def image_stage_conventions(cfg: dict, who: str) -> tuple[DiffusionConfig, SamplingConfig]:
    """For an image stage (decoder, upsampler): the clip range must be 1 or off."""
    diffusion, sampling, r = scheduler_conventions(cfg, who)
    if r not in (None, 1.0):
        raise CheckpointError(f"{who}: clip_sample_range={r} for an image model is not supported (1.0 or "
                              "clip_sample=false)")
    return diffusion, sampling


__all__ = ["scheduler_conventions", "image_stage_conventions"]
