"""Image files in and out. Images are float tensors in [-1, 1] (the package's convention),
(C, H, W) or (B, C, H, W). Every PNG the package writes for a user records how it was made (seed,
prompt, settings) in a PNG text chunk named ``dalle2_fast`` (JSON), so any single image can be
redrawn alone: ``read_metadata(path)``."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

METADATA_KEY = "dalle2_fast"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W, 3) uint8 (a one-channel image is repeated)."""
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image: expected (1|3, H, W), got {tuple(image.shape)}")
    x = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.repeat(3, 1, 1)
    return np.ascontiguousarray(x.permute(1, 2, 0).numpy())


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 0, pad_value: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) -> (C, rows*(H+pad)+pad, nrow*(W+pad)+pad), row-major; ``nrow`` defaults to
    ceil(sqrt(B))."""
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"make_grid: expected (B>0, C, H, W) images, got {tuple(images.shape)}")
    b, c, h, w = images.shape
    nrow = max(1, min(b, nrow or math.ceil(math.sqrt(b))))
    rows = math.ceil(b / nrow)
    grid = images.new_full((c, rows * (h + pad) + pad, nrow * (w + pad) + pad), pad_value)
    for i in range(b):
        r, q = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, y:y + h, x:x + w] = images[i]
    return grid


def save_png(image: torch.Tensor, path: str | Path, metadata: dict | None = None, scale: int = 1) -> Path:
    """Write (C, H, W) in [-1, 1] as a PNG, atomically, with ``metadata`` as JSON in its text
    chunk; ``scale`` > 1 enlarges by nearest neighbour (small images)."""
    from PIL import Image, PngImagePlugin

    from dalle2_fast.checkpoint import atomic_write

    img = Image.fromarray(to_uint8(image))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    info = PngImagePlugin.PngInfo()
    if metadata:
        info.add_text(METADATA_KEY, json.dumps(metadata, sort_keys=True, default=str))
    path = Path(path)
    atomic_write(path, lambda p: img.save(p, format="PNG", pnginfo=info))
    return path


def png_bytes(image: torch.Tensor, metadata: dict | None = None) -> bytes:
    """The PNG file :func:`save_png` would write, in memory (deterministic for the same input)."""
    import io

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if metadata:
        info.add_text(METADATA_KEY, json.dumps(metadata, sort_keys=True, default=str))
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_metadata(path: str | Path) -> dict:
    """The ``dalle2_fast`` record of a PNG the package wrote ({} when there is none)."""
    from PIL import Image

    with Image.open(path) as img:
        text = getattr(img, "text", {}) or {}
        raw = text.get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def load_image(path: str | Path, size: int | None = None, name: str = "image") -> torch.Tensor:
    """An image file -> (3, H, W) float in [-1, 1] (RGB; alpha dropped); ``size``: centre-cropped to
    a square and resized (bicubic, antialiased) to size x size. Errors name ``name`` and the path."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{name}: no such image file {str(p)!r}")
    try:
        with Image.open(p) as im:
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{name}: {str(p)!r} is not an image Pillow can read ({e})") from None
    if size is not None:
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    arr = np.asarray(im, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div(127.5).sub(1.0)


def check_output_path(name: str, path: str | Path, suffixes=(".png",)) -> Path:
    """An output file path that can be written, with a known extension; checked before any work."""
    import os

    p = Path(path)
    if p.suffix.lower() not in suffixes:
        raise ValueError(f"{name}: expected a file name ending in {' or '.join(suffixes)}, got {str(p)!r}")
    if p.exists() and p.is_dir():
        raise ValueError(f"{name}: expected a file path, got the directory {str(p)!r}")
    probe = p.parent if str(p.parent) else Path(".")
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: cannot write {str(p)!r} ({str(probe)!r} is not a writable directory)")
    if p.exists() and not os.access(p, os.W_OK):
        raise ValueError(f"{name}: {str(p)!r} exists and is not writable")
    return p


__all__ = ["to_uint8", "make_grid", "save_png", "png_bytes", "read_metadata", "load_image", "check_output_path",
           "METADATA_KEY"]
