"""Fewer solver steps at equal quality: the procedure that chooses the decoder's and the
upsamplers' sampler and step count (issue 19), to re-run on any pipeline (new weights included).

1. Seeds and prompts are fixed before looking: the 30 single-object evaluation prompts of
   :func:`~dalle2_fast.eval.captions.eval_prompts`, ``n_per_prompt`` images each, seed 1.
2. The reference is the pipeline's current setting (its defaults and each stage's sampling
   config). Every candidate (sampler, steps[, eta]) of the decoder draws the same images (same
   prompts, seeds, prior samples: the prior's output does not depend on the decoder) at base
   resolution, judged by caption match (the shapes detector) and by PSNR against the
   reference's images; seconds per call measured in the same run.
3. The upsamplers: the reference's base images, each upsampler's candidates against its current
   setting, by PSNR (the caption is settled at base resolution) and seconds.
4. A candidate qualifies when its caption match is within ``tolerance`` of the reference's
   (default: one image in 60) — fewer steps are adopted only then.

``python -m dalle2_fast.bench.solver_steps PIPELINE_DIR --out result.json`` runs the default
candidates. The pipeline is duck-typed like :mod:`dalle2_fast.eval.captions`'s: stage
``sample`` methods taking ``sampler`` / ``eta`` / ``steps`` keyword arguments.
"""
from __future__ import annotations

import contextlib
import functools
import time

import torch

from dalle2_fast.eval.captions import eval_prompts, judge

DECODER_CANDIDATES = [dict(sampler="dpmpp", steps=s) for s in (25, 15, 10)] + [
    dict(sampler="ddim", eta=1.0, steps=s) for s in (15, 10)]
UPSAMPLER_CANDIDATES = [dict(sampler="dpmpp", steps=s) for s in (8, 5, 3)] + [dict(sampler="ddim", steps=s)
                                                                                for s in (5, 3)]


@contextlib.contextmanager
def stage_options(pipe, prior: dict | None = None, decoder: dict | None = None, upsamplers: dict | None = None):
    """Calls of the pipeline's prior / decoder / every upsampler ``sample`` with extra keyword
    arguments (a sampler, a cache turned off), restored after."""
    mods = [(pipe.prior, prior), (pipe.decoder, decoder)] + [(u, upsamplers) for u in pipe.upsamplers]
    saved = []
    for mod, kw in mods:
        if kw:
            saved.append((mod, vars(mod).get("sample")))  # an instance attribute (a wrapper) or None
            mod.sample = functools.partial(mod.sample, **kw)
    try:
        yield
    finally:
        for mod, own in reversed(saved):
            if own is None:
                del mod.sample  # the class's method again
            else:
                mod.sample = own


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of the PSNR (dB) of images in [0, 1]; inf for identical images."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())


def _split(c: dict) -> tuple[int, dict]:
    kw = dict(c)
    return kw.pop("steps"), kw


@torch.no_grad()
def decoder_sweep(pipe, candidates=DECODER_CANDIDATES, n_per_prompt: int = 2, seed: int = 1,
                  progress: bool = True) -> dict:
    """{'reference': {...}, 'candidates': [{setting, rate, colour_rate, shape_rate, psnr_db, seconds}]}."""
    prompts = eval_prompts()
    words = [p for p, _ in prompts]
    ups, pipe.upsamplers = pipe.upsamplers, []
    try:
        def run(steps, kw):
            t0 = time.perf_counter()
            with stage_options(pipe, decoder=kw):
                imgs = pipe(words, num_images_per_prompt=n_per_prompt, seed=seed, decoder_steps=steps)
            return imgs, time.perf_counter() - t0

        ref_steps = pipe.defaults.get("decoder_steps")
        ref, secs = run(ref_steps, {})
        out = {"reference": {"setting": {"steps": ref_steps, "sampler": "config"}, **judge(ref, prompts, n_per_prompt),
                             "seconds": round(secs, 2)}, "candidates": []}
        if progress:
            print("decoder reference", out["reference"], flush=True)
        for c in candidates:
            steps, kw = _split(c)
            imgs, secs = run(steps, kw)
            row = {"setting": c, **judge(imgs, prompts, n_per_prompt), "psnr_db": round(psnr(imgs, ref), 2),
                   "seconds": round(secs, 2)}
            out["candidates"].append(row)
            if progress:
                print("decoder", row, flush=True)
    finally:
        pipe.upsamplers = ups
    return out


@torch.no_grad()
def upsampler_sweep(pipe, candidates=UPSAMPLER_CANDIDATES, n_images: int = 8, seed: int = 1,
                    progress: bool = True) -> dict:
    """Each upsampler's candidates against its current setting on the same base images: PSNR and
    seconds per call. {'upsampler1': {'reference': ..., 'candidates': [...]}, ...}."""
    words = [p for p, _ in eval_prompts()][:n_images]
    ups, pipe.upsamplers = pipe.upsamplers, []
    try:
        base = pipe(words, seed=seed) * 2 - 1  # (N, 3, s, s) in [-1, 1]
    finally:
        pipe.upsamplers = ups
    out, x = {}, base
    ref_steps = pipe.defaults.get("upsampler_steps")
    seeds = list(range(seed, seed + len(words)))
    for i, up in enumerate(ups):
        def run(steps, kw):
            t0 = time.perf_counter()
            y = up.sample(x, seeds=seeds, steps=steps, **kw)
            return (y + 1) / 2, time.perf_counter() - t0

        ref, secs = run(ref_steps, {})
        res = {"reference": {"setting": {"steps": ref_steps, "sampler": "config"}, "seconds": round(secs, 2)},
               "candidates": []}
        for c in candidates:
            steps, kw = _split(c)
            y, secs = run(steps, kw)
            res["candidates"].append({"setting": c, "psnr_db": round(psnr(y, ref), 2), "seconds": round(secs, 2)})
            if progress:
                print(f"upsampler{i + 1}", res["candidates"][-1], flush=True)
        out[f"upsampler{i + 1}"] = res
        x = ref * 2 - 1  # the next stage starts from the reference's output
    return out


def qualifying(sweep: dict, tolerance: float = 1 / 60) -> list[dict]:
    """The decoder candidates whose caption match is within ``tolerance`` of the reference's."""
    ref = sweep["reference"]["rate"]
    return [c for c in sweep["candidates"] if c["rate"] >= ref - tolerance - 1e-9]
