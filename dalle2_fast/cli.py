"""``dalle2-fast``: train, sample, bench, info. Thin: parses arguments and calls functions."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _train(args):
    from dalle2_fast.train.loop import train
    from dalle2_fast.train.validate import check_train_args
    check_train_args(args)
    train(args)


def _prompts_or_checkpoint(args) -> list[str] | None:
    """``sample`` takes a checkpoint (an existing path, or anything that looks like one) or
    text prompts for the unCLIP pipeline; returns the prompts, or None (``args.checkpoint`` set)."""
    items = args.checkpoint
    first = items[0]
    if len(items) == 1 and (Path(first).exists() or "/" in first or os.sep in first
                            or first.endswith((".safetensors", ".pt", ".pth", ".json"))):
        args.checkpoint = first
        return None
    return items


def _sample_unclip(args, prompts: list[str]) -> None:
    from dalle2_fast.train.validate import check_positive, check_writable_file
    from dalle2_fast.unclip_train import sample_to_file

    if any(not p.strip() for p in prompts):
        raise ValueError(f"prompts: expected non-empty text, got {prompts!r}")
    for opt, v, default in (("--label", args.label, None), ("--guidance", args.guidance, "none"),
                            ("--classifier", args.classifier, None), ("--images-dir", args.images_dir, None),
                            ("--metrics", args.metrics, None)):
        if v != default:
            raise ValueError(f"{opt}: applies to a trained checkpoint, not to text prompts (unCLIP); got {v!r}")
    n = 16 if args.n is None else args.n
    check_positive("-n", n)
    check_positive("--batch-size", args.batch_size)
    check_positive("--steps", args.steps, allow_none=True)
    check_writable_file("--out", args.out)
    kw = {} if args.steps is None else {"decoder_steps": args.steps}
    if args.scale is not None:
        kw["decoder_guidance"] = args.scale
    print(sample_to_file(prompts, n=n, out=args.out, seed=args.seed, pipeline=args.pipeline,
                         batch_size=min(args.batch_size, 64), progress=True, **kw))


def _sample(args):
    from dalle2_fast.train.validate import check_sample_args
    prompts = _prompts_or_checkpoint(args)
    if prompts is not None:
        return _sample_unclip(args, prompts)
    args.n = 64 if args.n is None else args.n
    args.steps = 50 if args.steps is None else args.steps
    args.scale = 1.0 if args.scale is None else args.scale
    check_sample_args(args)
    if args.images_dir:  # one PNG per image, seeds sharded over torchrun ranks
        from dalle2_fast.train.sample_images import sample_images
        sample_images(args)
        return
    from dalle2_fast.train.sample import sample
    sample(args)


def _info(args):
    from dalle2_fast.info import main as info_main
    return info_main(["--gpu-plan"] if args.gpu_plan else [])


def _bench(args):
    try:
        from dalle2_fast.bench.cli import main as bench_main
    except ImportError as e:
        raise SystemExit(f"dalle2-fast bench: the benchmark harness is not available ({e})") from None
    return bench_main(list(args.bench_args))


def build_parser() -> argparse.ArgumentParser:
    from dalle2_fast.train.tasks import TASKS

    p = argparse.ArgumentParser(prog="dalle2-fast", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on the embedded shapes (or an image folder)")
    t.add_argument("model", choices=sorted(TASKS))
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--resolution", type=int, default=32)
    t.add_argument("--lr", type=float, default=None, help="default: the model's own")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default=None, help="run directory (default runs/<model>)")
    t.add_argument("--resume", action="store_true", help="continue exactly from the last checkpoint in --out")
    t.add_argument("--ckpt-every", type=int, default=250)
    t.add_argument("--keep-last", type=int, default=2)
    t.add_argument("--max-minutes", type=float, default=None, help="stop (and checkpoint) after this long")
    t.add_argument("--data", default="shapes", help="'shapes' or an image folder")
    t.add_argument("--eval-size", type=int, default=256, help="held-out images for the final metrics")
    t.add_argument("--sample-n", type=int, default=64)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config field")
    t.add_argument("--vqvae", default=None, help="vqvae2-prior: the trained vqvae2 checkpoint")
    t.add_argument("--classes", default=None, choices=["shape", "colour", "class", "none"],
                   help="ddpm/iddpm/adm/classifier: what the class label is (default: shape for adm and "
                        "classifier, none for ddpm and iddpm)")
    t.add_argument("--bpd-n", type=int, default=16, help="ddpm/iddpm/adm: held-out images for bits/dim")
    t.add_argument("--sample-steps", type=int, default=50, help="ddpm/iddpm/adm: DDIM steps of the final samples")
    t.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="keep an exponential moving average of the weights with this decay (0: off), "
                        "warmed up as min(DECAY, (1+n)/(10+n)) after n updates; final/ and the "
                        "end-of-training samples and metrics then use the EMA weights and final_raw/ "
                        "holds the raw ones. Default: 0.999 for ddpm/iddpm/adm (the papers' 0.9999 "
                        "averages over ~10k steps, too long for short runs), 0 for the other models")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_train)

    s = sub.add_parser("sample", help="sample a grid from a checkpoint, or text-to-image from the unCLIP pipeline",
                       description="dalle2-fast sample CHECKPOINT [options] | dalle2-fast sample PROMPT... [-n 16] "
                                   "[-o samples.png] [--pipeline DIR] (default: the shipped weights)")
    s.add_argument("checkpoint", nargs="+", metavar="CHECKPOINT_OR_PROMPT",
                   help="a trained run/checkpoint path, or one or more text prompts (unCLIP)")
    s.add_argument("-n", type=int, default=None, help="images (per prompt); default 64, or 16 per prompt")
    s.add_argument("-o", "--out", default="samples.png")
    s.add_argument("--pipeline", default=None, help="prompts: an unCLIP pipeline directory (default: shipped)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--label", default=None, help="conditional models: class id or '<colour> <shape>'")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--sampler", default="ddim", choices=["ddpm", "ddim", "dpmpp"], help="diffusion models")
    s.add_argument("--steps", type=int, default=None,
                   help="diffusion models: sampling steps (respaced; default 50); prompts: decoder steps")
    s.add_argument("--eta", type=float, default=0.0, help="--sampler ddim: 0 deterministic, 1 DDPM-like")
    s.add_argument("--guidance", default="none", choices=["none", "classifier", "cfg"])
    s.add_argument("--scale", type=float, default=None,
                   help="guidance scale (default 1; prompts: the decoder's classifier-free guidance)")
    s.add_argument("--classifier", default=None, help="--guidance classifier: a noisy classifier checkpoint")
    s.add_argument("--metrics", default=None, help="diffusion models: write the detector's recognition rate "
                                                   "of the samples (of their labels) to this JSON file")
    s.add_argument("--images-dir", default=None, help="write one PNG per image here instead of a grid "
                   "(under torchrun: batches sharded over ranks, each image written once)")
    s.add_argument("--batch-size", type=int, default=64, help="with --images-dir: images per batch")
    s.set_defaults(func=_sample)

    i = sub.add_parser("info", help="backends, extension and devices")
    i.add_argument("--gpu-plan", action="store_true", help="the audited GPU launch plan (docs/gpu-readiness.md)")
    i.set_defaults(func=_info)

    b = sub.add_parser("bench", help="kernel benchmarks (arguments go to the harness)")
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=_bench)

    u = sub.add_parser("unclip", help="unCLIP: `unclip train --out DIR`, `unclip sample PROMPT... --pipeline DIR`")
    u.add_argument("unclip_args", nargs=argparse.REMAINDER)
    u.set_defaults(func=_unclip)
    return p


def _unclip(args: argparse.Namespace) -> int:
    from dalle2_fast import unclip_cli

    return unclip_cli.main(args.unclip_args) or 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after 'bench' belongs to the harness, options included
        return _bench(argparse.Namespace(bench_args=argv[1:])) or 0
    if argv[:1] == ["unclip"]:  # likewise for the unCLIP commands
        return _unclip(argparse.Namespace(unclip_args=argv[1:]))
    if argv[:2] in (["train", "unclip"], ["train", "clip"]):  # the unCLIP recipe / its CLIP stage alone
        return _unclip(argparse.Namespace(unclip_args=["train" if argv[1] == "unclip" else "train-clip", *argv[2:]]))
    args = build_parser().parse_args(argv)
    rc = args.func(args)
    return rc if isinstance(rc, int) else 0


def console(argv: list[str] | None = None) -> int:
    """The `dalle2-fast` command: `main`, with bad input reported as one line (exit 2) instead of
    a traceback. Library callers and tests use `main`, which raises."""
    from dalle2_fast.checkpoint import CheckpointError

    try:
        return main(argv)
    except (ValueError, TypeError, FileNotFoundError, CheckpointError) as e:
        print(f"dalle2-fast: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(console())
