"""The unCLIP commands, reached as ``dalle2-fast unclip ...`` (or ``python -m dalle2_fast.unclip_cli``):

    dalle2-fast unclip train --out runs/unclip --seed 0 [--scale 1.0] [--max-minutes 30] [--stages ...]
    dalle2-fast unclip train-clip --out runs/clip --seed 0
    dalle2-fast unclip sample "a red circle above a blue square" -n 16 -o samples.png [--pipeline DIR]
    dalle2-fast unclip eval --out DIR [--pipeline DIR]      (caption match of new prompts, zero-shot)
"""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dalle2_fast.unclip_cli", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("train", "train-clip"):
        t = sub.add_parser(name, help="the unCLIP recipe" if name == "train" else "the tiny CLIP alone")
        t.add_argument("--out", required=True, help="run directory")
        t.add_argument("--seed", type=int, default=0)
        t.add_argument("--scale", type=float, default=1.0, help="multiply every stage's steps")
        t.add_argument("--max-minutes", type=float, default=None, help="total wall-clock budget")
        t.add_argument("--upsample-res", type=int, nargs="*", default=None, help="e.g. 64 128")
        t.add_argument("--quiet", action="store_true")
        if name == "train":
            t.add_argument("--stages", nargs="+", default=None,
                           help="train only these stages (clip prior decoder upsampler1 upsampler2); finished "
                                "stages in --out are reused, so parallel processes can split the recipe")
    e = sub.add_parser("eval", help="caption match of new prompts (shapes detector), CLIP zero-shot, a picture")
    e.add_argument("--pipeline", default=None, help="pipeline directory (default: the shipped weights)")
    e.add_argument("--out", required=True, help="writes caption_match.json and prompts.png here")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--n-single", type=int, default=4, help="images per single-object prompt (30 prompts)")
    e.add_argument("--n-two", type=int, default=2, help="images per two-object prompt (30 prompts)")
    s = sub.add_parser("sample", help="images for prompts")
    s.add_argument("prompts", nargs="+")
    s.add_argument("-n", type=int, default=16, help="images per prompt")
    s.add_argument("-o", "--out", default="samples.png")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--pipeline", default=None, help="pipeline directory (default: the shipped weights)")
    s.add_argument("--batch-size", type=int, default=16)
    for k in ("prior-steps", "decoder-steps", "upsampler-steps"):
        s.add_argument(f"--{k}", type=int, default=None)
    for k in ("prior-guidance", "decoder-guidance"):
        s.add_argument(f"--{k}", type=float, default=None)
    return p


def run(args: argparse.Namespace) -> int:
    from dalle2_fast.unclip_train import recipe_from_args, sample_to_file, train_clip_only, train_unclip

    if args.command in ("train", "train-clip"):
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("unclip train: the recipe runs in one process (WORLD_SIZE > 1 given); split it over "
                             "processes with --stages instead (see docs/unclip.md)")
        r = recipe_from_args(args.seed, args.scale, args.max_minutes,
                             tuple(args.upsample_res) if args.upsample_res is not None else None)
        if args.command == "train-clip":
            train_clip_only(r, args.out, progress=not args.quiet)
        else:
            pipe = train_unclip(r, args.out, progress=not args.quiet, stages=args.stages)
            print(f"{args.out}/pipeline" if pipe is not None else
                  f"stages {args.stages} done; rerun without --stages to assemble the pipeline")
        return 0
    if args.command == "eval":
        from dalle2_fast.pipeline import UnCLIPPipeline
        from dalle2_fast.unclip_train import evaluate_pipeline

        evaluate_pipeline(UnCLIPPipeline.from_pretrained(args.pipeline), args.out, args.n_single, args.n_two,
                          args.seed)
        return 0
    kw = {k: getattr(args, k) for k in ("prior_steps", "decoder_steps", "upsampler_steps", "prior_guidance",
                                         "decoder_guidance") if getattr(args, k) is not None}
    path = sample_to_file(args.prompts, n=args.n, out=args.out, seed=args.seed, pipeline=args.pipeline,
                          batch_size=args.batch_size, **kw)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
