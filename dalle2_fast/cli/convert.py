"""``dalle2-fast convert SRC DST``: another project's checkpoint, converted once into our format.

    dalle2-fast convert ~/karlo-v1-alpha karlo/            # a diffusers UnCLIPPipeline folder
    dalle2-fast convert ~/karlo-original karlo/ --text-encoder ~/karlo-v1-alpha/text_encoder
    dalle2-fast convert ~/kandinsky-2-2-prior k22-prior/   # a PriorTransformer (or a folder holding prior/)
    dalle2-fast sample "a photo of a corgi" --pipeline karlo/ -n 4

The kind of SRC is recognised from its files (``--kind`` names it explicitly); every kind is one
entry of :data:`SOURCES`: a detector, a loader over the Python API and what it writes (a pipeline
directory for ``sample --pipeline``, or one model's checkpoint directory). Weights are read
weights-only (safetensors, or ``torch.load(weights_only=True)``); DST must not exist or be empty.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dalle2_fast.cli.checks import check_out_dir, ensure_writable

DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class SourceKind:
    """One kind of SRC: ``detect(path) -> bool`` (cheap: file names and small JSON only),
    ``load(path, args) -> model or pipeline`` (anything with ``save_pretrained``), and what it is."""

    detect: Callable[[Path], bool]
    load: Callable[[Path, argparse.Namespace], object]
    what: str


def _index_class(path: Path) -> str | None:
    from dalle2_fast.files import read_json_object

    f = path / "model_index.json"
    return read_json_object(f).get("_class_name") if f.is_file() else None


def _is_prior(path: Path) -> bool:
    from dalle2_fast.files import read_json_object

    if (path / "config.json").is_file():
        return read_json_object(path / "config.json").get("_class_name") == "PriorTransformer"
    return _index_class(path) not in (None, "UnCLIPPipeline") and (path / "prior").is_dir()


def _dtype(args):
    import torch

    return getattr(torch, args.dtype)


def _load_diffusers_unclip(path: Path, args):
    from dalle2_fast.pipeline import UnCLIPPipeline

    return UnCLIPPipeline.from_diffusers(path, dtype=_dtype(args))


def _load_karlo(path: Path, args):
    from dalle2_fast.pipeline import UnCLIPPipeline

    return UnCLIPPipeline.from_karlo(path, dtype=_dtype(args), text_encoder=args.text_encoder)


def _load_prior(path: Path, args):
    from dalle2_fast.models.prior import DiffusionPrior

    return DiffusionPrior.from_diffusers(path, dtype=_dtype(args))


def _is_karlo(path: Path) -> bool:
    from dalle2_fast.interop.karlo import is_karlo_folder

    return is_karlo_folder(path)


SOURCES: dict[str, SourceKind] = {
    "diffusers-unclip": SourceKind(lambda p: _index_class(p) == "UnCLIPPipeline", _load_diffusers_unclip,
                                   "a diffusers UnCLIPPipeline folder (Karlo v1 alpha's layout) -> a pipeline directory"),
    "karlo": SourceKind(_is_karlo, _load_karlo,
                        "Kakao Brain's original Karlo checkpoints (prior/decoder/improved-sr .ckpt + "
                        "ViT-L-14_stats.th; --text-encoder) -> a pipeline directory"),
    "diffusers-prior": SourceKind(_is_prior, _load_prior,
                                  "a diffusers PriorTransformer (Karlo, Kandinsky 2.1/2.2, Stable unCLIP) or a "
                                  "pipeline folder holding prior/ -> a prior checkpoint"),
}


def add_parsers(sub) -> None:
    c = sub.add_parser("convert", help="convert another project's checkpoint into our format, once",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("src", metavar="SRC", help="the checkpoint folder or file to convert")
    c.add_argument("dst", metavar="DST", help="where to write ours (a new or empty directory)")
    c.add_argument("--kind", default="auto", choices=["auto", *SOURCES],
                   help="what SRC is (default: recognised from its files)")
    c.add_argument("--dtype", default="float32", choices=DTYPES, help="the weights' dtype in DST")
    c.add_argument("--text-encoder", default=None, metavar="PATH",
                   help="--kind karlo: a CLIP ViT-L/14 text encoder (a transformers CLIPTextModelWithProjection "
                        "folder, or an open_clip weights file)")
    c.set_defaults(func=run)


def detect(src: Path) -> str:
    """The kind of ``src`` (the first of :data:`SOURCES` whose detector accepts it)."""
    for name, kind in SOURCES.items():
        if kind.detect(src):
            return name
    kinds = "; ".join(f"{n}: {k.what}" for n, k in SOURCES.items())
    raise ValueError(f"SRC: {str(src)!r} is none of the kinds this command converts ({kinds})")


def run(args) -> int:
    src, dst = Path(args.src), Path(args.dst)
    if not src.exists():
        raise FileNotFoundError(f"SRC: no such file or directory {args.src!r}")
    check_out_dir("DST", dst)
    if dst.exists() and any(dst.iterdir()):
        raise ValueError(f"DST: {args.dst!r} exists and is not empty (convert writes a new directory)")
    if args.text_encoder is not None and not Path(args.text_encoder).exists():
        raise FileNotFoundError(f"--text-encoder: no such file or directory {args.text_encoder!r}")
    kind = detect(src) if args.kind == "auto" else args.kind
    if args.text_encoder is not None and kind != "karlo":
        raise ValueError(f"--text-encoder: applies to --kind karlo, not {kind}")
    if not SOURCES[kind].detect(src):
        raise ValueError(f"--kind {kind}: {str(src)!r} is not {SOURCES[kind].what.split(' -> ')[0]}")
    ensure_writable("DST", dst)
    t0 = time.time()
    print(f"reading {src} as {kind} ...", flush=True)
    obj = SOURCES[kind].load(src, args)
    obj.save_pretrained(dst)
    print(f"wrote {dst} ({time.time() - t0:.1f} s)", flush=True)
    return 0


__all__ = ["SOURCES", "SourceKind", "detect", "add_parsers", "run"]
