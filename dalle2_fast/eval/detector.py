"""A small deterministic shape/colour detector for the captioned-shapes palette.

Pixel analysis, no learning: (1) foreground = pixels whose chroma (max - min of RGB) is well
above the grey backgrounds'; (2) each foreground pixel takes the palette colour of nearest hue;
(3) 8-connected components per colour; (4) each component's anti-aliased coverage
(chroma / palette chroma) is compared, by soft IoU, with each shape rendered at the size implied
by the component's area and at the position implied by its centroid; the best shape wins and
its IoU is the detection's score. Clean renders score ~0.9 for the right shape.
"""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw

from dalle2_fast.data.shapes import COLOUR_NAMES, COLOURS, SHAPES, Obj, draw_shape

_HUES = np.array([colorsys.rgb_to_hsv(*(c / 255 for c in COLOURS[n]))[0] for n in COLOUR_NAMES])
_CHROMA = np.array([(max(COLOURS[n]) - min(COLOURS[n])) / 255 for n in COLOUR_NAMES])


@dataclass(frozen=True)
class Detection:
    shape: str
    colour: str
    cx: float  # centre and side as fractions of the image
    cy: float
    side: float
    score: float  # soft IoU with the best shape template, in [0, 1]
    area: float  # coverage-weighted pixel count


@lru_cache(maxsize=None)
def _template_stats(shape: str) -> tuple[float, float, float]:
    """(fill ratio of the unit square, centroid dx, centroid dy in units of the side)."""
    n = 512
    img = Image.new("L", (n, n), 0)
    draw_shape(ImageDraw.Draw(img), shape, n / 2, n / 2, n * 0.8, 255)
    a = np.asarray(img, np.float64) / 255
    ys, xs = np.mgrid[0:n, 0:n] + 0.5
    m = a.sum()
    return m / (n * 0.8) ** 2, ((xs * a).sum() / m - n / 2) / (n * 0.8), ((ys * a).sum() / m - n / 2) / (n * 0.8)


def _render_coverage(shape: str, cx: float, cy: float, side: float, h: int, w: int, f: int = 4) -> np.ndarray:
    img = Image.new("L", (w * f, h * f), 0)
    draw_shape(ImageDraw.Draw(img), shape, cx * f, cy * f, side * f, 255)
    return np.asarray(img.reduce(f), np.float64) / 255


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels (0 = background) by max-label propagation."""
    h, w = mask.shape
    lab = np.where(mask, np.arange(1, h * w + 1).reshape(h, w), 0)
    while True:
        p = np.pad(lab, 1)
        nb = np.max([p[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        new = np.where(mask, nb, 0)
        if np.array_equal(new, lab):
            return lab
        lab = new


def _to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    x = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"detect: image must be (3, H, W) in [-1, 1], got shape {tuple(x.shape)}")
    return np.clip((x.transpose(1, 2, 0) + 1) / 2, 0, 1)


def detect(image: torch.Tensor | np.ndarray, min_chroma: float = 0.25, min_area: float | None = None) -> list[Detection]:
    """Detect palette shapes in one image (3, H, W) with values in [-1, 1]; largest first."""
    rgb = _to_hwc(image)
    h, w, _ = rgb.shape
    mx, mn = rgb.max(-1), rgb.min(-1)
    chroma = mx - mn
    fg = chroma > min_chroma
    hue = np.zeros_like(mx)
    if fg.any():
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        c = np.where(chroma > 0, chroma, 1)
        hp = np.where(mx == r, ((g - b) / c) % 6, np.where(mx == g, (b - r) / c + 2, (r - g) / c + 4))
        hue = hp / 6
    d = np.abs(hue[..., None] - _HUES)
    colour_idx = np.minimum(d, 1 - d).argmin(-1)
    min_area = max(3.0, 0.004 * h * w) if min_area is None else min_area
    out: list[Detection] = []
    for ci, name in enumerate(COLOUR_NAMES):
        m = fg & (colour_idx == ci)
        if m.sum() < min_area:
            continue
        lab = _components(m)
        for lv in np.unique(lab[lab > 0]):
            comp = lab == lv
            cov = np.where(comp, np.clip(chroma / _CHROMA[ci], 0, 1), 0.0)
            area = cov.sum()
            if area < min_area:
                continue
            ys, xs = np.mgrid[0:h, 0:w] + 0.5
            mxc, myc = (xs * cov).sum() / area, (ys * cov).sum() / area
            best = (-1.0, SHAPES[0], 0.0, 0.0, 0.0)
            for s in SHAPES:
                fill, dx, dy = _template_stats(s)
                side = math.sqrt(area / fill)
                cx, cy = mxc - dx * side, myc - dy * side
                t = _render_coverage(s, cx, cy, side, h, w)
                iou = np.minimum(cov, t).sum() / max(np.maximum(cov, t).sum(), 1e-9)
                if iou > best[0]:
                    best = (iou, s, cx, cy, side)
            iou, s, cx, cy, side = best
            out.append(Detection(s, name, cx / w, cy / h, side / w, float(iou), float(area)))
    return sorted(out, key=lambda d: -d.area)


def _wanted(label) -> list[tuple[str, str]]:
    if label is None:
        return []
    if isinstance(label, (int, np.integer)) or (isinstance(label, torch.Tensor) and label.dim() == 0):
        k = int(label)
        return [(SHAPES[k // len(COLOURS)], COLOUR_NAMES[k % len(COLOURS)])]
    if isinstance(label, Obj):
        return [(label.shape, label.colour)]
    if isinstance(label, tuple) and len(label) == 2 and all(isinstance(v, str) for v in label):
        return [label]
    return [w for item in label for w in _wanted(item)]


def recognised(image, label=None, min_score: float = 0.7) -> bool:
    """With a label (class id, Obj, (shape, colour) or a list of them): every wanted object is
    detected with that shape and colour at score >= min_score. Without: at least one detection
    and every detection scores >= min_score (no unrecognisable blobs)."""
    dets = detect(image)
    want = _wanted(label)
    if not want:
        return bool(dets) and all(d.score >= min_score for d in dets)
    good = [(d.shape, d.colour) for d in dets if d.score >= min_score]
    return all(w in good for w in want)


def recognition_rate(images, labels=None, min_score: float = 0.7) -> float:
    """Fraction of ``images`` ((B, 3, H, W) in [-1, 1]) that ``recognised`` accepts;
    ``labels``: None (unconditional) or one label per image."""
    n = len(images)
    if n == 0:
        raise ValueError("recognition_rate: no images")
    if labels is not None and len(labels) != n:
        raise ValueError(f"recognition_rate: got {n} images but {len(labels)} labels")
    hits = sum(recognised(images[i], None if labels is None else labels[i], min_score) for i in range(n))
    return hits / n
