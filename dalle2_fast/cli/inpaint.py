"""Inpainting and outpainting from the command line (``UnCLIPPipeline.inpaint`` / ``outpaint``):

    dalle2-fast inpaint IMAGE --mask MASK.png "a blue star" -n 4 -o out.png
    dalle2-fast inpaint IMAGE --box 8,8,40,40 "a blue star" -n 4 -o out.png
    dalle2-fast inpaint IMAGE --outpaint right:32 "a red circle" -o wider.png

A mask is a PNG of the image's size: white = fill, black = keep (read as grey levels and
thresholded at 50%). ``--box x0,y0,x1,y1`` fills a rectangle (pixels of the input image, x1 / y1
exclusive). ``--outpaint SIDE:PIXELS`` moves the image away from SIDE (left, right, up, down) and
fills the new strip. ``--method repaint`` (training-free: the known pixels kept inside every
fused sampling step, the decoder resampling with ``--jumps LENGTH,COUNT``, or ``--jumps none``);
``--mask-reduce`` (area by default), ``--image-mix`` and ``--no-harmonize`` tune the repaint
method (``UnCLIPPipeline.inpaint``). ``--method conditioned`` needs a mask-conditioned decoder in the pipeline. The output grid
records the inputs, prompt, seed and settings in its PNG metadata.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dalle2_fast.cli.checks import check_count, check_finite, check_prompts, check_seed_arg, ensure_writable


def add_parsers(sub) -> None:
    p = sub.add_parser("inpaint", help="fill a masked region of an image from a caption (or extend it)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("prompt", metavar="PROMPT")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", default=None, help="PNG of the image's size, white = fill")
    where.add_argument("--box", default=None, help="x0,y0,x1,y1: fill this rectangle")
    where.add_argument("--outpaint", default=None, help="SIDE:PIXELS, SIDE one of left/right/up/down")
    p.add_argument("--method", default="repaint", help="repaint (default) or conditioned")
    p.add_argument("--jumps", default="5,5", help="RePaint's jump length and count, 'L,N', or 'none' (default 5,5)")
    p.add_argument("--mask-reduce", default=None, help="how the hole is reduced for the lower-resolution stages: "
                   "max, area or min (default: the pipeline's, area)")
    p.add_argument("--image-mix", type=float, default=None,
                   help="slerp the prior's z_i this far (0-1) toward the CLIP embedding of the image's context (default 0)")
    p.add_argument("--no-harmonize", dest="harmonize", action="store_false",
                   help="skip the final Poisson pass over the hole (on by default; kept pixels unchanged either way)")
    p.add_argument("-n", type=int, default=4)
    p.add_argument("-o", "--out", default="inpaint.png")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pipeline", default=None, help="a pipeline directory (default: the weights shipped)")
    for k in ("prior_steps", "decoder_steps", "upsampler_steps"):
        p.add_argument("--" + k.replace("_", "-"), type=int, default=None)
    for k in ("prior_guidance", "decoder_guidance"):
        p.add_argument("--" + k.replace("_", "-"), type=float, default=None)
    p.set_defaults(func=inpaint)


def _ints(flag: str, text: str, n: int) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != n:
        raise ValueError(f"{flag}: expected {n} comma-separated integers, got {text!r}")
    return vals


def parse_jumps(text: str):
    if text.strip().lower() == "none":
        return None
    jl, jn = _ints("--jumps", text, 2)
    check_count("--jumps (length)", jl)
    check_count("--jumps (count)", jn)
    return jl, jn


def load_mask(path: str, size: tuple[int, int]):
    """A PNG mask -> (H, W) float of {0, 1}, 1 = fill (white), thresholded at 50% grey."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--mask: no such image file {str(p)!r}")
    try:
        with Image.open(p) as im:
            arr = np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"--mask: {str(p)!r} is not an image Pillow can read ({e})") from None
    if arr.shape != tuple(size):
        raise ValueError(f"--mask: the mask is {arr.shape[1]}x{arr.shape[0]} but IMAGE is {size[1]}x{size[0]} "
                         "(width x height); draw it at the image's size")
    return torch.from_numpy(arr >= 128).float()


def inpaint(args) -> int:
    from dalle2_fast.data.images import check_output_path, load_image, make_grid, save_png
    from dalle2_fast.inpainting import DIRECTIONS, METHODS, box_mask

    check_count("-n", args.n)
    check_seed_arg(args.seed)
    check_prompts([args.prompt])
    if args.method not in METHODS:
        raise ValueError(f"--method: expected one of {', '.join(METHODS)}, got {args.method!r}")
    jumps = parse_jumps(args.jumps)
    from dalle2_fast.inpainting import EDIT_DEFAULTS, MASK_REDUCE

    edit = dict(EDIT_DEFAULTS, harmonize=bool(args.harmonize))
    edit.pop("jumps")
    if args.mask_reduce is not None:
        if args.mask_reduce not in MASK_REDUCE:
            raise ValueError(f"--mask-reduce: expected one of {', '.join(MASK_REDUCE)}, got {args.mask_reduce!r}")
        edit["mask_reduce"] = args.mask_reduce
    if args.image_mix is not None:
        check_finite("--image-mix", args.image_mix, 0, 1)
        edit["image_mix"] = args.image_mix
    opts = {k: getattr(args, k) for k in ("prior_steps", "decoder_steps", "upsampler_steps", "prior_guidance",
                                          "decoder_guidance") if getattr(args, k) is not None}
    for k, v in opts.items():
        if k.endswith("_steps"):
            check_count("--" + k.replace("_", "-"), v)
        else:
            check_finite("--" + k.replace("_", "-"), v, 0, 100)
    check_output_path("-o/--out", args.out)
    image = load_image(args.image, name=f"IMAGE {args.image}")
    hw = tuple(image.shape[-2:])
    side = pixels = fill = None
    if args.mask is not None:
        fill = load_mask(args.mask, hw)
    elif args.box is not None:
        fill = box_mask(_ints("--box", args.box, 4), hw)
    else:
        side, _, px = args.outpaint.partition(":")
        if side not in DIRECTIONS or not px.strip().isdigit():
            raise ValueError(f"--outpaint: expected SIDE:PIXELS with SIDE one of {', '.join(DIRECTIONS)}, "
                             f"got {args.outpaint!r}")
        pixels = int(px)
    ensure_writable("-o/--out", Path(args.out).parent if str(Path(args.out).parent) else ".")
    from dalle2_fast.pipeline import UnCLIPPipeline

    pipe = UnCLIPPipeline.from_pretrained(args.pipeline)
    kw = dict(n=args.n, seed=args.seed, method=args.method, jumps=jumps, progress=True, **edit, **opts)
    if side is not None:
        if not 1 <= pixels < pipe.image_size:
            raise ValueError(f"--outpaint: PIXELS must be in [1, {pipe.image_size - 1}] (the output is "
                             f"{pipe.image_size} wide), got {pixels}")
        x = pipe.outpaint(image, side, pixels, args.prompt, **kw)
    else:
        x = pipe.inpaint(image, fill, args.prompt, **kw)
    meta = {"command": "inpaint", "input": args.image, "mask": args.mask, "box": args.box, "outpaint": args.outpaint,
            "prompt": args.prompt, "n": args.n, "seed": args.seed, "method": args.method,
            "jumps": list(jumps) if jumps else None, **edit, **pipe.settings(**opts)}
    path = save_png(make_grid(x * 2 - 1, nrow=args.n, pad=1), args.out, meta)
    print(f"wrote {path} ({len(x)} images)")
    return 0
