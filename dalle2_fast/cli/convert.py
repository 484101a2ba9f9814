"""``dalle2-fast convert SRC DST``: other projects' weights into our format, once.

Source kinds are a table (:data:`KINDS`): each says how to recognise its files and how to
convert them; ``--kind`` picks one when SRC does not say. Kinds here:

    openai-clip       OpenAI CLIP: the TorchScript archive OpenAI distributes (ViT-L-14.pt ...) or a
                      state dict of it -> our CLIP directory (an open_clip local-dir, QuickGELU)
    laion-prior       a DALLE2-pytorch / LAION diffusion prior: best.pth + prior_config.json (beside
                      it, or --config) -> our prior checkpoint (LaionDiffusionPrior)
    diffusers-unclip  a diffusers UnCLIPPipeline folder (Karlo v1 alpha's layout) -> a pipeline directory
    karlo             Kakao Brain's original Karlo files (prior / decoder / improved-sr .ckpt +
                      ViT-L-14_stats.th; --text-encoder) -> a pipeline directory
    diffusers-prior   a diffusers PriorTransformer (Karlo, Kandinsky 2.1 / 2.2, Stable unCLIP), or a
                      pipeline folder holding prior/ -> our prior checkpoint (DiffusionPrior)

    dalle2-fast convert ~/karlo-v1-alpha karlo/ && dalle2-fast sample "a corgi" --pipeline karlo/

DST is written whole or not at all (a temporary directory renamed at the end) and must not exist
yet (or be an empty directory).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Kind:
    help: str
    detect: Callable[[Path], bool]
    convert: Callable[[object], object]  # args -> a model with save_pretrained


def _is_openai_clip(src: Path) -> bool:
    from dalle2_fast.interop.openai_clip import is_torchscript_archive

    return src.is_file() and is_torchscript_archive(src)


def _openai_clip(args):
    import torch

    from dalle2_fast.interop.openai_clip import load_openai_clip

    return load_openai_clip(args.src, model_name=args.model_name, dtype=getattr(torch, args.dtype))


def _is_laion_prior(src: Path) -> bool:
    return src.is_file() and src.suffix in (".pth", ".pt", ".ckpt") and (src.parent / "prior_config.json").is_file()


def _laion_prior(args):
    import torch

    from dalle2_fast.interop.dalle2_pytorch import load_laion_prior

    model = load_laion_prior(args.src, args.config, which=args.which, version=args.version)
    return model.to(getattr(torch, args.dtype))


def _index_class(src: Path) -> str | None:
    from dalle2_fast.files import read_json_object

    f = src / "model_index.json"
    return read_json_object(f).get("_class_name") if src.is_dir() and f.is_file() else None


def _is_diffusers_unclip(src: Path) -> bool:
    return _index_class(src) == "UnCLIPPipeline"


def _diffusers_unclip(args):
    import torch

    from dalle2_fast.pipeline import UnCLIPPipeline

    return UnCLIPPipeline.from_diffusers(args.src, dtype=getattr(torch, args.dtype))


def _is_karlo(src: Path) -> bool:
    from dalle2_fast.interop.karlo import is_karlo_folder

    return is_karlo_folder(src)


def _karlo(args):
    import torch

    from dalle2_fast.pipeline import UnCLIPPipeline

    return UnCLIPPipeline.from_karlo(args.src, dtype=getattr(torch, args.dtype), text_encoder=args.text_encoder)


def _is_diffusers_prior(src: Path) -> bool:
    from dalle2_fast.files import read_json_object

    if not src.is_dir():
        return False
    if (src / "config.json").is_file():
        return read_json_object(src / "config.json").get("_class_name") == "PriorTransformer"
    return _index_class(src) not in (None, "UnCLIPPipeline") and (src / "prior").is_dir()


def _diffusers_prior(args):
    import torch

    from dalle2_fast.models.prior import DiffusionPrior

    return DiffusionPrior.from_diffusers(args.src, dtype=getattr(torch, args.dtype))


KINDS: dict[str, Kind] = {
    "openai-clip": Kind("OpenAI CLIP (TorchScript archive or state dict) -> our CLIP directory", _is_openai_clip,
                        _openai_clip),
    "laion-prior": Kind("DALLE2-pytorch / LAION prior (best.pth + prior_config.json) -> our prior checkpoint",
                        _is_laion_prior, _laion_prior),
    "diffusers-unclip": Kind("a diffusers UnCLIPPipeline folder (Karlo v1 alpha) -> a pipeline directory",
                             _is_diffusers_unclip, _diffusers_unclip),
    "karlo": Kind("Kakao Brain's original Karlo checkpoints (+ --text-encoder) -> a pipeline directory", _is_karlo,
                  _karlo),
    "diffusers-prior": Kind("a diffusers PriorTransformer or a folder holding prior/ (Kandinsky, Stable unCLIP) "
                            "-> our prior checkpoint", _is_diffusers_prior, _diffusers_prior),
}
_FOLDER_KINDS = ("diffusers-unclip", "karlo", "diffusers-prior")


def _check(args) -> str:
    """Every flag checked before anything loads; returns the kind."""
    src, dst = Path(args.src), Path(args.dst)
    if not src.exists():
        raise FileNotFoundError(f"SRC: {src} does not exist (weights are never downloaded)")
    if dst.exists() and not (dst.is_dir() and not any(dst.iterdir())):
        raise ValueError(f"DST: {dst} already exists and is not an empty directory; choose a new path")
    if args.config is not None and not Path(args.config).is_file():
        raise FileNotFoundError(f"--config: {args.config} is not a file")
    if args.text_encoder is not None and not Path(args.text_encoder).exists():
        raise FileNotFoundError(f"--text-encoder: {args.text_encoder} does not exist")
    if args.which not in (None, "ema", "model"):
        raise ValueError(f"--which: expected 'ema' or 'model', got {args.which!r}")
    if args.kind is not None:
        if args.kind not in KINDS:
            raise ValueError(f"--kind: expected one of {sorted(KINDS)}, got {args.kind!r}")
        kind = args.kind
    else:
        found = [k for k, kd in KINDS.items() if kd.detect(src) or (k == "laion-prior" and args.config is not None)]
        if len(found) != 1:
            raise ValueError(f"SRC: cannot tell what {src} is ({'several kinds fit: ' + str(found) if found else 'no kind fits'}); "
                             f"pass --kind, one of: " + "; ".join(f"{k} ({kd.help})" for k, kd in KINDS.items()))
        kind = found[0]
    if kind in _FOLDER_KINDS and not KINDS[kind].detect(src):
        raise ValueError(f"--kind {kind}: {src} is not {KINDS[kind].help.split(' -> ')[0]}")
    only = {"laion-prior": ("config", "which", "version"), "openai-clip": ("model_name",), "karlo": ("text_encoder",)}
    for k, flags in only.items():
        for f in flags:
            if k != kind and getattr(args, f) is not None:
                raise ValueError(f"--{f.replace('_', '-')}: applies to --kind {k}, not {kind}")
    return kind


def run(args) -> int:
    kind = _check(args)
    model = KINDS[kind].convert(args)
    dst = Path(args.dst)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        (tmp / "converted_from.json").write_text(json.dumps({"kind": kind, "source": str(Path(args.src).resolve())}))
        if dst.exists():
            dst.rmdir()
        os.replace(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{kind}: {args.src} -> {dst}")
    return 0


def add_parsers(sub) -> None:
    p = sub.add_parser("convert", help="other projects' weights (Karlo, diffusers priors, OpenAI CLIP, LAION prior, "
                                       "...) into our format", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="the file or folder to convert")
    p.add_argument("dst", metavar="DST", help="the directory to write (must not exist)")
    p.add_argument("--kind", default=None, help=f"what SRC is: {', '.join(KINDS)} (default: recognised from SRC)")
    p.add_argument("--dtype", default="float32", choices=_DTYPES, help="weights dtype to write")
    p.add_argument("--config", default=None, help="laion-prior: prior_config.json (default: beside SRC)")
    p.add_argument("--which", default=None, help="laion-prior: 'ema' (default when present) or 'model' weights")
    p.add_argument("--version", default=None, help="laion-prior: the DALLE2-pytorch release that trained it, "
                                                   "when the file does not say")
    p.add_argument("--model-name", dest="model_name", default=None,
                   help="openai-clip: open_clip architecture to check against, e.g. ViT-L-14")
    p.add_argument("--text-encoder", dest="text_encoder", default=None,
                   help="karlo: a CLIP ViT-L/14 text encoder (a transformers CLIPTextModelWithProjection folder, "
                        "OpenAI's ViT-L-14.pt or a state dict of it)")
    p.set_defaults(func=run)


__all__ = ["KINDS", "Kind", "run", "add_parsers"]
