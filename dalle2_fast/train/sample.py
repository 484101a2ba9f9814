"""``dalle2-fast sample <checkpoint>``: load any model of the suite from its checkpoint alone and
write a grid. Generative models (GAN, VAE, VQ-VAE-2 generator) draw new images; the
autoencoders (AE, DAE, VQ-VAE, VQ-VAE-2) show held-out shapes next to their reconstructions."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dalle2_fast.checkpoint import load_pretrained
from dalle2_fast.data.shapes import COLOUR_NAMES, SHAPES, ShapesDataset, class_id, tokenize
from dalle2_fast.models import GAN, VAE, VQVAE2Generator
from dalle2_fast.train.plots import save_grid
from dalle2_fast.train.tasks import cycle_labels


def parse_label(text: str) -> int:
    """'red circle' or '7' -> class id."""
    if text.isdigit():
        return int(text)
    words = text.lower().split()
    col = [w for w in words if w in COLOUR_NAMES]
    shp = [w for w in words if w in SHAPES]
    if len(col) != 1 or len(shp) != 1:
        raise ValueError(f"--label: expected a class id or '<colour> <shape>' with colour in {COLOUR_NAMES} "
                         f"and shape in {SHAPES}, got {text!r}")
    return class_id(shp[0], col[0])


def sample(args: argparse.Namespace) -> Path:
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = load_pretrained(args.checkpoint).eval()
    n = args.n
    from dalle2_fast.models.diffusion_model import DiffusionModel
    if isinstance(model, DiffusionModel):
        return _sample_diffusion(model, args)
    if isinstance(model, (GAN, VAE)):
        images = model.sample(n, generator=gen)
    elif isinstance(model, VQVAE2Generator):
        ids = torch.full((n,), parse_label(args.label)) if args.label else cycle_labels(n)
        kind = model.config.top.label
        if kind == "caption":
            from dalle2_fast.data.shapes import class_name
            label = tokenize([f"a {class_name(int(k))}" for k in ids])
        else:
            label = ids if kind == "class" else None
        images = model.sample(n, label, temperature=args.temperature, generator=gen)
    elif hasattr(model, "reconstruct"):
        x = ShapesDataset(model.config.resolution, seed=args.seed).batch(0, max(1, n // 2))["image"]
        images = torch.stack([x, model.reconstruct(x)], 1).flatten(0, 1)
    else:
        raise ValueError(f"sample: don't know how to sample a {type(model).__name__}")
    out = save_grid(images, args.out, scale=2)
    print(f"wrote {out} ({len(images)} images)")
    return out


def _sample_diffusion(model, args: argparse.Namespace) -> Path:
    """The U-Net family: ``--sampler``, ``--steps``, ``--guidance``, ``--scale``, ``--classifier``,
    ``--label`` (default: labels cycle through the classes), ``--seed`` (sample i uses seed
    ``seed * n + i``, so a sample does not depend on the batch it is drawn in)."""
    import json

    from dalle2_fast.checkpoint import atomic_write_text
    from dalle2_fast.models import NoisyClassifier
    from dalle2_fast.models.diffusion_model import kind_for_num_classes, num_labels, parse_label, recognition_rate_of
    from dalle2_fast.train.diffusion_tasks import generate

    n = args.n
    if n < 1:
        raise ValueError(f"-n must be >= 1, got {n}")
    clf = None
    if args.classifier:
        clf = load_pretrained(args.classifier, expected_cls=NoisyClassifier).eval()
    elif args.guidance == "classifier":
        raise ValueError("--guidance classifier needs --classifier CKPT")
    kind = model.config.label_kind
    if kind == "none" and clf is not None:
        kind = kind_for_num_classes(clf.config.num_classes)
    labels = None
    if args.label is not None:
        labels = torch.full((n,), parse_label(kind, args.label), dtype=torch.long)
    elif num_labels(kind):
        labels = torch.arange(n) % num_labels(kind)
    images = generate(model, n, sampler=args.sampler, steps=args.steps, guidance=args.guidance, scale=args.scale,
                      classifier=clf, labels=labels, seeds=[args.seed * n + i for i in range(n)], eta=args.eta)
    out = save_grid(images, args.out, scale=2)
    print(f"wrote {out} ({n} images, {args.sampler} {args.steps} steps, guidance {args.guidance} x{args.scale})")
    if args.metrics:
        rate = recognition_rate_of(images, kind, labels)
        rec = {"checkpoint": str(args.checkpoint), "classifier": args.classifier, "sampler": args.sampler,
               "steps": args.steps, "guidance": args.guidance, "scale": args.scale, "n": n, "label_kind": kind,
               "seed": args.seed, "recognition_rate": rate}
        atomic_write_text(args.metrics, json.dumps(rec, indent=2))
        print(json.dumps(rec))
    return out
