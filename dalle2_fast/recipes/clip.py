"""The CLIP recipe (``dalle2-fast train clip``, and the first stage of ``train unclip``): the tiny
open_clip ``dalle2fast-shapes-tiny`` with a word tokenizer over the shapes vocabulary (or, with
``tokenizer='bpe'``, ``dalle2fast-shapes-tiny-bpe`` with the compact open_clip BPE), trained
contrastively (the model's own ``loss``: open_clip's ``ClipLoss``) on rendered shapes and their
captions. AdamW (betas 0.9/0.98, weight decay 0.1 on matrices only), linear warm-up then cosine
decay, the logit scale kept <= 100 as in CLIP."""
from __future__ import annotations

import dataclasses
import math

import torch

from dalle2_fast.data.captions import CaptionConfig, family_words
from dalle2_fast.data.memory import InMemoryData
from dalle2_fast.data.shapes import VOCAB, ShapesDataset
from dalle2_fast.eval.zero_shot import shapes_zero_shot
from dalle2_fast.models.bpe import BPETokenizer
from dalle2_fast.models.clip import TINY_SHAPES_MODEL, ClipAdapter, WordTokenizer
from dalle2_fast.recipes.common import LossTask, warmup_cosine

TOKENIZERS = ("words", "bpe")
BPE_SHAPES_MODEL = "dalle2fast-shapes-tiny-bpe"  # the tiny CLIP with room for the BPE pieces (768, context 32)


def training_words(captions: CaptionConfig | None = None) -> list[str]:
    """The words of the training captions: the legacy vocabulary, or the grammar's training families."""
    if captions is None or captions.mode == "legacy":
        return [w for w in VOCAB if w != "<pad>"]
    return family_words(captions.training_families)


def shapes_tokenizer(kind: str = "words", captions: CaptionConfig | None = None):
    """The tokenizer of the tiny shapes CLIP, fitted to the training captions' words (never the
    held-out family's): 'words' (a word per id; unknown words share one id) or 'bpe' (open_clip's
    BPE merges those words reach, plus byte fallbacks: any string encodes into known pieces)."""
    if kind == "words":
        return WordTokenizer(training_words(captions), vocab_size=128, context_length=24)
    if kind == "bpe":
        return BPETokenizer.fit(training_words(captions), vocab_size=768, context_length=32)
    raise ValueError(f"shapes_tokenizer: tokenizer must be one of {TOKENIZERS}, got {kind!r}")


def build_clip(tokenizer: str = "words", captions: CaptionConfig | None = None) -> ClipAdapter:
    return ClipAdapter.create(BPE_SHAPES_MODEL if tokenizer == "bpe" else TINY_SHAPES_MODEL,
                              tokenizer=shapes_tokenizer(tokenizer, captions))


def render(seed: int, n: int, res: int, max_objects: int, captions: CaptionConfig | None = None) -> dict:
    """``n`` shapes items of ``seed`` at ``res`` pixels, in memory: image, caption, objects, label
    (the captions and scenes of ``captions``; None = legacy)."""
    return ShapesDataset(resolution=res, seed=seed, size=n, min_objects=1, max_objects=max_objects,
                         captions=captions).batch(0, n)


class ClipTask(LossTask):
    """Trains :func:`build_clip` on ``n_train`` rendered items of ``data_seed`` (base resolution)."""

    name = "clip"
    default_lr = 1e-3
    weight_decay = 0.1
    betas = (0.9, 0.98)
    warmup = 50

    def __init__(self, data_seed: int = 0, n_train: int = 20000, res: int = 32, max_objects: int = 2,
                 eval_seed: int | None = None, captions: CaptionConfig | None = None, tokenizer: str = "words"):
        self.data_seed, self.n_train, self.res, self.max_objects = data_seed, n_train, res, max_objects
        self.eval_seed = data_seed + 1000 if eval_seed is None else eval_seed
        self.captions, self.tokenizer = captions, tokenizer

    def describe(self) -> dict:
        d = {"data_seed": self.data_seed, "n_train": self.n_train, "res": self.res, "max_objects": self.max_objects}
        if self.captions is not None and self.captions.mode != "legacy":
            d["captions"] = dataclasses.asdict(self.captions)
        if self.tokenizer != "words":
            d["tokenizer"] = self.tokenizer
        return d

    def datasets(self, cfg):
        items = render(self.data_seed, self.n_train, self.res, self.max_objects, self.captions)
        return InMemoryData({"image": items["image"], "caption": items["caption"]}, seed=cfg.seed), None

    def build(self):
        return build_clip(self.tokenizer, self.captions)

    def optimizers(self, model, lr):
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        return {"model": torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                            {"params": rest, "weight_decay": 0.0}], lr=lr, betas=self.betas)}

    def lr_factor(self, step: int, steps: int) -> float:
        return warmup_cosine(step, steps, self.warmup)

    def step(self, model, batch, opts) -> dict:
        logs = super().step(model, batch, opts)
        with torch.no_grad():  # as in CLIP: keep the temperature <= 100
            model.model.logit_scale.clamp_(0, math.log(100))
        return logs

    @torch.no_grad()
    def evaluate(self, model, held, gen) -> dict:
        return {"clip_zero_shot": shapes_zero_shot(model, self.eval_seed, self.res)}


__all__ = ["ClipTask", "build_clip", "shapes_tokenizer", "training_words", "render", "TOKENIZERS", "BPE_SHAPES_MODEL"]
