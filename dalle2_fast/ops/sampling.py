"""Fused batched sampler steps: ``ddpm_step``, ``ddim_step``, ``dpmpp_2m_step``, ``predict_x0``.

One pass over the batch does what an eager sampler loop does in ~10 kernels: the
classifier-free-guidance combine of a batched (cond; uncond) model output, the predicted x0
(eps / x0 / v parameterisation), x0 clipping or Imagen dynamic thresholding, the sampler's
update (posterior mean + learned-variance interpolation + noise for DDPM; Eq. 12 of DDIM;
the DPM-Solver++(2M) multistep update) — with every coefficient per sample, so that each
sample of a batch may sit at its own timestep. The math is written once in
``csrc/include/dalle2_fast/sampling.h`` (CPU and CUDA), mirrored by ``sampling_step_ref``
below (the oracle, torch backend and benchmark baseline) and by the Triton kernel.

Coefficients: a (B, 12) table built in float64 by ``ddpm_coefs`` / ``ddim_coefs`` /
``dpmpp_2m_coefs`` (see sampling.h for the layout). Dynamic thresholding needs a per-sample
percentile of |x0| first, so it costs one extra pass (``predict_x0``, then a ``kthvalue``).

Inpainting (RePaint, Lugmayr et al. 2022) is part of the same pass: with ``known`` (the x0 of
the known region, x's shape), ``mask`` ((B or 1, C or 1, *S); **1 = keep the known value, 0 =
generate**) and ``known_noise`` (x's shape, or None for no noise), the step's result becomes
``mask * (sqrt(abar_s) known + sqrt(1 - abar_s) known_noise) + (1 - mask) * x_s`` — the known
region forward-noised to the level the step lands on (columns 10, 11 of the table). At the end
of sampling (abar_s = 1) a binary mask returns ``known`` exactly where it is 1. A soft mask
(values in (0, 1)) interpolates. NaN in either term makes the element NaN (IEEE), on every
backend. The returned x0 is the model's prediction, not blended.
"""
from __future__ import annotations

import math

import torch

from dalle2_fast import _ext
from dalle2_fast.ops._backends import family

KINDS = {"x0": 0, "ddpm": 1, "ddim": 2, "dpmpp_2m": 3}
PREDS = {"eps": 0, "x0": 1, "v": 2}
CLIPS = (None, "static", "dynamic")
NUM_COEFS = 12
_FLOATS = (torch.float32, torch.float16, torch.bfloat16)

sampling_family = family("sampling_step")


# ----------------------------------------------------------------------------- coefficients
def _base(abar_t: torch.Tensor) -> list[torch.Tensor]:
    a, s = abar_t.sqrt(), (1.0 - abar_t).sqrt()
    return [a, s, 1.0 / a, 1.0 / s]


def _table(cols: list[torch.Tensor], abar_s: torch.Tensor) -> torch.Tensor:
    """The ten columns of a sampler (zero-padded), then the known region's scale to the target
    level: sqrt(abar_s), sqrt(1 - abar_s) (columns 10, 11)."""
    cols = cols + [torch.zeros_like(cols[0])] * (NUM_COEFS - 2 - len(cols))
    cols = cols + [abar_s.sqrt(), (1.0 - abar_s).clamp_min(0).sqrt()]
    return torch.stack(cols, dim=-1)  # (..., B, 12)


def _f64(name: str, v, like: torch.Tensor | None = None) -> torch.Tensor:
    """float64 tensor; a scalar is broadcast to ``like``'s shape. (B,) per step, or (S, B) to
    build the tables of a whole loop at once."""
    t = torch.as_tensor(v, dtype=torch.float64, device=None if like is None else like.device)
    if like is not None and t.shape != like.shape:
        if t.dim() != 0:
            raise ValueError(f"{name} must be a scalar or shaped like abar_t {tuple(like.shape)}, "
                             f"got shape {tuple(t.shape)}")
        t = t.expand(like.shape)
    if t.dim() not in (1, 2):
        raise ValueError(f"{name} must be a (B,) or (S, B) tensor, got shape {tuple(t.shape)}")
    return t


def ddpm_coefs(abar_t, abar_s, logvar, logvar_max=None, add_noise=True) -> torch.Tensor:
    """Ancestral step t -> s (s < t) on the posterior q(x_s | x_t, x0) (Ho et al. Eq. 7,
    for any s < t): mean = c0 x0 + c1 x_t. ``logvar``: the fixed log-variance, or the lower end
    of the learned range (Nichol & Dhariwal Eq. 15) whose upper end is ``logvar_max``.
    All arguments (B,) (or (S, B)) or scalars; returns the (B, 12) (or (S, B, 12)) float64 table."""
    abar_t = _f64("abar_t", abar_t)
    abar_s, lv = _f64("abar_s", abar_s, abar_t), _f64("logvar", logvar, abar_t)
    lvmax = lv if logvar_max is None else _f64("logvar_max", logvar_max, abar_t)
    nz = _f64("add_noise", add_noise, abar_t)
    beta_ts = 1.0 - abar_t / abar_s
    c0 = abar_s.sqrt() * beta_ts / (1.0 - abar_t)
    c1 = (abar_t / abar_s).sqrt() * (1.0 - abar_s) / (1.0 - abar_t)
    return _table(_base(abar_t) + [c0, c1, lv, lvmax, nz, nz * (0.5 * lv).exp()], abar_s)


def ddim_coefs(abar_t, abar_s, eta=0.0) -> torch.Tensor:
    """DDIM step t -> s (Song et al. Eq. 12; s > t inverts): x_s = c0 x0 + c1 eps + c2 z with
    sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s)."""
    abar_t = _f64("abar_t", abar_t)
    abar_s, eta = _f64("abar_s", abar_s, abar_t), _f64("eta", eta, abar_t)
    sigma = eta * ((1.0 - abar_s) / (1.0 - abar_t) * (1.0 - abar_t / abar_s)).clamp_min(0).sqrt()
    c1 = (1.0 - abar_s - sigma**2).clamp_min(0).sqrt()
    return _table(_base(abar_t) + [abar_s.sqrt(), c1, sigma], abar_s)


def dpmpp_2m_coefs(abar_t, abar_s, h_prev=None) -> tuple[torch.Tensor, torch.Tensor]:
    """DPM-Solver++(2M) step t -> s (Lu et al. 2022, Alg. 2, data prediction), with
    lambda = log(alpha/sigma) and h = lambda_s - lambda_t:
    x_s = (sigma_s/sigma_t) x_t - alpha_s expm1(-h) D, D = (1 + 1/2r) x0 - (1/2r) x0_prev,
    r = h_prev / h. First-order (D = x0) where ``h_prev`` is None / NaN or s is the end
    (abar_s = 1). Returns (table (B, 12), h (B,) to pass as the next step's h_prev)."""
    abar_t = _f64("abar_t", abar_t)
    abar_s = _f64("abar_s", abar_s, abar_t)
    lam = lambda ab: 0.5 * (ab.log() - (-ab).log1p())  # noqa: E731
    h = lam(abar_s) - lam(abar_t)  # +inf at the end
    ratio = ((1.0 - abar_s) / (1.0 - abar_t)).sqrt()
    c1 = -abar_s.sqrt() * torch.expm1(-h)
    w_cur, w_prev = torch.ones_like(h), torch.zeros_like(h)
    if h_prev is not None:
        hp = _f64("h_prev", h_prev, abar_t)
        second = torch.isfinite(hp) & torch.isfinite(h)
        r = hp / h
        w_cur = torch.where(second, 1.0 + 0.5 / r, w_cur)
        w_prev = torch.where(second, -0.5 / r, w_prev)
    return _table(_base(abar_t) + [ratio, c1, w_cur, w_prev], abar_s), h


# ----------------------------------------------------------------------------- reference
def sampling_step_ref(x, model_out, coefs, guidance=None, thresh=None, noise=None, prev_x0=None,
                      kind=2, pred=0, learned_var=False, want_x0=False, known=None, mask=None, known_noise=None,
                      upcast=True):
    """Plain-PyTorch mirror of sampling.h (same argument meaning as the custom op; ``kind`` and
    ``pred`` as ints). Computes in float64 with ``upcast``, else in float32 (float64 inputs:
    float64). Returns (x_next like x, x0 like x or an empty (0,) tensor)."""
    dt = torch.float64 if (upcast or x.dtype == torch.float64) else torch.float32
    B = x.shape[0]
    xf = x.reshape(B, -1).to(dt)  # (B, N)
    N = xf.shape[1]
    m_all = model_out.reshape(model_out.shape[0], -1).to(dt)  # (B or 2B, n_out)
    k = coefs.to(dt).reshape(B, NUM_COEFS, 1).unbind(1)  # twelve (B, 1) columns
    a, s, ia, is_, c0, c1, c2, c3, c4, c5, ka, ks = k
    mc = m_all[:B]
    m = mc[:, :N]
    if guidance is not None:
        mu = m_all[B:, :N]
        m = mu + guidance.to(dt).reshape(B, 1) * (m - mu)
    if pred == 0:
        eps, x0 = m, (xf - s * m) * ia
    elif pred == 1:
        x0, eps = m, (xf - a * m) * is_
    else:
        x0, eps = a * xf - s * m, s * xf + a * m
    if thresh is not None:
        thr = thresh.to(dt).reshape(B, 1)
        x0 = torch.minimum(torch.maximum(x0, -thr), thr) / thr
        eps = (xf - a * x0) * is_
    z = 0.0 if noise is None else noise.reshape(B, -1).to(dt)
    if kind == 1:
        if learned_var:
            f = (mc[:, N : 2 * N] + 1.0) * 0.5
            sigma = c4 * torch.exp(0.5 * (f * c3 + (1.0 - f) * c2))
        else:
            sigma = c5
        out = c0 * x0 + c1 * xf + sigma * z
    elif kind == 2:
        out = c0 * x0 + c1 * eps + c2 * z
    elif kind == 3:
        prev = 0.0 if prev_x0 is None else prev_x0.reshape(B, -1).to(dt)
        out = c0 * xf + c1 * (c2 * x0 + c3 * prev)
    else:
        out = x0
    if known is not None and kind != 0:
        kn = known.reshape(B, -1).to(dt)
        kz = 0.0 if known_noise is None else known_noise.reshape(B, -1).to(dt)
        w = mask.to(dt).expand(B, *mask.shape[1:])
        w = w.expand(B, *x.shape[1:]) if x.dim() > 1 else w
        w = w.reshape(B, -1)
        out = w * (ka * kn + ks * kz) + (1.0 - w) * out
    x0_out = x0.to(x.dtype).reshape(x.shape) if (want_x0 and kind != 0) else x.new_empty((0,))
    return out.to(x.dtype).reshape(x.shape), x0_out


# ----------------------------------------------------------------------------- backends
@sampling_family.register("torch", dtypes=_FLOATS + (torch.float64,), devices=("cpu", "cuda"))
def _step_torch(x, model_out, coefs, guidance, thresh, noise, prev_x0, kind, pred, learned, want_x0,
                known=None, mask=None, known_noise=None):
    return sampling_step_ref(x, model_out, coefs, guidance, thresh, noise, prev_x0, kind, pred, learned,
                             want_x0, known, mask, known_noise, upcast=False)


def _step_ext(x, model_out, coefs, guidance, thresh, noise, prev_x0, kind, pred, learned, want_x0,
              known=None, mask=None, known_noise=None):
    return torch.ops.dalle2_fast.sampling_step(x, model_out, coefs, guidance, thresh, noise, prev_x0,
                                               kind, pred, learned, want_x0, known, mask, known_noise)


sampling_family.register("cpu", dtypes=_FLOATS + (torch.float64,), devices=("cpu",))(_step_ext)
sampling_family.register("cuda", dtypes=_FLOATS + (torch.float64,), devices=("cuda",))(_step_ext)


def _triton_limits(x, *args):
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return ["the Triton interpreter has no bfloat16 arithmetic"]
    if x.device.type == "cuda":  # only audited launches that fit this GPU (triton/launch.py)
        from dalle2_fast.triton import launch as L

        target = L.target_for(x)
        if L.sampling_config(x.dtype, target) is None:
            return [L.refusal("sampling_step", x.dtype, target, L.SAMPLING_CANDIDATES, "audited launch")]
    return []


@sampling_family.register("triton", dtypes=_FLOATS, devices=("cpu", "cuda"), limits=_triton_limits)
def _step_triton(x, model_out, coefs, guidance, thresh, noise, prev_x0, kind, pred, learned, want_x0,
                 known=None, mask=None, known_noise=None):
    from dalle2_fast.triton.sampling import sampling_step_triton

    return sampling_step_triton(x, model_out, coefs, guidance, thresh, noise, prev_x0, kind, pred, learned,
                                want_x0, known, mask, known_noise)


if _ext.loaded():

    @torch.library.register_fake("dalle2_fast::sampling_step")
    def _sampling_step_fake(x, model_out, coefs, guidance, thresh, noise, prev_x0, kind, pred, learned,
                            want_x0, known=None, mask=None, known_noise=None):
        x0 = torch.empty_like(x) if (want_x0 and kind != 0) else x.new_empty((0,))
        return torch.empty_like(x), x0


# ----------------------------------------------------------------------------- public ops
def _validate_known(x, known, mask, known_noise):
    if known is None and mask is None:
        if known_noise is not None:
            raise ValueError("sampling step: known_noise needs known and mask")
        return
    if known is None or mask is None:
        raise ValueError("sampling step: known and mask go together (inpainting), got only "
                         f"{'known' if known is not None else 'mask'}")
    for name, t in (("known", known), ("known_noise", known_noise)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.shape != x.shape or t.device != x.device):
            raise ValueError(f"sampling step: {name} must have x's shape {tuple(x.shape)} and device, got "
                             f"{tuple(getattr(t, 'shape', ()))} on {getattr(t, 'device', type(t).__name__)}")
    ok = isinstance(mask, torch.Tensor) and mask.device == x.device and mask.dim() == x.dim()
    if ok:
        ok = mask.shape[0] in (1, x.shape[0]) and tuple(mask.shape[2:]) == tuple(x.shape[2:])
        ok = ok and (x.dim() < 2 or mask.shape[1] in (1, x.shape[1]))
    if not ok:
        raise ValueError(f"sampling step: mask must be (B or 1, C or 1, *S) for x {tuple(x.shape)} on {x.device}, "
                         f"got {tuple(getattr(mask, 'shape', ()))} on {getattr(mask, 'device', type(mask).__name__)}")


def _validate(x, model_out, coefs, guidance, noise, prev_x0, pred, clip, learned_var):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 1 or x.shape[0] == 0:
        got = type(x).__name__ if not isinstance(x, torch.Tensor) else f"{x.dtype} {tuple(x.shape)}"
        raise ValueError(f"sampling step: x must be a floating (B, ...) tensor with B >= 1, got {got}")
    B, N = x.shape[0], x[0].numel()
    rows = 2 * B if guidance is not None else B
    if not isinstance(model_out, torch.Tensor) or model_out.dtype != x.dtype or model_out.device != x.device:
        raise ValueError("sampling step: model_out must be a tensor with x's dtype and device, got "
                         f"{getattr(model_out, 'dtype', type(model_out))} on {getattr(model_out, 'device', '?')}")
    per = model_out.numel() // max(1, model_out.shape[0]) if model_out.dim() else 0
    want = (2 * N,) if learned_var else (N, 2 * N)
    if model_out.dim() < 1 or model_out.shape[0] != rows or per not in want:
        raise ValueError(
            f"sampling step: model_out must be ({rows}, C{' x 2' if learned_var else ''}, ...) for x "
            f"{tuple(x.shape)}{' with guidance (cond rows then uncond rows)' if guidance is not None else ''}, "
            f"got {tuple(model_out.shape)}")
    if not isinstance(coefs, torch.Tensor) or tuple(coefs.shape) != (B, NUM_COEFS):
        raise ValueError(f"sampling step: coefs must be a ({B}, {NUM_COEFS}) tensor (ddim_coefs etc.), "
                         f"got {getattr(coefs, 'shape', type(coefs))}")
    if coefs.device != x.device:
        raise ValueError(f"sampling step: coefs is on {coefs.device} but x is on {x.device}")
    if guidance is not None and (not isinstance(guidance, torch.Tensor) or tuple(guidance.shape) != (B,)):
        raise ValueError(f"sampling step: guidance must be a ({B},) tensor, got {getattr(guidance, 'shape', guidance)}")
    for name, t in (("noise", noise), ("prev_x0", prev_x0)):
        if t is not None and (t.shape != x.shape or t.device != x.device):
            raise ValueError(f"sampling step: {name} must have x's shape {tuple(x.shape)} and device, "
                             f"got {tuple(t.shape)} on {t.device}")
    if pred not in PREDS:
        raise ValueError(f"sampling step: pred must be one of {tuple(PREDS)}, got {pred!r}")
    if clip not in CLIPS:
        raise ValueError(f"sampling step: clip must be one of {CLIPS}, got {clip!r}")


def _acc(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return None if t is None else t.to(dt)


def dynamic_threshold_values(x0: torch.Tensor, p: float = 0.995) -> torch.Tensor:
    """Imagen's per-sample threshold max(1, percentile_p(|x0|)) (linear interpolation between
    order statistics, as ``numpy.percentile``). x0: (B, ...) -> (B,) in x0's dtype."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"dynamic_p must be in (0, 1], got {p}")
    v = x0.reshape(x0.shape[0], -1).abs()
    n = v.shape[1]
    pos = p * (n - 1)
    lo, frac = int(math.floor(pos)), pos - math.floor(pos)
    q = v.kthvalue(lo + 1, dim=1).values
    if frac > 0:
        q = q + frac * (v.kthvalue(min(lo + 2, n), dim=1).values - q)
    return q.clamp_min(1.0)


def _run(kind, x, model_out, coefs, *, pred, guidance, clip, dynamic_p, noise, prev_x0, learned_var,
         want_x0, backend, known=None, mask=None, known_noise=None):
    _validate(x, model_out, coefs, guidance, noise, prev_x0, pred, clip, learned_var)
    _validate_known(x, known, mask, known_noise)
    if mask is not None and mask.dtype != x.dtype:
        mask = mask.to(x.dtype)
    impl = sampling_family.select(x, model_out, backend=backend)
    g, c = _acc(guidance, x), _acc(coefs, x)
    thresh = None
    if clip == "static":
        thresh = torch.ones(x.shape[0], dtype=c.dtype, device=x.device)
    elif clip == "dynamic":
        raw, _ = impl.fn(x, model_out, c, g, None, None, None, 0, PREDS[pred], learned_var, False)
        thresh = dynamic_threshold_values(raw, dynamic_p).to(c.dtype)
    if known is None:
        return impl.fn(x, model_out, c, g, thresh, noise, prev_x0, KINDS[kind], PREDS[pred], learned_var, want_x0)
    return impl.fn(x, model_out, c, g, thresh, noise, prev_x0, KINDS[kind], PREDS[pred], learned_var, want_x0,
                   known, mask, known_noise)


def ddpm_step(x, model_out, coefs, noise=None, *, pred="eps", guidance=None, clip=None, dynamic_p=0.995,
              learned_var=False, want_x0=False, known=None, mask=None, known_noise=None, backend=None):
    """One ancestral (DDPM) step.

    Args:
        x: (B, C, *S) x_t. model_out: (B, C or 2C, *S), or (2B, ...) — cond rows then uncond
            rows — when ``guidance`` (B,) is given (classifier-free guidance scale per sample).
            With ``learned_var`` the last C channels are the variance interpolation v in [-1, 1].
        coefs: (B, 12) from ``ddpm_coefs``. noise: (B, C, *S) or None (no noise).
        pred: 'eps' | 'x0' | 'v'. clip: None | 'static' (x0 in [-1, 1]) | 'dynamic' (Imagen,
            percentile ``dynamic_p``). backend: None | 'torch' | 'cpu' | 'cuda' | 'triton'.
        known, mask, known_noise: inpainting (module docstring): known (B, C, *S) x0 of the
            known region, mask (B or 1, C or 1, *S) 1 = keep known, known_noise (B, C, *S) or
            None. With a binary mask the same tensor may serve as ``noise`` and ``known_noise``
            (each element reads one of them).
    Returns:
        (x_s (B, C, *S), x0 (B, C, *S) clipped, or an empty tensor unless ``want_x0``).
    """
    return _run("ddpm", x, model_out, coefs, pred=pred, guidance=guidance, clip=clip, dynamic_p=dynamic_p,
                noise=noise, prev_x0=None, learned_var=learned_var, want_x0=want_x0, backend=backend,
                known=known, mask=mask, known_noise=known_noise)


def ddim_step(x, model_out, coefs, noise=None, *, pred="eps", guidance=None, clip=None, dynamic_p=0.995,
              want_x0=False, known=None, mask=None, known_noise=None, backend=None):
    """One DDIM step (``ddim_coefs``; eta > 0 needs ``noise``). Shapes and arguments as
    ``ddpm_step``; a learned-variance output (2C channels) is accepted and its variance ignored."""
    return _run("ddim", x, model_out, coefs, pred=pred, guidance=guidance, clip=clip, dynamic_p=dynamic_p,
                noise=noise, prev_x0=None, learned_var=False, want_x0=want_x0, backend=backend,
                known=known, mask=mask, known_noise=known_noise)


def dpmpp_2m_step(x, model_out, coefs, prev_x0=None, *, pred="eps", guidance=None, clip=None,
                  dynamic_p=0.995, known=None, mask=None, known_noise=None, backend=None):
    """One DPM-Solver++(2M) step (``dpmpp_2m_coefs``). ``prev_x0``: (B, C, *S) the previous step's
    x0 (None on the first step). Returns (x_s, x0) — pass x0 as the next step's ``prev_x0``."""
    return _run("dpmpp_2m", x, model_out, coefs, pred=pred, guidance=guidance, clip=clip,
                dynamic_p=dynamic_p, noise=None, prev_x0=prev_x0, learned_var=False, want_x0=True,
                backend=backend, known=known, mask=mask, known_noise=known_noise)


def predict_x0(x, model_out, coefs, *, pred="eps", guidance=None, clip=None, dynamic_p=0.995, backend=None):
    """x0 predicted from a model output (guidance combine + parameterisation + clipping), (B, C, *S)."""
    x_next, _ = _run("ddim", x, model_out, _x0_only(coefs), pred=pred, guidance=guidance, clip=clip,
                     dynamic_p=dynamic_p, noise=None, prev_x0=None, learned_var=False, want_x0=False,
                     backend=backend)
    return x_next


def _x0_only(coefs: torch.Tensor) -> torch.Tensor:
    """A DDIM table that returns x0 (c0 = 1, other update columns 0) with the same a, s columns."""
    if not isinstance(coefs, torch.Tensor) or coefs.dim() != 2 or coefs.shape[1] != NUM_COEFS:
        return coefs  # _validate explains
    return torch.cat([coefs[:, :4], torch.ones_like(coefs[:, :1]), torch.zeros_like(coefs[:, 5:])], dim=1)


__all__ = ["ddpm_step", "ddim_step", "dpmpp_2m_step", "predict_x0", "ddpm_coefs", "ddim_coefs",
           "dpmpp_2m_coefs", "sampling_step_ref", "dynamic_threshold_values", "sampling_family"]
