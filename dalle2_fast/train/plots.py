"""Image grids and loss curves written at the end of training / sampling."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dalle2_fast.checkpoint import atomic_write


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """images (B, C, H, W) in [-1, 1] -> one PNG grid (``nrow`` per row, 1-px gaps)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"save_grid: expected (B, 1|3, H, W) images, got {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    B, _, H, W = x.shape
    nrow = nrow or math.ceil(math.sqrt(B))
    rows = math.ceil(B / nrow)
    grid = np.full((rows * (H + 1) + 1, nrow * (W + 1) + 1, 3), 255, np.uint8)
    for k in range(B):
        r, c = divmod(k, nrow)
        grid[1 + r * (H + 1) : 1 + r * (H + 1) + H, 1 + c * (W + 1) : 1 + c * (W + 1) + W] = x[k].permute(1, 2, 0).numpy()
    img = Image.fromarray(grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    atomic_write(path, lambda p: img.save(p, format="PNG"))
    return path


def plot_losses(csv_path: str | Path, png_path: str | Path) -> Path:
    """Plot every numeric column of the loss CSV against 'step' (log scale where all > 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(7, 4))
    if rows:
        steps = [int(r["step"]) for r in rows]
        for k in rows[0]:
            if k == "step":
                continue
            vals = [float(r[k]) if r[k] not in ("", None) else float("nan") for r in rows]
            ax.plot(steps, vals, label=k, lw=1)
        vals_all = [float(r[k]) for r in rows for k in r if k != "step" and r[k] not in ("", None)]
        if vals_all and min(vals_all) > 0:
            ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    atomic_write(png_path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return png_path
