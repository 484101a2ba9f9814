"""End-to-end unCLIP sampling benchmark (issue 8).

Images/s of the shipped pipeline (or, when no weights are shipped, a randomly initialised one of
the recipe's sizes: the cost does not depend on the weights) with its default steps, fast
backends ("auto") against ``DALLE2_FAST_BACKEND=torch`` (the baseline) in one run; and
:func:`stage_shares`, the fraction of the time spent in the prior, the decoder and each upsampler.
"""
from __future__ import annotations

import contextlib
import time

import torch

from dalle2_fast.bench.core import Case, Variant, forced_backend

FAMILY = "unclip"
PROMPTS = ["a red circle above a blue square", "a green triangle", "a yellow star next to a purple diamond",
           "a blue circle"]



def load_pipeline(device: str = "cpu"):
    """The shipped pipeline, or a random one of the recipe's architecture (same cost)."""
    from dalle2_fast.pipeline import UnCLIPPipeline, shipped_weights_dir

    path = shipped_weights_dir()
    if path is not None:
        return UnCLIPPipeline.from_pretrained(path, device=device), "shipped"
    return random_pipeline(device), "random-init"


def random_pipeline(device: str = "cpu"):
    """The default recipe's architecture with random weights."""
    from dalle2_fast.recipes.unclip import build_pipeline

    return build_pipeline().to(device)


@contextlib.contextmanager
def stage_clock(pipe, clock: dict):
    """Adds each stage's ``sample`` seconds to ``clock`` (prior, decoder, upsampler1, ...) while
    the block runs; the stages' own ``sample`` is restored after."""
    stages = [("prior", pipe.prior), ("decoder", pipe.decoder)] + [(f"upsampler{i + 1}", u)
                                                                   for i, u in enumerate(pipe.upsamplers)]
    saved = []
    for name, mod in stages:
        saved.append((mod, vars(mod).get("sample")))
        orig = mod.sample

        def timed(*a, _orig=orig, _name=name, **k):
            t0 = time.perf_counter()
            out = _orig(*a, **k)
            clock[_name] = clock.get(_name, 0.0) + time.perf_counter() - t0
            return out

        mod.sample = timed
    try:
        yield
    finally:
        for mod, own in reversed(saved):
            if own is None:
                del mod.sample
            else:
                mod.sample = own


def stage_shares(pipe, prompts=PROMPTS, **kw) -> dict[str, float]:
    """Seconds per stage for one call of ``pipe(prompts, **kw)`` and each stage's share."""
    times: dict[str, float] = {}
    with stage_clock(pipe, times):
        t0 = time.perf_counter()
        pipe(prompts, **kw)
        total = time.perf_counter() - t0
    out = {f"{k}_s": v for k, v in times.items()}
    out.update({f"{k}_share": v / total for k, v in times.items()})
    out["total_s"] = total
    return out


def specs(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Name and params of the case, without loading the pipeline (for the roofline)."""
    from dalle2_fast.pipeline import shipped_weights_dir

    kind = "shipped" if shipped_weights_dir() is not None else "random-init"
    n = 2 if quick else 4
    steps = dict(prior_steps=8, decoder_steps=5, upsampler_steps=3) if quick else {}
    return [dict(name=f"{kind}-{n}img" + ("-quick" if quick else ""), params=dict(images=n, weights=kind, **steps))]


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    try:
        pipe, kind = load_pipeline(device)
    except ImportError as e:  # the U-Net / diffusion packages are not installed yet
        return [Case(FAMILY, "pipeline", {}, [], "torch", missing={"pipeline": str(e)}, device=device)]
    steps = dict(prior_steps=8, decoder_steps=5, upsampler_steps=3) if quick else {}
    n = 2 if quick else 4

    def run(backend):
        with forced_backend(backend), torch.no_grad():
            return pipe(PROMPTS[:n], seed=0, batch_size=n, **steps)

    variants = [Variant("auto", lambda: run(None), "ours"), Variant("torch", lambda: run("torch"), "baseline")]
    return [Case(FAMILY, f"{kind}-{n}img" + ("-quick" if quick else ""), dict(images=n, weights=kind, **steps),
                 variants, "torch", device=device)]
