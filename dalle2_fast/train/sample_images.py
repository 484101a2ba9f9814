"""``dalle2-fast sample CKPT --images-dir DIR -n N --batch-size B``: N images, one PNG each
(``DIR/000000.png`` ...), drawn in batches of B. Batch j (images ``j*B .. j*B+B-1``) uses its own
generator seeded from ``(--seed, j)``, so the files do not depend on how many processes run:
under ``torchrun`` rank r of W draws batches r, r+W, r+2W, ... and writes each image exactly once,
byte-identical to a single-process run with the same --batch-size. Memory stays flat over long
runs: nothing is kept between batches."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dalle2_fast.checkpoint import load_pretrained
from dalle2_fast.data.shapes import NUM_CLASSES, class_name, tokenize
from dalle2_fast.models import GAN, VAE, VQVAE2Generator
from dalle2_fast.train import distributed as D

BATCH_SEED_STRIDE = 1_000_003  # batch j of seed s: generator seed s * stride + j


def batch_generator(seed: int, j: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * BATCH_SEED_STRIDE + j)


def draw(model, idx: range, gen: torch.Generator, label: int | None = None, temperature: float = 1.0):
    """Images for global indices ``idx`` (conditional models: class ``label`` or i % classes)."""
    n = len(idx)
    if isinstance(model, (GAN, VAE)):
        return model.sample(n, generator=gen)
    if isinstance(model, VQVAE2Generator):
        ids = torch.full((n,), label) if label is not None else torch.tensor([i % NUM_CLASSES for i in idx])
        kind = model.config.top.label
        lab = (tokenize([f"a {class_name(int(k))}" for k in ids]) if kind == "caption"
               else ids if kind == "class" else None)
        return model.sample(n, lab, temperature=temperature, generator=gen)
    raise ValueError(f"sample --images-dir: {type(model).__name__} is not a generative model "
                     f"(expected a GAN, VAE or VQ-VAE-2 generator checkpoint)")


def write_png(image: torch.Tensor, path: Path) -> None:
    x = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = x.permute(1, 2, 0).numpy() if x.shape[0] == 3 else x[0].numpy()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # never a half-written PNG under its name
    Image.fromarray(np.ascontiguousarray(arr)).save(tmp, format="PNG")
    os.replace(tmp, path)


@torch.no_grad()
def sample_images(args: argparse.Namespace, on_batch=None) -> Path:
    """Write ``args.n`` PNGs under ``args.images_dir``; ``on_batch(j)`` (optional) is called after
    each batch this rank writes. Returns the directory."""
    from dalle2_fast.train.sample import parse_label
    info = D.setup()
    out = Path(args.images_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = load_pretrained(args.checkpoint).eval()
    label = parse_label(args.label) if args.label else None
    B = args.batch_size
    n_batches = -(-args.n // B)
    for j in range(info.rank, n_batches, info.world):
        idx = range(j * B, min(args.n, (j + 1) * B))
        images = draw(model, idx, batch_generator(args.seed, j), label, args.temperature)
        for i, img in zip(idx, images):
            write_png(img, out / f"{i:06d}.png")
        del images
        if on_batch is not None:
            on_batch(j)
    D.barrier(info)
    if info.is_main:
        print(f"wrote {args.n} images to {out}" + (f" ({info.world} ranks)" if info.enabled else ""))
    D.teardown(info)
    return out
