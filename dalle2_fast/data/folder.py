"""Image-folder dataset for real data: every image under a directory (recursively), centre-
cropped and resized to a square resolution, with an optional caption from ``<stem>.txt``
beside it (empty string when absent)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageFolderDataset(torch.utils.data.Dataset):
    """Items: ``{"image": (3, R, R) float32 in [-1, 1], "caption": str, "label": 0, "path": str}``."""

    def __init__(self, root: str | Path, resolution: int = 64):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolderDataset: root {str(self.root)!r} is not a directory")
        self.paths = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not self.paths:
            raise ValueError(f"ImageFolderDataset: no images ({', '.join(IMAGE_EXTS)}) under {str(self.root)!r}")
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        p = self.paths[i]
        img = Image.open(p).convert("RGB")
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        img = img.resize((self.resolution, self.resolution), Image.Resampling.BICUBIC, reducing_gap=2.0)
        x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)
        txt = p.with_suffix(".txt")
        caption = txt.read_text().strip() if txt.exists() else ""
        return {"image": x, "caption": caption, "label": 0, "path": str(p)}

    def batch(self, start: int, n: int) -> dict:
        items = [self[(start + k) % len(self)] for k in range(n)]
        return {"image": torch.stack([it["image"] for it in items]),
                "label": torch.zeros(n, dtype=torch.long),
                "caption": [it["caption"] for it in items], "objects": [None] * n}
