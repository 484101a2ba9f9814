"""Random fill masks for training a mask-conditioned (inpainting) decoder, GLIDE-style: boxes,
brush strokes and object masks (a square around one object of a shapes image). Every mask is a
function of its item's seed. Masks here say what to **fill** (1) and what is known (0)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

KINDS = ("box", "brush", "object")


def box_fill(size: int, rng: np.random.Generator) -> np.ndarray:
    """A rectangle with sides 20-60% of the image, anywhere inside it."""
    h, w = (rng.uniform(0.2, 0.6, size=2) * size).astype(int).clip(1, size)
    y0, x0 = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    m = np.zeros((size, size), np.float32)
    m[y0:y0 + h, x0:x0 + w] = 1
    return m


def brush_fill(size: int, rng: np.random.Generator, f: int = 4) -> np.ndarray:
    """1-4 strokes, each a polyline of 2-5 points with a width of 6-15% of the image (drawn at
    f x the size, kept where at least half covered)."""
    big = size * f
    img = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):
        pts = [tuple(float(v) for v in rng.uniform(0, big, size=2)) for _ in range(int(rng.integers(2, 6)))]
        width = int(rng.uniform(0.06, 0.15) * big)
        d.line(pts, fill=255, width=max(1, width), joint="curve")
        r = width / 2
        for x, y in pts:
            d.ellipse([x - r, y - r, x + r, y + r], fill=255)
    cover = np.asarray(img.reduce(f), np.float32) / 255
    m = (cover >= 0.5).astype(np.float32)
    if not m.any():  # a stroke thinner than a pixel: fall back to a box
        return box_fill(size, rng)
    return m


def object_fill(size: int, rng: np.random.Generator, objects: np.ndarray) -> np.ndarray:
    """A square around one object (cx, cy, side as fractions; rows with NaN are absent), of side
    side + 0.07 (the inpainting evaluation's hole)."""
    rows = objects[~np.isnan(objects).any(1)]
    if len(rows) == 0:
        return box_fill(size, rng)
    cx, cy, side = rows[int(rng.integers(len(rows)))]
    half = side / 2 + 0.035
    x0, y0 = max(0, int(np.floor((cx - half) * size))), max(0, int(np.floor((cy - half) * size)))
    x1, y1 = min(size, int(np.ceil((cx + half) * size))), min(size, int(np.ceil((cy + half) * size)))
    m = np.zeros((size, size), np.float32)
    m[y0:y1, x0:x1] = 1
    return m


def random_fill_mask(size: int, seed: int, objects: np.ndarray | None = None) -> torch.Tensor:
    """(size, size) float32 of {0, 1}, 1 = fill: box, brush or (given ``objects``) object mask,
    one third each, all drawn from ``seed``."""
    rng = np.random.default_rng(int(seed))
    kinds = KINDS if objects is not None else KINDS[:2]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "box":
        m = box_fill(size, rng)
    elif kind == "brush":
        m = brush_fill(size, rng)
    else:
        m = object_fill(size, rng, np.asarray(objects, np.float64))
    return torch.from_numpy(m)


def object_boxes(objects_per_item, max_objects: int) -> torch.Tensor:
    """(n, max_objects, 3) float32 (cx, cy, side) of each item's shapes (``Obj`` lists), NaN-padded:
    what ``random_fill_mask`` needs, in a tensor a batch can carry."""
    out = torch.full((len(objects_per_item), max_objects, 3), float("nan"))
    for i, objs in enumerate(objects_per_item):
        for k, o in enumerate(objs[:max_objects]):
            out[i, k] = torch.tensor([o.cx, o.cy, o.side])
    return out


__all__ = ["random_fill_mask", "box_fill", "brush_fill", "object_fill", "object_boxes", "KINDS"]
