"""Sampling-step benchmark cases (issue: diffusion core).

1. One DDIM + classifier-free-guidance step (static x0 clipping), x (B, 3, 64, 64): our fused
   backends against the same math in eager torch (``eager``, the baseline: what a sampler loop
   written with tensor ops runs). CPU float32 B = 64; CUDA B = 16 and 64. Bytes: x, the (2B)
   model output and the result, once each.
2. A 25-step DDIM + CFG sampling loop with a small conv denoiser: the whole ``ddim_sample``
   (fused cpu/cuda/triton step; on CUDA also ``cuda_graph=True``) and the same loop with eager
   steps, against the 25 denoiser forwards alone (``denoiser x25``, the baseline and the bound):
   a loop's overhead fraction is t_loop / t_denoiser - 1 = 1 / ratio - 1. Where that difference
   drowns in timing noise, the ``... sampler only`` variants time the same loops around a free
   denoiser (it returns a precomputed output): overhead fraction = t_sampler_only / t_denoiser
   = 1 / ratio.
3. Inpainting: the same 25-step DDIM + CFG loop with the known / mask blend fused into every
   step (``known=``, ``mask=``: a centre hole) against the plain loop (the baseline): the
   blend's cost per step is ratio^-1 - 1; the ``sampler only`` pair isolates the sampler's own
   share. RePaint's resampling per jump setting (jump length j, count r): its time and model
   calls (``num_model_calls``) against the plain loop.
"""
from __future__ import annotations

import torch
from torch import nn

from dalle2_fast.bench.core import Case, Variant
from dalle2_fast.diffusion import (ClassifierFreeGuidance, GaussianDiffusion, cosine_betas, ddim_sample,
                                   num_model_calls, repaint_sample, respace)
from dalle2_fast.ops import ddim_coefs, ddim_step
from dalle2_fast.ops.sampling import sampling_family

FAMILY = "sampling"


def eager_ddim_cfg_step(x, out2, a_t, s_t, a_s, c_eps, scale):
    """DDIM + CFG + static clipping as an eager loop writes it (guided-diffusion style): per-sample
    coefficients (B,) broadcast over (B, C, H, W); one kernel per operation."""
    B = x.shape[0]
    v = lambda c: c.view(B, 1, 1, 1)  # noqa: E731
    cond, uncond = out2[:B], out2[B:]
    eps = uncond + v(scale) * (cond - uncond)
    x0 = ((x - v(s_t) * eps) / v(a_t)).clamp(-1, 1)
    eps = (x - v(a_t) * x0) / v(s_t)
    return v(a_s) * x0 + v(c_eps) * eps


class SmallDenoiser(nn.Module):
    """A small conv denoiser (a stand-in U-Net level): conv-SiLU-conv-SiLU-conv with a timestep
    and class embedding added to the hidden features. eps output, (B, 3, H, W)."""

    def __init__(self, ch: int = 32, classes: int = 10):
        super().__init__()
        self.inp = nn.Conv2d(3, ch, 3, padding=1)
        self.mid = nn.Conv2d(ch, ch, 3, padding=1)
        self.out = nn.Conv2d(ch, 3, 3, padding=1)
        self.t_emb = nn.Embedding(1000, ch)
        self.y_emb = nn.Embedding(classes + 1, ch)  # the last class is the null label

    def forward(self, x, t, y):
        h = nn.functional.silu(self.inp(x) + (self.t_emb(t) + self.y_emb(y))[:, :, None, None])
        return self.out(nn.functional.silu(self.mid(h)))


def _step_case(device: str, B: int) -> Case:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, 3, 64, 64, generator=g).to(device)
    out2 = torch.randn(2 * B, 3, 64, 64, generator=g).to(device)
    ab_t = torch.rand(B, generator=g, dtype=torch.float64) * 0.8 + 0.1
    ab_s = (ab_t + 0.05).clamp(max=1.0)
    coefs = ddim_coefs(ab_t, ab_s, 0.0).float().to(device)
    scale = torch.full((B,), 3.0, device=device)
    a_t, s_t, a_s, c_eps = (coefs[:, i].contiguous() for i in (0, 1, 4, 5))
    variants = []
    for b in sampling_family.available(device, torch.float32):
        if b == "triton" and device == "cpu":
            continue  # the interpreter is a test tool, not a CPU backend
        variants.append(Variant(b, lambda b=b: ddim_step(x, out2, coefs, guidance=scale, clip="static", backend=b)))
    variants.append(Variant("eager", lambda: eager_ddim_cfg_step(x, out2, a_t, s_t, a_s, c_eps, scale), "baseline"))
    n = x.numel()
    s = _step_spec(B)
    return Case(FAMILY, s["name"], s["params"], variants, "eager", bytes=4 * n * 4, device=device)


def _step_spec(B: int) -> dict:
    return dict(name=f"ddim-cfg-step-B{B}-3x64x64-float32", params=dict(B=B, C=3, H=64, W=64, dtype="float32"))


def _loop_spec(B: int, res: int, ch: int) -> dict:
    return dict(name=f"ddim25-cfg-loop-B{B}-3x{res}x{res}-ch{ch}", params=dict(B=B, res=res, ch=ch, steps=25))


def _inpaint_spec(B: int, res: int, ch: int) -> dict:
    return dict(name=f"ddim25-cfg-inpaint-loop-B{B}-3x{res}x{res}-ch{ch}", params=dict(B=B, res=res, ch=ch, steps=25))


def _plan(device: str, quick: bool) -> list[tuple]:
    """(kind, args) of every case: ('step', B), ('loop', B, res, ch) or ('inpaint', B, res, ch)."""
    if device == "cuda":
        return [("step", 16)] + ([] if quick else [("step", 64)]) + [("loop", 16, 64, 64), ("inpaint", 16, 64, 64)]
    if quick:
        return [("step", 16), ("loop", 4, 32, 16), ("inpaint", 4, 32, 16)]
    return [("step", 64), ("loop", 8, 32, 32), ("inpaint", 8, 32, 32)]


_SPECS = {"step": _step_spec, "loop": _loop_spec, "inpaint": _inpaint_spec}


def specs(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Name and params of every case, without building tensors (for the roofline)."""
    return [_SPECS[k](*a) for k, *a in _plan(device, quick)]


class _Free(nn.Module):
    """A denoiser that costs nothing: returns a precomputed (2B, 3, H, W) output."""

    def __init__(self, out):
        super().__init__()
        self.cached = out

    def forward(self, x, t, y):
        return self.cached


def _eager_loop(model, proc, x_T, y, null, scale):
    """The same 25-step DDIM + CFG loop with eager steps (the guided-diffusion way)."""
    B = x_T.shape[0]
    ab = proc.alphas_cumprod
    x = x_T
    sc = torch.full((B,), scale, device=x.device)
    for i in reversed(range(proc.num_timesteps)):
        ab_t, ab_s = float(ab[i]), float(ab[i - 1]) if i > 0 else 1.0
        t = torch.full((2 * B,), int(proc.timestep_map[i]), device=x.device)
        out2 = model(torch.cat([x, x]), t, torch.cat([y, null]))
        c = lambda v: torch.full((B,), v, device=x.device)  # noqa: E731
        x = eager_ddim_cfg_step(x, out2, c(ab_t**0.5), c((1 - ab_t) ** 0.5), c(ab_s**0.5), c((1 - ab_s) ** 0.5), sc)
        if not bool(torch.isfinite(x).all()):  # what our samplers check too
            raise FloatingPointError(i)
    return x


def _loop_setup(device: str, B: int, ch: int):
    """(denoiser, 25-step process, labels, null labels, its CFG wrapper at scale 3) of the loop cases."""
    torch.manual_seed(0)
    model = SmallDenoiser(ch).to(device).eval()
    proc = respace(GaussianDiffusion(cosine_betas(1000)), "25")
    y = torch.arange(B, device=device) % 10
    null = torch.full((B,), 10, device=device)
    return model, proc, y, null, ClassifierFreeGuidance(model, 3.0, {"y": null[:1]})


def _loop_case(device: str, B: int, res: int, ch: int) -> Case:
    model, proc, y, null, cfg = _loop_setup(device, B, ch)
    x_T = torch.randn(B, 3, res, res, generator=torch.Generator().manual_seed(1)).to(device)
    x2 = torch.cat([x_T, x_T])
    t2 = torch.full((2 * B,), 500, device=device)
    y2 = torch.cat([y, null])

    @torch.no_grad()
    def denoiser_only():
        for _ in range(25):
            model(x2, t2, y2)

    variants = []
    for b in sampling_family.available(device, torch.float32):
        if b == "triton" and device == "cpu":
            continue
        variants.append(Variant(f"ddim_sample[{b}]", lambda b=b: ddim_sample(cfg, proc, x_T, model_kwargs={"y": y},
                                                                            clip="static", backend=b)))
        if device == "cuda" and b != "torch":
            variants.append(Variant(f"ddim_sample[{b}, cuda_graph]", lambda b=b: ddim_sample(
                cfg, proc, x_T, model_kwargs={"y": y}, clip="static", backend=b, cuda_graph=True)))
    variants.append(Variant("eager loop", torch.no_grad()(lambda: _eager_loop(model, proc, x_T, y, null, 3.0)), "peer"))
    with torch.no_grad():
        free = _Free(model(x2, t2, y2))
    free_cfg = ClassifierFreeGuidance(free, 3.0, {"y": null[:1]})
    best = sampling_family.select(x_T).backend  # what backend=None picks
    variants.append(Variant(f"ddim_sample[{best}] sampler only", lambda: ddim_sample(
        free_cfg, proc, x_T, model_kwargs={"y": y}, clip="static", backend=best)))
    if device == "cuda":
        variants.append(Variant(f"ddim_sample[{best}, cuda_graph] sampler only", lambda: ddim_sample(
            free_cfg, proc, x_T, model_kwargs={"y": y}, clip="static", backend=best, cuda_graph=True)))
    variants.append(Variant("eager loop sampler only",
                            torch.no_grad()(lambda: _eager_loop(free, proc, x_T, y, null, 3.0)), "peer"))
    variants.append(Variant("denoiser x25", denoiser_only, "baseline"))
    s = _loop_spec(B, res, ch)
    return Case(FAMILY, s["name"], s["params"], variants, "denoiser x25", device=device)


JUMPS = ((5, 2), (5, 3), (10, 10))  # RePaint settings timed (jump length, count); (10, 10) is the paper's


def _inpaint_case(device: str, B: int, res: int, ch: int) -> Case:
    model, proc, y, null, cfg = _loop_setup(device, B, ch)
    g = torch.Generator().manual_seed(1)
    x_T = torch.randn(B, 3, res, res, generator=g).to(device)
    known = (torch.rand(B, 3, res, res, generator=g) * 2 - 1).to(device)
    mask = torch.ones(1, 1, res, res, device=device)
    mask[..., res // 4 : 3 * res // 4, res // 4 : 3 * res // 4] = 0  # 1 = keep: a centre hole
    best = sampling_family.select(x_T).backend
    kw = dict(model_kwargs={"y": y}, clip="static", backend=best)
    hole = dict(known=known, mask=mask)
    with torch.no_grad():
        free = _Free(model(torch.cat([x_T, x_T]), torch.full((2 * B,), 500, device=device), torch.cat([y, null])))
    free_cfg = ClassifierFreeGuidance(free, 3.0, {"y": null[:1]})
    plain = f"ddim_sample[{best}]"
    variants = [
        Variant(plain, lambda: ddim_sample(cfg, proc, x_T, **kw), "baseline"),
        Variant(f"{plain} + fused blend", lambda: ddim_sample(cfg, proc, x_T, **kw, **hole)),
        Variant(f"{plain} sampler only", lambda: ddim_sample(free_cfg, proc, x_T, **kw), "peer"),
        Variant(f"{plain} + fused blend sampler only", lambda: ddim_sample(free_cfg, proc, x_T, **kw, **hole)),
    ]
    for j, r in JUMPS:
        variants.append(Variant(f"repaint[j={j}, r={r}]", lambda j=j, r=r: repaint_sample(
            cfg, proc, x_T, jump_length=j, jump_n_sample=r, base="ddim", **kw, **hole)))

    def notes():
        calls = {f"repaint[j={j}, r={r}]": {"model calls": num_model_calls(25, j, r)} for j, r in JUMPS}
        return {plain: {"model calls": 25}, f"{plain} + fused blend": {"model calls": 25}, **calls}

    s = _inpaint_spec(B, res, ch)
    return Case(FAMILY, s["name"], s["params"], variants, plain, device=device, notes=notes)


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    make = {"step": _step_case, "loop": _loop_case, "inpaint": _inpaint_case}
    return [make[k](device, *a) for k, *a in _plan(device, quick)]


__all__ = ["cases", "eager_ddim_cfg_step", "SmallDenoiser"]
