"""The CLIP recipe (``dalle2-fast train clip``, and the first stage of ``train unclip``): the tiny
open_clip ``dalle2fast-shapes-tiny`` with a word tokenizer over the shapes vocabulary, trained
contrastively (the model's own ``loss``: open_clip's ``ClipLoss``) on rendered shapes and their
captions. AdamW (betas 0.9/0.98, weight decay 0.1 on matrices only), linear warm-up then cosine
decay, the logit scale kept <= 100 as in CLIP."""
from __future__ import annotations

import math

import torch

from dalle2_fast.data.memory import InMemoryData
from dalle2_fast.data.shapes import VOCAB, ShapesDataset
from dalle2_fast.eval.zero_shot import shapes_zero_shot
from dalle2_fast.models.clip import TINY_SHAPES_MODEL, ClipAdapter, WordTokenizer
from dalle2_fast.recipes.common import LossTask, warmup_cosine


def shapes_tokenizer() -> WordTokenizer:
    """The word tokenizer of the tiny shapes CLIP: the captions' vocabulary."""
    return WordTokenizer([w for w in VOCAB if w != "<pad>"], vocab_size=128, context_length=24)


def build_clip() -> ClipAdapter:
    return ClipAdapter.create(TINY_SHAPES_MODEL, tokenizer=shapes_tokenizer())


def render(seed: int, n: int, res: int, max_objects: int) -> dict:
    """``n`` shapes items of ``seed`` at ``res`` pixels, in memory: image, caption, objects, label."""
    return ShapesDataset(resolution=res, seed=seed, size=n, min_objects=1, max_objects=max_objects).batch(0, n)


class ClipTask(LossTask):
    """Trains :func:`build_clip` on ``n_train`` rendered items of ``data_seed`` (base resolution)."""

    name = "clip"
    default_lr = 1e-3
    weight_decay = 0.1
    betas = (0.9, 0.98)
    warmup = 50

    def __init__(self, data_seed: int = 0, n_train: int = 20000, res: int = 32, max_objects: int = 2,
                 eval_seed: int | None = None):
        self.data_seed, self.n_train, self.res, self.max_objects = data_seed, n_train, res, max_objects
        self.eval_seed = data_seed + 1000 if eval_seed is None else eval_seed

    def describe(self) -> dict:
        return {"data_seed": self.data_seed, "n_train": self.n_train, "res": self.res, "max_objects": self.max_objects}

    def datasets(self, cfg):
        items = render(self.data_seed, self.n_train, self.res, self.max_objects)
        return InMemoryData({"image": items["image"], "caption": items["caption"]}, seed=cfg.seed), None

    def build(self):
        return build_clip()

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


__all__ = ["ClipTask", "build_clip", "shapes_tokenizer", "render"]
