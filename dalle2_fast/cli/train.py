"""``dalle2-fast train MODEL``: every model trains through the one loop (``dalle2_fast.train``)
with a recipe from ``dalle2_fast.recipes``.

    dalle2-fast train vqvae2 --max-minutes 6 --out runs/vqvae2          # any suite model
    dalle2-fast train adm --classes shape --steps 2000 --out runs/adm --resume
    dalle2-fast train clip --out runs/clip                              # the tiny shapes CLIP alone
    dalle2-fast train unclip --out runs/unclip --seed 0 [--stages clip prior ...] [--scale 0.1]
    torchrun --nproc-per-node 2 -m dalle2_fast.cli train adm --batch-size 64 --out runs/adm
"""
from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

from dalle2_fast.cli.checks import (check_count, check_out_dir, check_positive, check_seed_arg, ensure_writable,
                                    refuse_unused)

LOOP_OPTS = ("steps", "batch_size", "lr", "resume", "ckpt_every", "keep_last", "eval_size", "sample_n", "ema")
SUITE_OPTS = ("resolution", "data", "set", "vqvae", "classes", "bpd_n", "sample_steps")
UNCLIP_OPTS = ("scale", "stages", "upsample_res", "captions", "tokenizer", "decoder_text_layers", "max_objects")


def models() -> list[str]:
    from dalle2_fast.recipes import TRAINABLE

    return sorted(TRAINABLE)


def add_parsers(sub) -> None:
    t = sub.add_parser("train", help="train a suite model, CLIP, or the unCLIP recipe",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("model", choices=models())
    t.add_argument("--out", default=None, help="run directory (default runs/<model>)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-minutes", type=float, default=None, help="stop (and checkpoint) after this long")
    t.add_argument("--quiet", action="store_true")
    g = t.add_argument_group("the training loop (suite models and clip)")
    g.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000; clip: 1500)")
    g.add_argument("--batch-size", type=int, default=None, help="global batch (default 64; clip: 128)")
    g.add_argument("--lr", type=float, default=None, help="default: the model's own")
    g.add_argument("--resume", action="store_true", default=None, help="continue exactly from the last checkpoint")
    g.add_argument("--ckpt-every", type=int, default=None, help="steps between training checkpoints (250)")
    g.add_argument("--keep-last", type=int, default=None, help="training checkpoints kept (2)")
    g.add_argument("--eval-size", type=int, default=None, help="held-out images for the final metrics (256)")
    g.add_argument("--sample-n", type=int, default=None, help="images in the final samples.png (64)")
    g.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="keep an exponential moving average of the weights with this decay (0: off), warmed up "
                        "as min(DECAY, (1+n)/(10+n)) after n updates; final/ then holds the EMA weights and "
                        "final_raw/ the raw ones. Default: 0.999 for ddpm/iddpm/adm, 0 for the others")
    s = t.add_argument_group("suite models")
    s.add_argument("--resolution", type=int, default=None, help="image size (32)")
    s.add_argument("--data", default=None, help="'shapes' (default) or an image folder")
    s.add_argument("--set", action="append", default=None, metavar="KEY=VALUE", help="a model config field")
    s.add_argument("--vqvae", default=None, help="vqvae2-prior: the trained vqvae2 checkpoint")
    s.add_argument("--classes", default=None, choices=["shape", "colour", "class", "none"],
                   help="ddpm/iddpm/adm/classifier: what the class label is (default: shape for adm and "
                        "classifier, none for ddpm and iddpm)")
    s.add_argument("--bpd-n", type=int, default=None, help="ddpm/iddpm/adm: held-out images for bits/dim (16)")
    s.add_argument("--sample-steps", type=int, default=None, help="ddpm/iddpm/adm: DDIM steps of the samples (50)")
    u = t.add_argument_group("unclip (the recipe's stages train with its own settings)")
    u.add_argument("--scale", type=float, default=None, help="multiply every stage's steps (1.0)")
    u.add_argument("--stages", nargs="+", default=None,
                   help="train only these stages (clip prior decoder upsampler1 upsampler2; optional: inpaint, the "
                        "mask-conditioned decoder fine-tuned from the trained or shipped decoder); finished stages in "
                        "--out are reused, so parallel processes can split the recipe")
    u.add_argument("--upsample-res", type=int, nargs="*", default=None, help="the upsamplers' sizes (64 128)")
    u.add_argument("--captions", choices=["legacy", "grammar"], default=None,
                   help="training captions: 'legacy' (default; the shipped weights') or 'grammar' (many wordings, "
                        "the 'after_noun' family held out; dalle2_fast/data/captions.py)")
    u.add_argument("--tokenizer", choices=["words", "bpe"], default=None,
                   help="the CLIP's tokenizer: 'words' (default) or 'bpe' (open_clip's BPE, compact; any text encodes)")
    u.add_argument("--decoder-text-layers", type=int, default=None, metavar="N",
                   help="give the decoder GLIDE's text transformer with N layers, trained with it (default 0: "
                        "the caption's CLIP tokens through one projection, as the shipped decoder)")
    u.add_argument("--max-objects", type=int, default=None, metavar="N",
                   help="the most objects in a training image (default 2; 3 lets counts of three into training)")
    t.set_defaults(func=run)


def _loop_config(args, out: str, defaults: dict):
    from dalle2_fast.train.loop import TrainConfig

    d = dict(steps=1000, batch_size=64, ckpt_every=250, keep_last=2, eval_size=256, sample_n=64)
    d.update(defaults)
    v = {k: (getattr(args, k) if getattr(args, k) is not None else d.get(k)) for k in d}
    for k in ("steps", "batch_size", "ckpt_every", "eval_size", "sample_n"):
        check_count("--" + k.replace("_", "-"), v[k])
    check_count("--keep-last", v["keep_last"])
    check_positive("--lr", args.lr, allow_none=True)
    check_positive("--max-minutes", args.max_minutes, allow_none=True)
    if args.ema is not None and not (0.0 <= args.ema < 1.0):  # NaN fails this too
        raise ValueError(f"--ema: expected a decay in [0, 1) (0: off), got {args.ema!r}")
    return TrainConfig(out=out, lr=args.lr, seed=args.seed, resume=bool(args.resume), max_minutes=args.max_minutes,
                       ema=args.ema, quiet=args.quiet, **v)


def run(args) -> int:
    check_seed_arg(args.seed)
    out = args.out or f"runs/{args.model}"
    check_out_dir("--out", out)
    if args.model == "unclip":
        return _unclip(args, out)
    refuse_unused(args, UNCLIP_OPTS, f"apply to `train unclip`, not to `train {args.model}`")
    from dalle2_fast.recipes import make_task
    from dalle2_fast.train.loop import train

    if args.model == "clip":
        refuse_unused(args, SUITE_OPTS, "apply to the suite models, not to `train clip` (the shapes CLIP)")
        from dalle2_fast.recipes.unclip import UnCLIPRecipe

        st = UnCLIPRecipe().clip
        cfg = _loop_config(args, out, dict(steps=st.steps, batch_size=st.batch_size, eval_size=16, sample_n=16))
        task = make_task("clip", SimpleNamespace(seed=args.seed))
    else:
        opts = SimpleNamespace(resolution=args.resolution or 32, data=args.data or "shapes", set=args.set or [],
                               vqvae=args.vqvae, classes=args.classes, bpd_n=args.bpd_n or 16,
                               sample_steps=args.sample_steps or 50)
        check_count("--resolution", opts.resolution)
        check_count("--bpd-n", opts.bpd_n)
        check_count("--sample-steps", opts.sample_steps)
        if opts.data != "shapes" and not Path(opts.data).is_dir():
            raise ValueError(f"--data: expected 'shapes' or an image folder, got {opts.data!r} (no such directory)")
        if opts.vqvae is not None and not Path(opts.vqvae).exists():
            raise ValueError(f"--vqvae: no such checkpoint {opts.vqvae!r}")
        cfg = _loop_config(args, out, {})
        task = make_task(args.model, opts)
    ensure_writable("--out", out)
    train(task, cfg)
    return 0


def _unclip(args, out: str) -> int:
    import os

    from dalle2_fast.recipes.unclip import OPTIONAL_STAGES, recipe_from_args, stage_names, train_unclip

    refuse_unused(args, LOOP_OPTS + SUITE_OPTS, "apply to the suite models; `train unclip` trains each stage with "
                  "the recipe's own settings (use --scale, --max-minutes, --stages)")
    scale = 1.0 if args.scale is None else args.scale
    check_positive("--scale", scale)
    check_positive("--max-minutes", args.max_minutes, allow_none=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and (args.stages is None or len(args.stages) != 1):
        raise ValueError("train unclip: under torchrun (WORLD_SIZE > 1) train one stage per call, e.g. "
                         "--stages decoder; the pipeline is assembled by a final call without torchrun")
    layers = 0 if args.decoder_text_layers is None else args.decoder_text_layers
    if isinstance(layers, bool) or not isinstance(layers, int) or not 0 <= layers <= 64:
        raise ValueError(f"--decoder-text-layers: expected an int in [0, 64] (0: no text transformer), got {layers!r}")
    if args.max_objects is not None and (isinstance(args.max_objects, bool) or not 1 <= args.max_objects <= 3):
        raise ValueError(f"--max-objects: expected an int in [1, 3], got {args.max_objects!r}")
    r = recipe_from_args(args.seed, scale, args.max_minutes,
                         tuple(args.upsample_res) if args.upsample_res is not None else None,
                         captions=args.captions or "legacy", tokenizer=args.tokenizer or "words",
                         decoder_text_layers=layers, max_objects=args.max_objects)
    if args.stages is not None:
        bad = [s for s in args.stages if s not in stage_names(r) + list(OPTIONAL_STAGES)]
        if bad:
            raise ValueError(f"--stages: unknown stages {bad}; this recipe has {stage_names(r)} and the optional "
                             f"{list(OPTIONAL_STAGES)}")
    ensure_writable("--out", out)
    pipe = train_unclip(r, out, progress=not args.quiet, stages=args.stages)
    print(f"{out}/pipeline" if pipe is not None else
          f"stages {args.stages} done; rerun without --stages to assemble the pipeline")
    return 0
