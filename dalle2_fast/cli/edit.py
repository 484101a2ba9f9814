"""The paper's CLIP-latent manipulations (Ramesh et al. 2022, Sec. 3) from the command line:

    dalle2-fast variations IMAGE [IMAGE...] -n 4 -o variations.png
    dalle2-fast interpolate A.png B.png -n 5 -o interpolation.png
    dalle2-fast text-diff IMAGE --from "a red circle" --to "a blue circle" -n 5 -o edit.png

As the paper does them (``dalle2_fast.manipulations``): variations decode from the DDIM-inverted
latent of the image with DDIM at ``--eta`` (0 reconstructs it; ``--latent noise``: fresh noise);
interpolations slerp the CLIP embeddings over one seeded noise, or also the images' inverted
latents (``--latent inverted``); text diffs decode every frame from the inverted latent, so the
first frame reconstructs the input (``--no-invert``: seeded noise and the to-caption).

Input images are read with Pillow (any size: centre-cropped and resized for CLIP and the decoder).
Each output grid records its inputs, seed and settings in the PNG's ``dalle2_fast`` text chunk.
"""
from __future__ import annotations

import argparse

from dalle2_fast.cli.checks import check_count, check_finite, check_seed_arg


def _common(p, n_default: int, out_default: str) -> None:
    p.add_argument("-n", type=int, default=n_default)
    p.add_argument("-o", "--out", default=out_default)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pipeline", default=None, help="a pipeline directory (default: the weights shipped)")
    p.add_argument("--decoder-steps", type=int, default=None)
    p.add_argument("--upsampler-steps", type=int, default=None)
    p.add_argument("--decoder-guidance", type=float, default=None)
    add_stage_options(p)


def add_stage_options(p) -> None:
    """The decoder's split guidance and the stages' samplers (UnCLIPPipeline OPTIONS)."""
    p.add_argument("--decoder-image-guidance", type=float, default=None,
                   help="guidance scale on the CLIP image embedding (default: --decoder-guidance)")
    p.add_argument("--decoder-text-guidance", type=float, default=None,
                   help="guidance scale on the caption (default: --decoder-guidance); differing from the image "
                        "scale, the decoder runs three-branch guidance")
    for stage in ("decoder", "upsampler"):
        p.add_argument(f"--{stage}-sampler", default=None, choices=["ddpm", "ddim", "dpmpp"],
                       help=f"the {stage}'s sampler: ddpm = ancestral with the learned variance (as the paper "
                            "samples), ddim, dpmpp (default: the stage's own)")


STAGE_OPTIONS = ("decoder_image_guidance", "decoder_text_guidance", "decoder_sampler", "upsampler_sampler")


def stage_options(args) -> dict:
    """The stage options the user gave, checked (flags named in errors)."""
    for k in ("decoder_image_guidance", "decoder_text_guidance"):
        if getattr(args, k) is not None:
            check_finite("--" + k.replace("_", "-"), getattr(args, k), 0, 100)
    return {k: getattr(args, k) for k in STAGE_OPTIONS if getattr(args, k) is not None}


def add_parsers(sub) -> None:
    v = sub.add_parser("variations", help="images that keep the CLIP content of input images",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("images", nargs="+", metavar="IMAGE")
    v.add_argument("--latent", default="inverted", choices=["inverted", "noise"],
                   help="decode from the image's DDIM-inverted latent (default) or from fresh noise")
    v.add_argument("--eta", type=float, default=1.0, help="--latent inverted: DDIM eta (0 reconstructs the image)")
    _common(v, 4, "variations.png")
    v.set_defaults(func=variations)
    i = sub.add_parser("interpolate", help="images between two input images in CLIP space",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("image_a", metavar="A")
    i.add_argument("image_b", metavar="B")
    i.add_argument("--latent", default="noise", choices=["noise", "inverted"],
                   help="one seeded noise for every frame (default), or slerp of the images' inverted latents")
    _common(i, 5, "interpolation.png")
    i.set_defaults(func=interpolate)
    t = sub.add_parser("text-diff", help="edit an image toward a caption (CLIP text diffs)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("image", metavar="IMAGE")
    t.add_argument("--from", dest="from_text", required=True, help="a caption of the image as it is")
    t.add_argument("--to", dest="to_text", required=True, help="a caption of the image as it should become")
    t.add_argument("--max-angle", type=float, default=0.5, help="the last frame's slerp fraction toward the diff")
    t.add_argument("--invert", action=argparse.BooleanOptionalAction, default=True,
                   help="decode from the DDIM inversion of the image (default; --no-invert: seeded noise and the "
                        "to-caption)")
    _common(t, 5, "text_diff.png")
    t.set_defaults(func=text_diff)


def _prepare(args, paths):
    from dalle2_fast.data.images import check_output_path, load_image
    from dalle2_fast.pipeline import UnCLIPPipeline

    check_count("-n", args.n)
    check_seed_arg(args.seed)
    for k in ("decoder_steps", "upsampler_steps"):
        if getattr(args, k) is not None:
            check_count("--" + k.replace("_", "-"), getattr(args, k))
    if args.decoder_guidance is not None:
        check_finite("--decoder-guidance", args.decoder_guidance, 0, 100)
    check_output_path("-o/--out", args.out)
    stage_options(args)
    images = [load_image(p, name=f"IMAGE {p}") for p in paths]
    from pathlib import Path

    from dalle2_fast.cli.checks import ensure_writable

    ensure_writable("-o/--out", Path(args.out).parent if str(Path(args.out).parent) else ".")
    pipe = UnCLIPPipeline.from_pretrained(args.pipeline)
    kw = {k: getattr(args, k) for k in ("decoder_steps", "upsampler_steps", "decoder_guidance")
          if getattr(args, k) is not None}
    return pipe, images, {**kw, **stage_options(args)}


def _save(args, x, meta: dict, nrow: int) -> int:
    from dalle2_fast.data.images import make_grid, save_png

    path = save_png(make_grid(x * 2 - 1, nrow=nrow, pad=1), args.out, meta)
    print(f"wrote {path} ({len(x)} images)")
    return 0


def variations(args) -> int:
    import torch

    check_finite("--eta", args.eta, 0, 1e3)
    pipe, images, kw = _prepare(args, args.images)
    out = [pipe.variations(img, n=args.n, seed=args.seed, latent=args.latent, eta=args.eta, **kw) for img in images]
    return _save(args, torch.cat(out), {"command": "variations", "inputs": args.images, "n": args.n,
                                        "seed": args.seed, "latent": args.latent, "eta": args.eta,
                                        **pipe.settings(**kw)}, nrow=args.n)


def interpolate(args) -> int:
    if args.n < 2:
        raise ValueError(f"-n: interpolate needs at least 2 frames, got {args.n}")
    pipe, (a, b), kw = _prepare(args, [args.image_a, args.image_b])
    x = pipe.interpolate(a, b, n=args.n, seed=args.seed, latent=args.latent, **kw)
    return _save(args, x, {"command": "interpolate", "inputs": [args.image_a, args.image_b], "n": args.n,
                           "seed": args.seed, "latent": args.latent, **pipe.settings(**kw)}, nrow=args.n)


def text_diff(args) -> int:
    check_finite("--max-angle", args.max_angle, 1e-9, 1.0)
    for name, v in (("--from", args.from_text), ("--to", args.to_text)):
        if not v.strip():
            raise ValueError(f"{name}: expected a non-empty caption")
    pipe, (img,), kw = _prepare(args, [args.image])
    x = pipe.text_diff(img, args.from_text, args.to_text, n=args.n, max_angle=args.max_angle, seed=args.seed,
                       invert=args.invert, **kw)
    return _save(args, x, {"command": "text-diff", "input": args.image, "from": args.from_text, "to": args.to_text,
                           "n": args.n, "max_angle": args.max_angle, "invert": args.invert, "seed": args.seed,
                           **pipe.settings(**kw)}, nrow=args.n)
