"""Does a text-to-image pipeline draw what its prompt says? Caption match judged by the shapes
detector on prompts that are never training sentences, plus CLIP zero-shot accuracy and a
picture: the report ``dalle2-fast eval`` writes for any pipeline directory.

The pipeline is duck-typed: ``pipe(prompts, num_images_per_prompt=, seed=, **kw) -> (N, 3, H, W)
in [0, 1]``, ``pipe.upsamplers`` (a list, emptied to judge the base resolution), ``pipe.clip``,
``pipe.defaults`` and ``pipe.decoder.image_size``."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from dalle2_fast.data.shapes import COLOUR_NAMES, SHAPES
from dalle2_fast.eval.detector import detect, recognised
from dalle2_fast.eval.zero_shot import shapes_zero_shot


def eval_prompts(two_objects: bool = False) -> list[tuple[str, list[tuple[str, str]]]]:
    """Prompts in words the training captions use but never as whole sentences (no size or
    position words): ('a red circle', [('circle', 'red')]) or 'a red circle above a blue square'."""
    if not two_objects:
        return [(f"a {c} {s}", [(s, c)]) for s in SHAPES for c in COLOUR_NAMES]
    out = []
    for i, (s1, c1) in enumerate((s, c) for s in SHAPES for c in COLOUR_NAMES):
        s2, c2 = SHAPES[(i * 2 + 1) % len(SHAPES)], COLOUR_NAMES[(i * 5 + 2) % len(COLOUR_NAMES)]
        if c2 == c1:
            c2 = COLOUR_NAMES[(COLOUR_NAMES.index(c1) + 1) % len(COLOUR_NAMES)]
        out.append((f"a {c1} {s1} above a {c2} {s2}", [(s1, c1), (s2, c2)]))
    return out


@torch.no_grad()
def caption_match_rate(pipe, prompts, n_per_prompt: int = 2, seed: int = 0, base_only: bool = True,
                       **sample_kw) -> dict:
    """Fraction of samples the shape/colour detector finds to match their caption.

    base_only: judge the decoder's base-resolution images (upsamplers skipped), which is what the
    caption content depends on. Returns {'rate', 'colour_rate', 'shape_rate', 'n'}."""
    ups = pipe.upsamplers
    if base_only:
        pipe.upsamplers = []
    try:
        imgs = pipe([p for p, _ in prompts], num_images_per_prompt=n_per_prompt, seed=seed, **sample_kw)
    finally:
        pipe.upsamplers = ups
    return judge(imgs, prompts, n_per_prompt)


def judge(imgs: torch.Tensor, prompts, n_per_prompt: int) -> dict:
    """Caption match of images (N, 3, H, W) in [0, 1], image k drawn for ``prompts[k //
    n_per_prompt]``: {'rate', 'colour_rate', 'shape_rate', 'n'}."""
    hit = col = shp = 0
    for k, img in enumerate(imgs):
        want = prompts[k // n_per_prompt][1]
        x = img * 2 - 1
        hit += recognised(x, want)
        dets = [d for d in detect(x) if d.score >= 0.5]
        col += all(any(d.colour == c for d in dets) for _, c in want)
        shp += all(any(d.shape == s for d in dets) for s, _ in want)
    m = len(imgs)
    return {"rate": hit / m, "colour_rate": col / m, "shape_rate": shp / m, "n": m}


def evaluate_pipeline(pipe, out_dir: str | Path, n_single: int = 4, n_two: int = 2, seed: int = 0,
                      progress: bool = True, seen: set[str] | None = None, **sample_kw) -> dict:
    """The quality report: caption match of single-object prompts (30 prompts x ``n_single``) and
    two-object prompts (30 x ``n_two``), judged by the shapes detector at base resolution; plus
    CLIP zero-shot accuracy on held-out images and a picture. Writes ``caption_match.json`` and
    ``prompts.png``. The prompts are never sentences of the legacy captions; a run trained on the
    caption grammar has many of them among its training sentences: given those (``seen``), each
    row records how many of its prompts are training sentences (``prompts_in_training``), and
    the wording report (:mod:`dalle2_fast.eval.wordings`) is the one on unseen prompts."""
    from dalle2_fast.data.images import make_grid, save_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = {"settings": {"seed": seed, **dict(pipe.defaults), **sample_kw}}
    for name, two, n in (("single", False, n_single), ("two", True, n_two)):
        t0 = time.time()
        ps = eval_prompts(two)
        res[name] = caption_match_rate(pipe, ps, n_per_prompt=n, seed=seed, **sample_kw)
        res[name]["seconds"] = round(time.time() - t0, 1)
        if seen is not None:
            res[name]["prompts_in_training"] = f"{sum(p in seen for p, _ in ps)}/{len(ps)}"
        if progress:
            print(name, res[name], flush=True)
    res["clip_zero_shot"] = shapes_zero_shot(pipe.clip, 1000 + seed, pipe.decoder.image_size)
    (out / "caption_match.json").write_text(json.dumps(res, indent=2))
    prompts = ["a red circle above a blue square", "a green triangle", "a yellow star", "a purple diamond",
               "a blue circle", "a orange square"]
    imgs = pipe(prompts, num_images_per_prompt=6, seed=seed, **sample_kw)
    save_png(make_grid(imgs * 2 - 1, nrow=6), out / "prompts.png",
             {"prompts": prompts, "seed": seed, "images_per_prompt": 6, **sample_kw})
    return res


__all__ = ["eval_prompts", "caption_match_rate", "evaluate_pipeline"]
