"""Image grids and loss curves written at the end of training / sampling."""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from dalle2_fast.checkpoint import atomic_write
from dalle2_fast.data.images import make_grid, save_png


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """images (B, C, H, W) in [-1, 1] -> one PNG grid (``nrow`` per row, 1-px white gaps)."""
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"save_grid: expected (B, 1|3, H, W) images, got {tuple(images.shape)}")
    return save_png(make_grid(images.detach().float().cpu(), nrow, pad=1), path, scale=scale)


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
