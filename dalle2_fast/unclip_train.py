"""The ``dalle2-fast train unclip`` recipe: CLIP, prior, decoder and upsamplers on the shapes data.

Stages, in order, each from the one seed (``UnCLIPRecipe.seed``):

1. the tiny open_clip (``dalle2fast-shapes-tiny``, word tokenizer over the shapes vocabulary),
   contrastive (open_clip's ``ClipLoss``), on base-resolution images and their captions;
2. the diffusion prior on (caption -> CLIP image embedding) pairs from the frozen CLIP;
3. the decoder on (image, z_i, caption tokens);
4. the upsamplers, each on (high-res, its degraded low-res) pairs.

Training images are rendered once (``n_train`` items of ``ShapesDataset(seed)``, at every
resolution of the cascade). With fixed step counts the result is a function of the seed
(``max_minutes`` per stage trades that for a wall-clock bound). The output directory holds the
``UnCLIPPipeline`` (``pipeline/``, loadable with ``UnCLIPPipeline.from_pretrained``) and
``log.csv`` (stage, step, loss).
"""
from __future__ import annotations

import csv
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from dalle2_fast.clip import TINY_SHAPES_MODEL, ClipAdapter, WordTokenizer
from dalle2_fast.clip_train import ClipTrainConfig, train_clip


@dataclass
class Stage:
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    max_minutes: float | None = None  # stop early after this long (breaks seed-exactness)


@dataclass
class UnCLIPRecipe:
    seed: int = 0
    n_train: int = 20000
    base_res: int = 32
    upsample_res: tuple[int, ...] = (64,)       # e.g. (64, 128) for the paper's two upsamplers
    max_objects: int = 2
    clip: Stage = field(default_factory=lambda: Stage(1500, 128, 1e-3))
    prior: Stage = field(default_factory=lambda: Stage(3000, 128, 3e-4))
    decoder: Stage = field(default_factory=lambda: Stage(4000, 32, 3e-4))
    upsampler: Stage = field(default_factory=lambda: Stage(1000, 16, 3e-4))
    prior_width: int = 128
    prior_layers: int = 4
    decoder_channels: int = 48
    decoder_res_blocks: int = 1
    upsampler_channels: int = 32


def build_clip(r: UnCLIPRecipe) -> ClipAdapter:
    from dalle2_fast.data.shapes import VOCAB

    tok = WordTokenizer([w for w in VOCAB if w != "<pad>"], vocab_size=128, context_length=24)
    return ClipAdapter.create(TINY_SHAPES_MODEL, tokenizer=tok)


def build_prior(r: UnCLIPRecipe, clip: ClipAdapter):
    from dalle2_fast.models.prior import DiffusionPrior, DiffusionPriorConfig

    return DiffusionPrior(DiffusionPriorConfig(clip_dim=clip.embed_dim, text_width=clip.text_width,
                                               text_len=clip.context_length, width=r.prior_width,
                                               layers=r.prior_layers, heads=max(1, r.prior_width // 64)))


def build_decoder(r: UnCLIPRecipe, clip: ClipAdapter):
    from dalle2_fast.models.decoder import DecoderConfig, UnCLIPDecoder
    from dalle2_fast.models.unet import UNetConfig

    decoder = build_decoder(r, clip)

    def dec_step(step, g):
        i = _batch_idx(g, n, r.decoder.batch_size)
        return decoder.loss(x_base[i], zi[i], TextEncoding(t_tok[i], t_mask[i], t_emb[i]), generator=g)

    _loop("decoder", r.decoder, dec_step, list(decoder.parameters()), r.seed + 3, log)
    decoder.eval()

    # 4. upsamplers ---------------------------------------------------------------------------
    ups, low = [], r.base_res
    for k, high in enumerate(r.upsample_res):
        torch.manual_seed(r.seed + 4 + k)
        x_hi, _ = _render(r.seed, r.n_train, high, r.max_objects)
        up = build_upsampler(r, low, high, k)

        def up_step(step, g, up=up, x_hi=x_hi):
            return up.loss(x_hi[_batch_idx(g, n, r.upsampler.batch_size)], generator=g)

        _loop(f"upsampler{k + 1}", r.upsampler, up_step, list(up.parameters()), r.seed + 4 + k, log)
        ups.append(up.eval())
        low = high
        del x_hi

    pipe = UnCLIPPipeline(clip, prior, decoder, ups, defaults=PIPELINE_DEFAULTS)
    pipe.save_pretrained(out / "pipeline")
    logf.close()
    return pipe


# ---- evaluation ---------------------------------------------------------------------------------
def eval_prompts(two_objects: bool = False) -> list[tuple[str, list[tuple[str, str]]]]:
    """Prompts in words the training captions use but never as whole sentences (no size or
    position words): ('a red circle', [('circle', 'red')]) or 'a red circle above a blue square'."""
    from dalle2_fast.data.shapes import COLOUR_NAMES, SHAPES

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
    from dalle2_fast.eval.detector import detect, recognised

    ups = pipe.upsamplers
    if base_only:
        pipe.upsamplers = []
    try:
        texts = [p for p, _ in prompts]
        imgs = pipe(texts, num_images_per_prompt=n_per_prompt, seed=seed, **sample_kw)
    finally:
        pipe.upsamplers = ups
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
