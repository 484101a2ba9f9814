"""Does a sample show what its class label asks for? The shapes detector, per label kind."""
from __future__ import annotations

import torch

from dalle2_fast.data.shapes import COLOUR_NAMES, SHAPES
from dalle2_fast.eval.detector import detect, recognised


def recognised_as(image: torch.Tensor, kind: str, k: int | None, min_score: float = 0.7) -> bool:
    """The detector finds a well-formed object of label ``k`` of ``kind`` ('shape', 'colour',
    'class') in ``image``; with k None or kind 'none': at least one detection, all well-formed."""
    if k is None or kind == "none":
        return recognised(image, None, min_score)
    if kind == "class":
        return recognised(image, int(k), min_score)
    good = [d for d in detect(image) if d.score >= min_score]
    if kind == "shape":
        return any(d.shape == SHAPES[k] for d in good)
    if kind == "colour":
        return any(d.colour == COLOUR_NAMES[k] for d in good)
    raise ValueError(f"recognised_as: unknown label kind {kind!r}")


def recognition_rate_of(images: torch.Tensor, kind: str, labels) -> float:
    """Fraction of images recognised as their label (``labels`` None: the unconditional check)."""
    if len(images) == 0:
        raise ValueError("recognition_rate_of: no images")
    hits = sum(recognised_as(images[i], kind, None if labels is None else int(labels[i]))
               for i in range(len(images)))
    return hits / len(images)


__all__ = ["recognised_as", "recognition_rate_of"]
