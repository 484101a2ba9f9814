"""Contrastive training of a :class:`~dalle2_fast.clip.ClipAdapter` and zero-shot evaluation.

The loss is open_clip's own ``ClipLoss`` (symmetric InfoNCE over the batch, Radford et al. 2021,
Fig. 3), so any open_clip architecture trains the same way; under ``torch.distributed`` it gathers
features across ranks as open_clip does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from dalle2_fast.clip import ClipAdapter


@dataclass
class ClipTrainConfig:
    steps: int = 1000
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 50
    grad_clip: float = 1.0
    seed: int = 0
    max_minutes: float | None = None  # stop early after this long


def train_clip(clip: ClipAdapter, batches: Iterable[tuple[torch.Tensor, Sequence[str]]],
               cfg: ClipTrainConfig = ClipTrainConfig(),
               on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``clip`` on ``batches`` of (images (B, 3, H, W) in [-1, 1], captions) for ``cfg.steps``.

    AdamW with linear warmup then cosine decay. Returns the per-step losses.
    """
    from open_clip.loss import ClipLoss

    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    loss_fn = ClipLoss(local_loss=False, gather_with_grad=dist, cache_labels=True,
                       rank=torch.distributed.get_rank() if dist else 0,
                       world_size=torch.distributed.get_world_size() if dist else 1)
    torch.manual_seed(cfg.seed)
    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        prog = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, prog)))

    import time

    t0 = time.time()
    clip.train()
    losses: list[float] = []
    it = iter(batches)
    for step in range(cfg.steps):
        images, captions = next(it)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        img_f, txt_f, scale = clip(images, clip.tokenize(list(captions)))
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():  # as in CLIP: keep the temperature <= 100
            clip.model.logit_scale.clamp_(0, math.log(100))
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
        if cfg.max_minutes is not None and time.time() - t0 > 60 * cfg.max_minutes:
            break
    clip.eval()
    return losses


@torch.no_grad()
def zero_shot_predict(clip: ClipAdapter, images: torch.Tensor, prompts: Sequence[str],
                      batch_size: int = 256) -> torch.Tensor:
    """Index into ``prompts`` of the most similar prompt for each image: (N,) int64."""
    if len(prompts) == 0:
        raise ValueError("zero_shot_predict: prompts is empty")
    txt = clip.encode_text(list(prompts)).embed  # (P, D)
    out = []
    for i in range(0, images.shape[0], batch_size):
        out.append((clip.encode_image(images[i:i + batch_size]) @ txt.T).argmax(-1))
    return torch.cat(out)


@torch.no_grad()
def zero_shot_accuracy(clip: ClipAdapter, images: torch.Tensor, labels: torch.Tensor | Sequence[int],
                       prompts: Sequence[str]) -> float:
    """Fraction of images whose most similar prompt is ``prompts[label]``.

    Use held-out captions as ``prompts`` (e.g. one per colour, or every caption of a test split)
    to measure what the tiny CLIP learned.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"zero_shot_accuracy: labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
    return float((zero_shot_predict(clip, images, prompts).cpu() == labels).float().mean())
