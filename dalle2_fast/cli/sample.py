"""``dalle2-fast sample``: text to image with an unCLIP pipeline, or images from a trained suite
checkpoint. Prompts and checkpoints are separate arguments (nothing is guessed from the text).

    dalle2-fast sample "a red circle above a blue square" -n 16 -o samples.png [--pipeline DIR]
    dalle2-fast sample --checkpoint runs/adm --sampler dpmpp --steps 20 --label circle -n 16 -o grid.png
    dalle2-fast sample "a green triangle" -n 1000 --images-dir out/   # one PNG per image, a resumable job
    dalle2-fast sample --prompts-file prompts.jsonl --images-dir out/  # a prompt file of any length
    torchrun --nproc-per-node 2 -m dalle2_fast.cli sample --checkpoint runs/gan -n 256 --images-dir out/

Image k of a call with ``--seed s`` is the image of seed s + k (prompts-major for several
prompts), whatever ``--batch-size`` or the number of processes; every PNG records its seed(s),
prompt and settings in a ``dalle2_fast`` text chunk. A grid (``-o``) holds every image in memory
and is limited to ``--max-grid`` images; ``--images-dir`` runs a batch job (``dalle2_fast.jobs``):
any number of images streamed to disk, sharded over torchrun ranks, with ``job.json`` and a
``manifest.jsonl``; killed, the same command continues where it stopped, with the same bytes.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from dalle2_fast.cli.checks import (check_count, check_finite, check_out_dir, check_prompts, check_seed_arg,
                                    ensure_writable, refuse_unused)

PROMPT_OPTS = ("pipeline", "prior_steps", "decoder_steps", "upsampler_steps", "prior_guidance", "decoder_guidance")
CKPT_OPTS = ("sampler", "steps", "eta", "guidance", "scale", "classifier", "label", "temperature", "metrics")
MAX_GRID = 1024


def add_parsers(sub) -> None:
    s = sub.add_parser("sample", help="text to image (PROMPT...), or a trained suite checkpoint (--checkpoint)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("prompts", nargs="*", metavar="PROMPT", help="text prompts for the unCLIP pipeline")
    s.add_argument("--checkpoint", default=None, metavar="RUN_OR_CKPT",
                   help="a trained suite model: a checkpoint, or a run directory (its final/)")
    s.add_argument("-n", type=int, default=None, help="images per prompt (default 16), or images (default 64)")
    s.add_argument("-o", "--out", default=None, help="the grid PNG (default samples.png)")
    s.add_argument("--images-dir", default=None, help="a batch job: one PNG per image here with a manifest, "
                                                      "resumable (under torchrun: sharded over ranks)")
    s.add_argument("--prompts-file", default=None, metavar="FILE",
                   help="prompts for a batch job, one a line (or *.jsonl: {\"prompt\", \"n\", \"seed\", steps, "
                        "guidance} a line); needs --images-dir; -n is the images per line (default 1)")
    s.add_argument("--seed", type=int, default=0, help="image k uses seed SEED + k")
    s.add_argument("--batch-size", type=int, default=16, help="images per forward pass (does not change images)")
    s.add_argument("--max-grid", type=int, default=MAX_GRID, help="largest grid -o may hold in memory")
    g = s.add_argument_group("prompts (the unCLIP pipeline)")
    g.add_argument("--pipeline", default=None, help="a pipeline directory: ours (unclip.json), a diffusers "
                   "UnCLIPPipeline folder (model_index.json, e.g. Karlo v1 alpha) or Karlo's original checkpoints "
                   "(default: the weights shipped)")
    for k in ("prior-steps", "decoder-steps", "upsampler-steps"):
        g.add_argument(f"--{k}", type=int, default=None)
    for k in ("prior-guidance", "decoder-guidance"):
        g.add_argument(f"--{k}", type=float, default=None)
    from dalle2_fast.cli.edit import add_stage_options

    add_stage_options(g)
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="the pipeline's weights in this dtype, sampled under autocast (default float32)")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the stages' networks (the first batch pays the compilation)")
    g.add_argument("--fast-convs", action="store_true", default=None,
                   help="float32 on the CPU: 3x3 convolutions by Winograd's F(4x4, 3x3) on channels-last "
                        "activations (layers of 32+ channels; not bit-equal: ~4e-6 relative error)")
    c = s.add_argument_group("--checkpoint (suite models)")
    c.add_argument("--sampler", default=None, choices=["ddpm", "ddim", "dpmpp"], help="diffusion models (ddim)")
    c.add_argument("--steps", type=int, default=None, help="diffusion models: sampling steps (respaced; 50)")
    c.add_argument("--eta", type=float, default=None, help="--sampler ddim: 0 deterministic, 1 DDPM-like")
    c.add_argument("--guidance", default=None, choices=["none", "classifier", "cfg"])
    c.add_argument("--scale", type=float, default=None, help="guidance scale (1)")
    c.add_argument("--classifier", default=None, help="--guidance classifier: a noisy classifier checkpoint")
    c.add_argument("--label", default=None, help="class-conditional models: a class id or name ('circle', "
                                                 "'red circle'); default: cycling through the classes")
    c.add_argument("--temperature", type=float, default=None, help="the VQ-VAE-2 generator (1)")
    c.add_argument("--metrics", default=None, help="diffusion models: write the shapes detector's recognition rate "
                                                   "of the samples (of their labels) to this JSON file")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=run)


def run(args) -> int:
    if args.checkpoint is not None and (args.prompts or args.prompts_file):
        raise ValueError("sample: give PROMPT... or --prompts-file (the unCLIP pipeline) or --checkpoint (a suite "
                         "model), not both")
    if args.prompts and args.prompts_file:
        raise ValueError("sample: give PROMPT... or --prompts-file FILE, not both")
    if args.checkpoint is None and not args.prompts and args.prompts_file is None:
        raise ValueError("sample: give one or more PROMPTs, --prompts-file FILE, or --checkpoint RUN_OR_CKPT")
    if args.prompts_file is not None and args.images_dir is None:
        raise ValueError("--prompts-file: writes one PNG per image; give --images-dir DIR")
    check_seed_arg(args.seed)
    check_count("--batch-size", args.batch_size)
    check_count("--max-grid", args.max_grid)
    if args.n is not None:
        check_count("-n", args.n)
    if args.images_dir is not None and args.out is not None:
        raise ValueError("sample: give -o/--out (one grid) or --images-dir (one PNG per image), not both")
    if args.images_dir is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("sample: under torchrun (WORLD_SIZE > 1) pass --images-dir DIR, which shards images over "
                         "ranks; a grid (-o) is a one-process job")
    if args.images_dir is not None:
        check_out_dir("--images-dir", args.images_dir)
    else:
        from dalle2_fast.data.images import check_output_path

        args.out = args.out or "samples.png"
        check_output_path("-o/--out", args.out)
    if args.checkpoint is not None:
        from dalle2_fast.cli.edit import STAGE_OPTIONS

        refuse_unused(args, PROMPT_OPTS + STAGE_OPTIONS + ("dtype", "compile", "fast_convs"),
                      "apply to text prompts (the unCLIP pipeline), not to --checkpoint")
        return _checkpoint(args)
    refuse_unused(args, CKPT_OPTS, "apply to --checkpoint (suite models), not to text prompts")
    return _prompts(args)


def _probe_output(args) -> None:
    """Every flag is checked: prove the output can be written before any model loads."""
    if args.images_dir is not None:
        ensure_writable("--images-dir", args.images_dir, keep=False)  # the job creates it
    else:
        ensure_writable("-o/--out", Path(args.out).parent if str(Path(args.out).parent) else ".")
    if getattr(args, "metrics", None):
        ensure_writable("--metrics", Path(args.metrics).parent if str(Path(args.metrics).parent) else ".")


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, flush=True)


def _grid_or_dir(args, total: int) -> None:
    if args.images_dir is None and total > args.max_grid:
        raise ValueError(f"-n: {total} images do not fit one grid (--max-grid {args.max_grid}); write them one "
                         f"PNG each with --images-dir DIR (streamed to disk, resumable by seed)")


def _prompts(args) -> int:
    from dalle2_fast.pipeline import UnCLIPPipeline

    prompts = check_prompts(args.prompts) if args.prompts_file is None else None
    n = (16 if prompts else 1) if args.n is None else args.n
    if prompts:
        _grid_or_dir(args, len(prompts) * n)
    for k in ("prior_steps", "decoder_steps", "upsampler_steps"):
        if getattr(args, k) is not None:
            check_count("--" + k.replace("_", "-"), getattr(args, k))
    for k in ("prior_guidance", "decoder_guidance"):
        if getattr(args, k) is not None:
            check_finite("--" + k.replace("_", "-"), getattr(args, k), 0, 100)
    if args.pipeline is not None and not Path(args.pipeline).is_dir():
        raise FileNotFoundError(f"--pipeline: no such directory {args.pipeline!r}")
    _probe_output(args)
    from dalle2_fast.cli.edit import stage_options

    opts = {k: getattr(args, k) for k in PROMPT_OPTS[1:] if getattr(args, k) is not None}
    opts.update(stage_options(args))
    if args.images_dir is not None:
        from dalle2_fast.jobs import prompts_job

        refuse_unused(args, ("compile",), "applies to one call (-o), not to batch jobs (--images-dir)")

        return prompts_job(args.images_dir, pipeline=args.pipeline, prompts=prompts, prompts_file=args.prompts_file,
                           n=n, seed=args.seed, batch_size=args.batch_size, options=opts,
                           say=lambda m: _say(args, m), dtype=args.dtype or "float32",
                           fast_convs=bool(args.fast_convs))
    import torch

    total = len(prompts) * n
    pipe = UnCLIPPipeline.from_pretrained(args.pipeline, dtype=getattr(torch, args.dtype or "float32"))
    if args.compile:
        _say(args, "torch.compile: the first batch includes the compilation of every stage's network")
        pipe.compile()
    if args.fast_convs:
        pipe.fast_convs()
    settings = pipe.settings(**opts)
    source = {"pipeline": str(args.pipeline) if args.pipeline else "shipped:unclip_shapes"}
    stream = pipe.iter_images(prompts, n, seed=args.seed, batch_size=args.batch_size, **opts)
    _write(args, stream, total, lambda g: {"prompt": g.prompt, "seed": g.seed, **settings, **source},
           {"prompts": prompts, "images_per_prompt": n, "seed": args.seed, **settings, **source},
           nrow=None if len(prompts) == 1 else n, scale=1)
    return 0


def _checkpoint(args) -> int:
    from dalle2_fast.generate import CheckpointSampler
    from dalle2_fast.pipeline import Generated

    n = 64 if args.n is None else args.n
    _grid_or_dir(args, n)
    opts = {"sampler": args.sampler or "ddim", "steps": 50 if args.steps is None else args.steps,
            "eta": 0.0 if args.eta is None else args.eta, "guidance": args.guidance or "none",
            "scale": 1.0 if args.scale is None else args.scale, "classifier": args.classifier, "label": args.label,
            "temperature": 1.0 if args.temperature is None else args.temperature}
    check_count("--steps", opts["steps"])
    check_finite("--eta", opts["eta"], 0, 1e6)
    check_finite("--scale", opts["scale"], -1e4, 1e4)
    check_finite("--temperature", opts["temperature"], 1e-6, 1e6)
    if args.metrics is not None:
        if args.images_dir is not None:
            raise ValueError("--metrics: scores a grid (-o), not --images-dir")
        from dalle2_fast.data.images import check_output_path

        check_output_path("--metrics", args.metrics, (".json",))
    _probe_output(args)
    if args.images_dir is not None:
        from dalle2_fast.jobs import checkpoint_job

        return checkpoint_job(args.images_dir, args.checkpoint, n=n, seed=args.seed, batch_size=args.batch_size,
                              sampler_options=opts, say=lambda m: _say(args, m))
    sampler = CheckpointSampler(args.checkpoint, **opts)
    settings = sampler.settings
    if args.metrics is not None and not hasattr(sampler.model, "diffusion"):
        raise ValueError(f"--metrics: scores diffusion checkpoints, not a {type(sampler.model).__name__}")

    def stream():
        for i in range(0, n, args.batch_size):
            seeds = [args.seed + k for k in range(i, min(n, i + args.batch_size))]
            imgs = sampler(seeds, first=i)
            yield [Generated(i + j, "", s, img) for j, (s, img) in enumerate(zip(seeds, imgs))]

    pairs = sampler.reconstructs
    images = _write(args, stream(), n, lambda g: {"seed": g.seed, "index": g.index, **settings},
                    {"seed": args.seed, "n": n, **settings}, scale=2, inputs=sampler.inputs if pairs else None)
    if args.metrics is not None:
        _metrics(args, sampler, images, n)
    return 0


def _metrics(args, sampler, images, n: int) -> None:
    """The detector's recognition rate of the grid's images, of their labels."""
    import json

    from dalle2_fast.checkpoint import atomic_write_text
    from dalle2_fast.data.labels import kind_for_num_classes, kind_of
    from dalle2_fast.eval.recognition import recognition_rate_of

    m = sampler.model
    labels = sampler.labels_for([args.seed + k for k in range(n)], 0)
    if m.config.num_classes:
        kind = kind_of(m.config.class_names) if m.config.class_names else kind_for_num_classes(m.config.num_classes)
    elif sampler.clf is not None:
        kind = kind_for_num_classes(sampler.clf.config.num_classes)
    else:
        kind = "none"
    rec = {**sampler.settings, "classifier": args.classifier, "n": n, "seed": args.seed, "label_kind": kind,
           "recognition_rate": recognition_rate_of(images, kind, labels)}
    atomic_write_text(args.metrics, json.dumps(rec, indent=2))
    print(json.dumps(rec))


def _write(args, stream, total: int, image_meta, grid_meta: dict, nrow=None, scale: int = 1, inputs=None) -> int:
    """Consume a stream of batches of ``Generated`` into one grid PNG (-o); returns the images.
    (--images-dir is a batch job: ``dalle2_fast.jobs``.)"""
    import torch

    from dalle2_fast.data.images import make_grid, save_png

    t0 = time.time()
    images, seeds = [], []
    for batch in stream:
        for g in batch:
            images.append(g.image.float().cpu())
            seeds.append(g.seed)
        rate = len(images) / max(time.time() - t0, 1e-9)
        _say(args, f"  {len(images)}/{total} images, {rate:.2f} images/s, "
                   f"~{(total - len(images)) / max(rate, 1e-9):.0f} s left")
    x = torch.stack(images)
    if inputs is not None:  # autoencoders: each input next to its reconstruction
        x = torch.stack([inputs(seeds), x], 1).flatten(0, 1)
    meta = dict(grid_meta, seeds=seeds, elapsed_s=round(time.time() - t0, 2))
    path = save_png(make_grid(x, nrow=nrow, pad=1), args.out, meta, scale=scale)
    print(f"wrote {path} ({total} images)")
    return torch.stack(images)
