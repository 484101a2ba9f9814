"""The unCLIP recipe (``dalle2-fast train unclip``): CLIP, prior, decoder and upsamplers on the
shapes data, each stage a task of the one training loop (so DDP, ``--resume`` inside a stage, the
weight EMA with warm-up, signals and atomic checkpoints all apply).

Stages, in order, each from the one seed (``UnCLIPRecipe.seed``):

1. ``clip``: the tiny open_clip (:mod:`dalle2_fast.recipes.clip`) on base-resolution images;
2. ``prior``: the diffusion (or autoregressive) prior on (caption -> CLIP image embedding) pairs
   from the frozen CLIP;
3. ``decoder``: the decoder on (image, z_i, caption tokens);
4. ``upsampler1``, ``upsampler2``: each on (high-res crop, its corrupted low-res) pairs: Gaussian
   blur for the first, the BSR degradations for the second (noise-conditioning augmentation).

Each stage trains in ``<out>/stages/<name>/`` (the loop's run directory: checkpoints, loss.csv,
``final/``); ``<out>/stages/<name>.json`` (the recipe fields the stage depends on) is written
once ``final/`` is complete and marks it done. A finished stage is never retrained, an
interrupted one resumes from its last checkpoint, and a stage made by another recipe is refused
with the differing fields listed. ``stages=`` restricts what one call trains, so independent
stages can run in parallel processes (the upsamplers need nothing, the prior and the decoder need
``clip``). Once every stage is done ``<out>/pipeline/`` is assembled. With fixed step counts (no
``max_minutes``) every stage is a function of the seed, however the run was split.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import torch

from dalle2_fast.checkpoint import atomic_write_text, load_pretrained
from dalle2_fast.data.degradations import bsr_degrade, downsample, random_gaussian_blur
from dalle2_fast.data.memory import InMemoryData
from dalle2_fast.models.clip import ClipAdapter
from dalle2_fast.data.captions import CaptionConfig
from dalle2_fast.recipes.clip import TOKENIZERS, ClipTask, build_clip, render
from dalle2_fast.recipes.common import LossTask
from dalle2_fast.train.loop import TrainConfig, train


@dataclass(frozen=True)
class Stage:
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    max_minutes: float | None = None  # stop early after this long (breaks seed-exactness)
    ema: float = 0.0                  # exponential moving average of the weights (0: off)


@dataclass(frozen=True)
class UnCLIPRecipe:
    seed: int = 0
    n_train: int = 20000
    n_train_upsampler: int = 3000               # images rendered at each upsampler's resolution
    base_res: int = 32
    upsample_res: tuple[int, ...] = (64, 128)   # the two upsamplers (the paper: 64 -> 256 -> 1024)
    max_objects: int = 2                        # the most objects in a CLIP/prior/decoder training image
    upsampler_max_objects: int = 2              # ... in an upsampler's (local detail; 2: the shipped upsamplers)
    clip: Stage = field(default_factory=lambda: Stage(1500, 128, 1e-3))
    prior: Stage = field(default_factory=lambda: Stage(3000, 128, 3e-4, ema=0.999))
    decoder: Stage = field(default_factory=lambda: Stage(5000, 32, 8e-4, ema=0.999))
    upsampler: Stage = field(default_factory=lambda: Stage(1200, 16, 5e-4, ema=0.995))
    inpaint: Stage = field(default_factory=lambda: Stage(600, 32, 2e-4, ema=0.99))  # optional stage
    prior_kind: str = "diffusion"               # 'diffusion' | 'ar' (autoregressive prior)
    prior_width: int = 128
    prior_layers: int = 4
    decoder_channels: int = 32
    decoder_res_blocks: int = 1
    decoder_text_layers: int = 0                # >0: GLIDE's text transformer in the decoder (models.decoder_text)
    decoder_text_width: int = 64
    upsampler_channels: int = 32
    upsampler_residual: bool = True             # diffuse hr - bicubic(low) (SRDiff-style) ...
    upsampler_pred: str = "x0"                  # ... predicting x0: an under-trained model stays near bicubic
    upsampler_blur_sigma: tuple[float, float] = (0.4, 0.6)  # the first upsampler's conditioning blur
    captions: str = "legacy"                    # 'legacy' (the shipped weights' captions) | 'grammar' (data.captions)
    held_out: str = "after_noun"                # grammar: the wording family never trained on ('' = none)
    tokenizer: str = "words"                    # the CLIP's tokenizer: 'words' | 'bpe'

    def __post_init__(self):
        object.__setattr__(self, "upsample_res", tuple(int(r) for r in self.upsample_res))
        object.__setattr__(self, "upsampler_blur_sigma", tuple(float(v) for v in self.upsampler_blur_sigma))
        if self.prior_kind not in ("diffusion", "ar"):
            raise ValueError(f"UnCLIPRecipe.prior_kind must be 'diffusion' or 'ar', got {self.prior_kind!r}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"UnCLIPRecipe.tokenizer must be one of {TOKENIZERS}, got {self.tokenizer!r}")
        self.caption_config()  # checks captions and held_out

    def caption_config(self) -> CaptionConfig | None:
        """The training captions (None: legacy)."""
        if self.captions == "legacy":
            return None
        return CaptionConfig(mode=self.captions, held_out=self.held_out)

    def text_fields(self) -> dict:
        """The caption and tokenizer fields, only where they differ from the legacy defaults (so the
        keys of stages trained before these fields existed still match)."""
        if self.captions == "legacy" and self.tokenizer == "words":
            return {}
        return {"captions": self.captions, "held_out": self.held_out if self.captions != "legacy" else "",
                "tokenizer": self.tokenizer}


PIPELINE_DEFAULTS = dict(prior_steps=32, decoder_steps=25, upsampler_steps=8, prior_guidance=2.0,
                         decoder_guidance=3.0)  # guidance chosen on a seed-1 prompt set; reported on seed 0


OPTIONAL_STAGES = ("inpaint",)  # trained only when asked for (--stages inpaint)


def stage_names(r: UnCLIPRecipe) -> list[str]:
    return ["clip", "prior", "decoder"] + [f"upsampler{k + 1}" for k in range(len(r.upsample_res))]


def stage_key(r: UnCLIPRecipe, name: str) -> dict:
    """The recipe fields a stage's result depends on (its own and its inputs')."""
    d = json.loads(json.dumps(dataclasses.asdict(r)))
    if name.startswith("upsampler"):
        k = int(name[len("upsampler"):])
        return {"seed": r.seed, "n_train_upsampler": r.n_train_upsampler, "max_objects": r.upsampler_max_objects,
                "res": [r.base_res, *r.upsample_res[:k]], "upsampler": d["upsampler"],
                "upsampler_channels": r.upsampler_channels, "upsampler_residual": r.upsampler_residual,
                "upsampler_pred": r.upsampler_pred, "upsampler_blur_sigma": d["upsampler_blur_sigma"]}
    key = {f: d[f] for f in ("seed", "n_train", "base_res", "max_objects", "clip")}
    key.update(r.text_fields())
    own = {"prior": ("prior", "prior_kind", "prior_width", "prior_layers"),
           "decoder": ("decoder", "decoder_channels", "decoder_res_blocks"), "clip": (),
           "inpaint": ("inpaint", "decoder", "decoder_channels", "decoder_res_blocks")}[name]
    key.update({f: d[f] for f in own})
    if name in ("decoder", "inpaint") and r.decoder_text_layers:  # absent when off: older runs' keys hold
        key.update(decoder_text_layers=r.decoder_text_layers, decoder_text_width=r.decoder_text_width)
    return key


# ---- builders (random weights of the recipe's architectures) ------------------------------------
def build_prior(r: UnCLIPRecipe, clip: ClipAdapter):
    from dalle2_fast.models.prior import ARPriorConfig, AutoregressivePrior, DiffusionPrior, DiffusionPriorConfig

    heads = max(1, r.prior_width // 64)
    if r.prior_kind == "ar":
        return AutoregressivePrior(ARPriorConfig(clip_dim=clip.embed_dim, text_width=clip.text_width,
                                                 text_len=clip.context_length, n_components=32, n_buckets=64,
                                                 n_dot_buckets=8, width=r.prior_width, layers=r.prior_layers,
                                                 heads=heads))
    return DiffusionPrior(DiffusionPriorConfig(clip_dim=clip.embed_dim, text_width=clip.text_width,
                                               text_len=clip.context_length, width=r.prior_width,
                                               layers=r.prior_layers, heads=heads))


def build_decoder(r: UnCLIPRecipe, clip: ClipAdapter):
    from dalle2_fast.models.decoder import DecoderConfig, UnCLIPDecoder
    from dalle2_fast.models.decoder_text import TextTransformerConfig
    from dalle2_fast.models.unet import UNetConfig

    mc = r.decoder_channels
    xf = None
    if r.decoder_text_layers:
        xf = TextTransformerConfig(layers=r.decoder_text_layers, width=r.decoder_text_width,
                                   heads=max(1, r.decoder_text_width // 32))
    unet = UNetConfig(image_size=r.base_res, in_channels=3, model_channels=mc, channel_mult=(1, 2, 2),
                      num_res_blocks=r.decoder_res_blocks, attention_resolutions=(r.base_res // 2, r.base_res // 4),
                      num_head_channels=min(32, mc), learn_sigma=True, use_scale_shift_norm=True,
                      resblock_updown=True, cond_dim=clip.embed_dim, context_dim=mc * 2, cond_tokens=4,
                      num_groups=min(32, mc // 2))
    return UnCLIPDecoder(DecoderConfig(unet=unet, clip_dim=clip.embed_dim, text_width=clip.text_width,
                                       text_len=clip.context_length, text_transformer=xf))


def build_upsampler(r: UnCLIPRecipe, low: int, high: int):
    from dalle2_fast.models.unet import UNetConfig
    from dalle2_fast.models.upsampler import UnCLIPUpsampler, UpsamplerConfig

    uc = r.upsampler_channels
    ucfg = UNetConfig(image_size=high, in_channels=3, low_res_channels=3, model_channels=uc, channel_mult=(1, 2, 2),
                      num_res_blocks=1, attention_resolutions=(), use_scale_shift_norm=True,
                      num_groups=min(32, uc // 2))
    diff = replace(UpsamplerConfig().diffusion, mean_type=r.upsampler_pred)
    return UnCLIPUpsampler(UpsamplerConfig(unet=ucfg, diffusion=diff, low_res=low, high_res=high,
                                           residual=r.upsampler_residual))


def build_pipeline(r: UnCLIPRecipe = UnCLIPRecipe(), seed: int = 0):
    """A pipeline of the recipe's architectures with random weights (benchmarks: the cost does not
    depend on the weights)."""
    from dalle2_fast.pipeline import UnCLIPPipeline

    torch.manual_seed(seed)
    clip = build_clip(r.tokenizer, r.caption_config())
    ups, low = [], r.base_res
    for high in r.upsample_res:
        ups.append(build_upsampler(r, low, high).eval())
        low = high
    return UnCLIPPipeline(clip, build_prior(r, clip).eval(), build_decoder(r, clip).eval(), ups,
                          defaults=PIPELINE_DEFAULTS)


# ---- stage tasks ---------------------------------------------------------------------------------
def recipe_schedule(step: int, steps: int) -> float:
    """The stages' learning-rate factor: a short linear warm-up, then cosine decay to 0.55."""
    warm = max(1, min(100, steps // 20))
    return min(1.0, (step + 1) / warm) * (0.55 + 0.45 * math.cos(math.pi * step / steps))


@torch.no_grad()
def encode_with_clip(clip: ClipAdapter, images: torch.Tensor, captions: list[str], chunk: int = 512) -> dict:
    """The frozen CLIP's view of a training set: image_embed (z_i), text_tokens, text_mask, text_embed (z_t)."""
    zi = torch.cat([clip.encode_image(images[i:i + chunk]) for i in range(0, len(captions), chunk)])
    te = [clip.encode_text(captions[i:i + chunk]) for i in range(0, len(captions), chunk)]
    return {"image_embed": zi, "text_tokens": torch.cat([e.tokens for e in te]),
            "text_mask": torch.cat([e.mask for e in te]), "text_embed": torch.cat([e.embed for e in te])}


class _EmbeddingStage(LossTask):
    """Prior and decoder: trained on the training set as the frozen CLIP sees it."""

    def __init__(self, r: UnCLIPRecipe, clip_dir: Path, name: str):
        self.r, self.clip_dir, self.name = r, Path(clip_dir), name
        self.default_lr = getattr(r, name).lr
        self.data = None

    def lr_factor(self, step, steps):
        return recipe_schedule(step, steps)

    def describe(self) -> dict:
        return {"recipe": stage_key(self.r, self.name)}

    def clip(self) -> ClipAdapter:
        if not hasattr(self, "_clip"):
            self._clip = ClipAdapter.from_pretrained(self.clip_dir).eval().requires_grad_(False)
        return self._clip

    def datasets(self, cfg):
        items = render(self.r.seed, self.r.n_train, self.r.base_res, self.r.max_objects, self.r.caption_config())
        self.data = encode_with_clip(self.clip(), items["image"], items["caption"])
        if self.name == "decoder":
            self.data["image"] = items["image"]
        return InMemoryData(self.data, seed=cfg.seed), None


class PriorStage(_EmbeddingStage):
    def __init__(self, r, clip_dir):
        super().__init__(r, clip_dir, "prior")

    def build(self):
        torch.manual_seed(self.r.seed + 2)
        prior = build_prior(self.r, self.clip())
        if self.r.prior_kind == "ar":
            prior.fit_quantizers(self.data["image_embed"], self.data["text_embed"])
        else:
            prior.fit_embed_scale(self.data["image_embed"])
        return prior

    @torch.no_grad()
    def evaluate(self, model, held, gen) -> dict:
        """Mean cosine of sampled z_i to the true z_i of 64 training captions (and to other images')."""
        from dalle2_fast.models.clip import TextEncoding

        d = {k: v[:64] for k, v in self.data.items()}
        m = len(d["image_embed"])
        z = model.sample(TextEncoding(d["text_tokens"], d["text_mask"], d["text_embed"]), list(range(m)),
                         steps=PIPELINE_DEFAULTS["prior_steps"])
        cos = z @ d["image_embed"].T
        return {"prior_cos_true": float(cos.diag().mean()),
                "prior_cos_other": float(cos.fill_diagonal_(0).sum() / max(1, m * (m - 1)))}


class DecoderStage(_EmbeddingStage):
    def __init__(self, r, clip_dir):
        super().__init__(r, clip_dir, "decoder")

    def build(self):
        torch.manual_seed(self.r.seed + 3)
        return build_decoder(self.r, self.clip())

    @torch.no_grad()
    def picture(self, model, held, n, gen):
        """Decoded training embeddings (with their captions), 8 steps: a quick look."""
        from dalle2_fast.models.clip import TextEncoding

        d = {k: v[:min(n, 16)] for k, v in self.data.items()}
        m = len(d["image"])
        out = model.sample(d["image_embed"], TextEncoding(d["text_tokens"], d["text_mask"], d["text_embed"]),
                           seeds=list(range(m)), steps=8)
        return torch.stack([d["image"], out], 1).flatten(0, 1)


class UpsamplerStage(LossTask):
    """Upsampler k (0-based): high-res crops and their corrupted low-res conditioning (blur for the
    first, BSR for the second), each item's crop and corruption from its own seeds."""

    def __init__(self, r: UnCLIPRecipe, k: int):
        self.r, self.k, self.name = r, k, f"upsampler{k + 1}"
        self.low = r.base_res if k == 0 else r.upsample_res[k - 1]
        self.high = r.upsample_res[k]
        self.crop = self.high // 2 if self.high >= 64 else 0
        self.default_lr = r.upsampler.lr

    def describe(self) -> dict:
        return {"recipe": stage_key(self.r, self.name), "crop": self.crop}

    def lr_factor(self, step, steps):
        return recipe_schedule(step, steps)

    def datasets(self, cfg):
        items = render(self.r.seed, self.r.n_train_upsampler, self.high, self.r.upsampler_max_objects)
        self.held = items["image"][:16]
        return InMemoryData({"image": items["image"]}, seed=cfg.seed), None

    def build(self):
        torch.manual_seed(self.r.seed + 4 + self.k)
        return build_upsampler(self.r, self.low, self.high)

    def degrade(self, hr: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """High-res (1, 3, H, W) -> its corrupted low-res conditioning (1, 3, H/f, W/f)."""
        f = self.high // self.low
        size = (hr.shape[-2] // f, hr.shape[-1] // f)
        if self.k == 0:
            return random_gaussian_blur(downsample(hr, size), g, self.r.upsampler_blur_sigma)
        return bsr_degrade(hr, size, g)

    def prepare(self, batch):
        hr, seeds = batch["image"], batch["seeds"]("degrade")
        crops, lows = [], []
        for x, s in zip(hr, seeds):
            g = torch.Generator().manual_seed(s)
            if self.crop and self.crop < x.shape[-1]:
                y0, x0 = (int(v) for v in torch.randint(0, x.shape[-1] - self.crop + 1, (2,), generator=g))
                x = x[:, y0:y0 + self.crop, x0:x0 + self.crop]
            crops.append(x)
            lows.append(self.degrade(x[None], g)[0])
        return dict(batch, image=torch.stack(crops), low_res=torch.stack(lows))

    @torch.no_grad()
    def evaluate(self, model, held, gen) -> dict:
        """PSNR of 8-step samples and of bicubic against 16 high-res training images (from their
        plainly downsampled low-res)."""
        from dalle2_fast.eval import psnr

        hr = self.held
        lr = downsample(hr, (self.low, self.low))
        out = model.sample(lr, seeds=list(range(len(hr))), steps=8)
        return {"psnr_db": psnr(out, hr), "bicubic_psnr_db": psnr(model.base(lr, hr.shape[-2:]), hr)}


class InpaintStage(_EmbeddingStage):
    """The mask-conditioned decoder (GLIDE's inpainting model): the trained decoder (this run's
    ``decoder`` stage, else the shipped one) widened by the masked image and the mask
    (``widen_for_inpainting``) and fine-tuned on random fill masks (``data.masks``: boxes, brush
    strokes, squares around an object), each item's mask from its own seed."""

    def __init__(self, r, clip_dir, decoder_path):
        super().__init__(r, clip_dir, "inpaint")
        self.decoder_path = Path(decoder_path)

    def describe(self) -> dict:
        return {"recipe": stage_key(self.r, self.name), "from": str(self.decoder_path)}

    def datasets(self, cfg):
        from dalle2_fast.data.masks import object_boxes

        items = render(self.r.seed, self.r.n_train, self.r.base_res, self.r.max_objects, self.r.caption_config())
        self.data = encode_with_clip(self.clip(), items["image"], items["caption"])
        self.data["image"] = items["image"]
        self.data["boxes"] = object_boxes(items["objects"], self.r.max_objects)
        return InMemoryData(self.data, seed=cfg.seed), None

    def build(self):
        from dalle2_fast.models.decoder import widen_for_inpainting

        return widen_for_inpainting(load_pretrained(self.decoder_path).eval())

    def prepare(self, batch):
        from dalle2_fast.data.masks import random_fill_mask

        size = batch["image"].shape[-1]
        fill = [random_fill_mask(size, s, b.numpy()) for s, b in zip(batch["seeds"]("mask"), batch["boxes"])]
        return dict(batch, fill=torch.stack(fill)[:, None].to(batch["image"].device))

    @torch.no_grad()
    def picture(self, model, held, n, gen):
        """Training images with a box hole: (hole washed out, conditioned sample) pairs, 8 steps."""
        from dalle2_fast.data.masks import random_fill_mask
        from dalle2_fast.models.clip import TextEncoding

        d = {k: v[:min(n, 8)] for k, v in self.data.items()}
        m, size = len(d["image"]), d["image"].shape[-1]
        fill = torch.stack([random_fill_mask(size, 10_000 + i, b.numpy()) for i, b in enumerate(d["boxes"])])[:, None]
        cond = model.inpaint_condition(d["image"], 1 - fill)
        out = model.sample(d["image_embed"], TextEncoding(d["text_tokens"], d["text_mask"], d["text_embed"]),
                           seeds=list(range(m)), steps=8, inpaint_image=cond)
        return torch.stack([torch.where(fill.bool(), 0.5 + 0.5 * d["image"], d["image"]), out], 1).flatten(0, 1)


# ---- the recipe ----------------------------------------------------------------------------------
class StageStore:
    """``<out>/stages/``: each stage's run directory and, once its ``final/`` is complete, its
    recipe key (``<name>.json``)."""

    def __init__(self, out: Path, r: UnCLIPRecipe):
        self.dir, self.r = Path(out) / "stages", r
        self.dir.mkdir(parents=True, exist_ok=True)

    def run_dir(self, name: str) -> Path:
        return self.dir / name

    def final(self, name: str) -> Path:
        return self.run_dir(name) / "final"

    def _check(self, path: Path, name: str) -> bool:
        if not path.is_file():
            return False
        got, want = json.loads(path.read_text()), json.loads(json.dumps(stage_key(self.r, name)))
        if got != want:
            diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            raise ValueError(f"unclip recipe: stage {name!r} in {self.dir} was trained with a different recipe "
                             f"(fields {diff} differ); delete {self.run_dir(name)} and {path} to retrain it, or "
                             "train with the recipe it was made with")
        return True

    def done(self, name: str) -> bool:
        return self._check(self.dir / f"{name}.json", name)

    def begin(self, name: str) -> None:
        """Refuse to resume a stage another recipe started; record this recipe's key."""
        started = self.run_dir(name) / "recipe_key.json"
        if not self._check(started, name):
            self.run_dir(name).mkdir(parents=True, exist_ok=True)
            atomic_write_text(started, json.dumps(stage_key(self.r, name), indent=2))

    def finish(self, name: str) -> None:
        atomic_write_text(self.dir / f"{name}.json", json.dumps(stage_key(self.r, name), indent=2))

    def load(self, name: str):
        if name == "clip":
            return ClipAdapter.from_pretrained(self.final(name)).eval()
        return load_pretrained(self.final(name)).eval()


def stage_task(r: UnCLIPRecipe, name: str, store: StageStore):
    if name == "clip":
        return ClipTask(data_seed=r.seed, n_train=r.n_train, res=r.base_res, max_objects=r.max_objects,
                        captions=r.caption_config(), tokenizer=r.tokenizer)
    if name == "prior":
        return PriorStage(r, store.final("clip"))
    if name == "decoder":
        return DecoderStage(r, store.final("clip"))
    if name == "inpaint":  # from this run's CLIP and decoder, else the shipped ones
        clip_dir, dec = _inpaint_sources(store)
        return InpaintStage(r, clip_dir, dec)
    return UpsamplerStage(r, int(name[len("upsampler"):]) - 1)


def _inpaint_sources(store: StageStore) -> tuple[Path, Path]:
    if store.done("clip") and store.done("decoder"):
        return store.final("clip"), store.final("decoder")
    from dalle2_fast.pipeline import read_manifest, shipped_weights_dir

    shipped = shipped_weights_dir()
    if shipped is None:
        raise RuntimeError("train_unclip: the inpaint stage fine-tunes a trained decoder: train 'clip' and 'decoder' "
                           "first (this install ships no weights)")
    meta = read_manifest(shipped)
    return meta["clip"], meta["decoder"]


_STAGE_SEED = {"clip": 1, "prior": 2, "decoder": 3, "inpaint": 9}


def stage_config(r: UnCLIPRecipe, name: str, out: Path, progress: bool) -> TrainConfig:
    st = r.upsampler if name.startswith("upsampler") else getattr(r, name)
    seed = r.seed + (_STAGE_SEED.get(name) or 3 + int(name[len("upsampler"):]))
    return TrainConfig(out=str(out), steps=st.steps, batch_size=st.batch_size, lr=st.lr, seed=seed, resume=True,
                       resume_missing_ok=True, ckpt_every=max(50, st.steps // 10), keep_last=2,
                       max_minutes=st.max_minutes, eval_size=16, sample_n=16, ema=st.ema, quiet=not progress)


def train_unclip(recipe: UnCLIPRecipe, out_dir: str | Path, progress: bool = True,
                 stages: Sequence[str] | None = None):
    """Train the recipe's stages into ``out_dir``; returns the assembled
    :class:`~dalle2_fast.pipeline.UnCLIPPipeline` (saved to ``out_dir/pipeline``) once every stage
    is done, else None. See the module docstring."""
    from dalle2_fast.pipeline import UnCLIPPipeline

    r = recipe
    want = stage_names(r) if stages is None else list(stages)
    names = stage_names(r) + [s for s in OPTIONAL_STAGES if s in want]
    bad = [s for s in want if s not in names]
    if bad:
        raise ValueError(f"train_unclip: unknown stages {bad}; this recipe has {names} and the optional "
                         f"{list(OPTIONAL_STAGES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = StageStore(out, r)
    atomic_write_text(out / "recipe.json", json.dumps(dataclasses.asdict(r), indent=2))
    for name in names:
        if name not in want or store.done(name):
            continue
        if name in ("prior", "decoder") and not store.done("clip"):
            raise RuntimeError(f"train_unclip: stage {name!r} needs the CLIP stage, which is not trained in "
                               f"{store.dir}; train 'clip' first (or in the same call)")
        store.begin(name)
        if progress:
            print(f"unclip recipe: training stage {name}", flush=True)
        train(stage_task(r, name, store), stage_config(r, name, store.run_dir(name), progress))
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 writes
            store.finish(name)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    inpaint = store.load("inpaint") if store.done("inpaint") else None
    if not all(store.done(s) for s in stage_names(r)):
        if inpaint is None or any(store.done(s) for s in stage_names(r)):
            return None
        pipe = UnCLIPPipeline.from_pretrained(None)  # the inpaint stage alone: the shipped pipeline + it
    else:
        pipe = UnCLIPPipeline(store.load("clip"), store.load("prior"), store.load("decoder"),
                              [store.load(f"upsampler{k + 1}") for k in range(len(r.upsample_res))],
                              defaults=PIPELINE_DEFAULTS)
    pipe.inpaint_decoder = inpaint
    pipe.save_pretrained(out / "pipeline")
    # the recipe beside the weights: the evaluation reads its captions (training sentences, held-out family)
    atomic_write_text(out / "pipeline" / "recipe.json", json.dumps(dataclasses.asdict(r), indent=2))
    return pipe


def recipe_from_args(seed: int = 0, scale: float = 1.0, max_minutes: float | None = None,
                     upsample_res: tuple[int, ...] | None = None, captions: str = "legacy",
                     tokenizer: str = "words", decoder_text_layers: int = 0,
                     max_objects: int | None = None) -> UnCLIPRecipe:
    """The default recipe (with ``captions`` and ``tokenizer``) with every stage's steps multiplied
    by ``scale`` and, given ``max_minutes``, that total wall-clock budget split over the stages (CLIP
    10%, prior 10%, decoder 60%, upsamplers 20%; the optional inpaint stage, trained on its own, the
    whole budget). ``decoder_text_layers`` > 0 gives the decoder GLIDE's text transformer of that depth;
    ``max_objects`` (default the recipe's 2) is the most objects a CLIP, prior and decoder training
    image holds (3: counts of three appear in training); the upsamplers keep their own
    ``upsampler_max_objects``: they learn local detail, and their stages stay those of the shipped weights."""
    r = UnCLIPRecipe(seed=seed, captions=captions, tokenizer=tokenizer, decoder_text_layers=decoder_text_layers)
    if max_objects is not None:
        r = replace(r, max_objects=int(max_objects))
    if upsample_res is not None:
        r = replace(r, upsample_res=tuple(upsample_res))
    shares = {"clip": 0.1, "prior": 0.1, "decoder": 0.6, "upsampler": 0.2 / max(1, len(r.upsample_res))}
    changes = {}
    for name, share in shares.items():
        st = getattr(r, name)
        changes[name] = replace(st, steps=max(1, int(round(st.steps * scale))),
                                max_minutes=None if max_minutes is None else max_minutes * share)
    changes["inpaint"] = replace(r.inpaint, steps=max(1, int(round(r.inpaint.steps * scale))), max_minutes=max_minutes)
    return replace(r, **changes)


__all__ = ["UnCLIPRecipe", "Stage", "PIPELINE_DEFAULTS", "OPTIONAL_STAGES", "train_unclip", "recipe_from_args", "stage_names",
           "stage_key", "build_prior", "build_decoder", "build_upsampler", "build_pipeline", "encode_with_clip"]
