"""Procedural captioned shapes: the embedded default dataset of every training command.

Each image holds 1-3 coloured shapes (no overlap) on a plain or softly textured grey
background, rendered anti-aliased at any resolution 16-256 (drawn with Pillow at a multiple of
the target size, then box-filtered down). Item ``i`` of seed ``s`` is a pure function of
``(s, i)``: any item can be drawn in any order, the dataset is infinite (``size=None``) or
fixed-size, and a resumed run continues exactly from a data position.

Each item: ``{"image": (3, R, R) float32 in [-1, 1], "caption": str, "objects": [Obj...],
"label": int}`` where ``label`` = class id of the first object (shape x colour).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star")
# Saturated palette, hues >= 30 degrees apart, so the detector segments them from the grey
# backgrounds (saturation < 0.2) by colour alone.
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 30),
    "green": (40, 180, 60),
    "blue": (40, 90, 230),
    "purple": (160, 50, 210),
}
COLOUR_NAMES = tuple(COLOURS)
SIZES = {"small": (0.22, 0.28), "large": (0.32, 0.40)}  # side as a fraction of the image
NUM_CLASSES = len(SHAPES) * len(COLOURS)
_SS = 128  # draw at >= this many pixels per side (>= 2x) before box-filtering down


@dataclass(frozen=True)
class Obj:
    """One drawn shape: its class, colour, size word, centre and side (fractions of the image)."""
    shape: str
    colour: str
    size: str
    cx: float
    cy: float
    side: float

    @property
    def position(self) -> str:
        h = "left" if self.cx < 0.38 else "right" if self.cx > 0.62 else ""
        v = "top" if self.cy < 0.38 else "bottom" if self.cy > 0.62 else ""
        return f"{v} {h}".strip() or "centre"

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"

    @property
    def label(self) -> int:
        return class_id(self.shape, self.colour)


def class_id(shape: str, colour: str) -> int:
    return SHAPES.index(shape) * len(COLOURS) + COLOUR_NAMES.index(colour)


def class_name(label: int) -> str:
    return f"{COLOUR_NAMES[label % len(COLOURS)]} {SHAPES[label // len(COLOURS)]}"


def _where(o: Obj) -> str:
    p = o.position
    return "in the centre" if p == "centre" else (f"on the {p}" if p in ("left", "right") else f"at the {p}")


def caption_for(objs: list[Obj]) -> str:
    """'a small red circle at the top left', 'a large blue square above a small green star', ..."""
    if len(objs) == 1:
        return f"{objs[0].phrase} {_where(objs[0])}"
    if len(objs) == 2:
        a, b = objs
        rel = "above" if (b.cy - a.cy) > abs(b.cx - a.cx) else "next to"
        return f"{a.phrase} {rel} {b.phrase}"
    parts = [f"{o.phrase} {_where(o)}" for o in objs]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def shape_polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]] | None:
    """Vertices of ``shape`` inscribed in the axis-aligned square (cx, cy, side); None for circle."""
    r = side / 2
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":  # apex up, filling the square's width and height
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "star":  # five points, inner radius 0.45 R, centred so it spans the square
        R, pts = r * 1.05, []
        oy = cy + r * 0.1
        for k in range(10):
            rad = R if k % 2 == 0 else 0.45 * R
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), oy + rad * math.sin(a)))
        return pts
    if shape == "circle":
        return None
    raise ValueError(f"shape_polygon: unknown shape {shape!r}, expected one of {SHAPES}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, side: float, fill) -> None:
    pts = shape_polygon(shape, cx, cy, side)
    if pts is None:
        r = side / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(pts, fill=fill)


def _background(rng: np.random.Generator, n: int, textured: bool) -> np.ndarray:
    """(n, n, 3) uint8 grey-ish background: plain, or a soft gradient + low-frequency stripes."""
    base = rng.uniform(60, 200)
    tint = rng.uniform(-12, 12, size=3)
    img = np.full((n, n, 3), base, np.float32) + tint
    if textured:
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
        ang = rng.uniform(0, math.pi)
        freq = rng.uniform(2, 5)
        stripes = np.sin(2 * math.pi * freq * (xx * math.cos(ang) + yy * math.sin(ang)))
        grad = (xx - 0.5) * rng.uniform(-40, 40) + (yy - 0.5) * rng.uniform(-40, 40)
        img += (stripes * rng.uniform(8, 20) + grad)[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


class ShapesDataset(torch.utils.data.Dataset):
    """Captioned shapes. Args:
    resolution: 16..256.  seed: item i is a function of (seed, i).
    size: number of items, or None for an infinite dataset (index with any int >= 0).
    min_objects / max_objects: 1..3 shapes per image.
    background: 'plain', 'textured' or 'mixed' (half each).
    captions: a :class:`~dalle2_fast.data.captions.CaptionConfig`; None or mode 'legacy': the
    original layouts and captions, exactly; 'grammar': scenes and wordings of the caption grammar
    (items then also carry ``caption_info``: kind, family, relation).
    """

    def __init__(self, resolution: int = 32, seed: int = 0, size: int | None = None,
                 min_objects: int = 1, max_objects: int = 3, background: str = "mixed", captions=None):
        if not 16 <= resolution <= 256:
            raise ValueError(f"ShapesDataset: resolution must be in 16..256, got {resolution}")
        if not 1 <= min_objects <= max_objects <= 3:
            raise ValueError(f"ShapesDataset: need 1 <= min_objects <= max_objects <= 3, got {min_objects}, {max_objects}")
        if background not in ("plain", "textured", "mixed"):
            raise ValueError(f"ShapesDataset: background must be 'plain', 'textured' or 'mixed', got {background!r}")
        if size is not None and size < 1:
            raise ValueError(f"ShapesDataset: size must be >= 1 or None (infinite), got {size}")
        self.resolution, self.seed, self.size = resolution, seed, size
        self.min_objects, self.max_objects, self.background = min_objects, max_objects, background
        self.grammar = captions is not None and captions.mode == "grammar"
        self.captions = captions

    def __len__(self) -> int:
        if self.size is None:
            raise TypeError("ShapesDataset(size=None) is infinite; use .batch(start, n) or iterate")
        return self.size

    def _layout(self, rng: np.random.Generator) -> list[Obj]:
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        while True:  # rejection-sample non-overlapping squares (with a margin); shrink n if stuck
            objs: list[Obj] = []
            for _ in range(200):
                size = "small" if rng.random() < 0.5 else "large"
                side = rng.uniform(*SIZES[size])
                cx, cy = rng.uniform(side / 2 + 0.03, 1 - side / 2 - 0.03, size=2)
                if all(max(abs(cx - o.cx), abs(cy - o.cy)) > (side + o.side) / 2 + 0.04 for o in objs):
                    objs.append(Obj(SHAPES[rng.integers(len(SHAPES))], COLOUR_NAMES[rng.integers(len(COLOURS))],
                                    size, float(cx), float(cy), float(side)))
                    if len(objs) == n:
                        return objs
            n -= 1

    def render(self, objs: list[Obj], rng: np.random.Generator, textured: bool) -> np.ndarray:
        """Draw ``objs`` -> (R, R, 3) uint8, anti-aliased by supersampling."""
        R = self.resolution
        f = max(2, math.ceil(_SS / R))
        big = R * f
        img = Image.fromarray(_background(rng, big, textured))
        draw = ImageDraw.Draw(img)
        for o in objs:
            draw_shape(draw, o.shape, o.cx * big, o.cy * big, o.side * big, COLOURS[o.colour])
        return np.asarray(img.reduce(f))  # box filter: exact area coverage

    def _scene(self, i: int, rng: np.random.Generator) -> tuple[list[Obj], str, dict | None]:
        """Item i's objects, caption and (grammar mode) caption info; legacy draws from ``rng``,
        the grammar from its own stream of (seed, i)."""
        if i < 0 or (self.size is not None and i >= self.size):
            raise IndexError(f"ShapesDataset: index {i} out of range (size={self.size})")
        if not self.grammar:
            objs = self._layout(rng)
            return objs, caption_for(objs), None
        from dalle2_fast.data.captions import scene_caption

        return scene_caption(np.random.default_rng([self.seed, i, 1]), self.captions, self.max_objects)

    def caption(self, i: int) -> str:
        """Item i's caption alone (nothing rendered)."""
        return self._scene(i, np.random.default_rng([self.seed, i]))[1]

    def item(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, i])
        objs, caption, info = self._scene(i, rng)
        textured = self.background == "textured" or (self.background == "mixed" and rng.random() < 0.5)
        arr = self.render(objs, rng, textured)
        img = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)
        out = {"image": img, "caption": caption, "objects": objs, "label": objs[0].label}
        if info is not None:
            out["caption_info"] = info
        return out

    __getitem__ = item

    def batch(self, start: int, n: int) -> dict:
        """Items start..start+n-1 (wrapping for a fixed size) collated: image (n,3,R,R), label (n,),
        caption list, objects list."""
        idx = [(start + k) % self.size if self.size else start + k for k in range(n)]
        items = [self.item(i) for i in idx]
        return {
            "image": torch.stack([it["image"] for it in items]),
            "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
            "caption": [it["caption"] for it in items],
            "objects": [it["objects"] for it in items],
            **({"caption_info": [it["caption_info"] for it in items]} if self.grammar else {}),
        }

    def __iter__(self):
        i = 0
        while self.size is None or i < self.size:
            yield self.item(i)
            i += 1


def objects_to_dicts(objs: list[Obj]) -> list[dict]:
    return [dict(asdict(o), position=o.position) for o in objs]


# Caption vocabulary for caption-conditioned models (bag of words; 0 = padding / unknown).
VOCAB = ("<pad>", "a", "small", "large", *COLOUR_NAMES, *SHAPES, "above", "next", "to", "and",
         "on", "at", "in", "the", "left", "right", "top", "bottom", "centre")
_WORD = {w: k for k, w in enumerate(VOCAB)}


def tokenize(captions: list[str], length: int = 24) -> torch.Tensor:
    """Captions -> (B, length) int64 word ids over ``VOCAB`` (unknown words -> 0, zero-padded)."""
    out = torch.zeros(len(captions), length, dtype=torch.long)
    for b, c in enumerate(captions):
        ids = [_WORD.get(w, 0) for w in c.replace(",", " ").lower().split()][:length]
        out[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out
