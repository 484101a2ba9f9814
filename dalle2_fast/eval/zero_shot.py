"""Zero-shot classification with a CLIP adapter (anything with ``encode_text(prompts).embed`` and
``encode_image(images)``): the most similar prompt for each image."""
from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def zero_shot_predict(clip, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """Index into ``prompts`` of the most similar prompt for each image: (N,) int64."""
    if len(prompts) == 0:
        raise ValueError("zero_shot_predict: prompts is empty")
    txt = clip.encode_text(list(prompts)).embed  # (P, D)
    out = []
    for i in range(0, images.shape[0], batch_size):
        out.append((clip.encode_image(images[i:i + batch_size]) @ txt.T).argmax(-1))
    return torch.cat(out)


@torch.no_grad()
def zero_shot_accuracy(clip, images: torch.Tensor, labels: torch.Tensor | Sequence[int], prompts: Sequence[str]) -> float:
    """Fraction of images whose most similar prompt is ``prompts[label]``."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"zero_shot_accuracy: labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
    return float((zero_shot_predict(clip, images, prompts).cpu() == labels).float().mean())


@torch.no_grad()
def shapes_zero_shot(clip, seed: int, res: int, n: int = 300) -> dict:
    """Zero-shot accuracy of CLIP on ``n`` held-out single-object shapes images (a dataset seed
    the training never used) against the 30 prompts 'a <colour> <shape>': colour and shape right,
    and each alone."""
    from dalle2_fast.data.shapes import COLOUR_NAMES, SHAPES, ShapesDataset

    b = ShapesDataset(resolution=res, seed=seed, size=n, min_objects=1, max_objects=1).batch(0, n)
    pairs = [(s, c) for s in SHAPES for c in COLOUR_NAMES]
    pred = zero_shot_predict(clip, b["image"], [f"a {c} {s}" for s, c in pairs]).tolist()
    objs = [o[0] for o in b["objects"]]
    ok_s = [pairs[p][0] == o.shape for p, o in zip(pred, objs)]
    ok_c = [pairs[p][1] == o.colour for p, o in zip(pred, objs)]
    return {"colour_and_shape": sum(a and b for a, b in zip(ok_s, ok_c)) / n, "colour": sum(ok_c) / n,
            "shape": sum(ok_s) / n, "n": n}


__all__ = ["zero_shot_predict", "zero_shot_accuracy", "shapes_zero_shot"]
