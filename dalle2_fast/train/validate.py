"""Command-line argument checks run before any work: each bad value raises ``ValueError``
naming the option, what was expected and what was got (argparse already rejects unknown model
names and non-numbers)."""
from __future__ import annotations

import math
import os
from pathlib import Path


def check_positive(name: str, v, allow_none=False):
    if v is None and allow_none:
        return
    if v is None or not (v > 0) or (isinstance(v, float) and not math.isfinite(v)):
        raise ValueError(f"{name}: expected a positive finite number, got {v!r}")


def check_writable_dir(name: str, path: str | Path) -> None:
    """``path`` is (or can be created as) a directory we can write into."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{name}: expected a directory, got an existing file {str(p)!r}")
    probe = p
    while not probe.exists():  # the nearest existing ancestor decides
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{name}: cannot write under {str(p)!r} ({str(probe)!r} is not a writable directory)")


def check_writable_file(name: str, path: str | Path) -> None:
    p = Path(path)
    if p.exists() and p.is_dir():
        raise ValueError(f"{name}: expected a file path, got the directory {str(p)!r}")
    check_writable_dir(name, p.parent if str(p.parent) else ".")


def check_train_args(args) -> None:
    check_positive("--steps", args.steps)
    check_positive("--batch-size", args.batch_size)
    check_positive("--resolution", args.resolution)
    check_positive("--ckpt-every", args.ckpt_every)
    check_positive("--eval-size", args.eval_size)
    check_positive("--sample-n", args.sample_n)
    check_positive("--lr", args.lr, allow_none=True)
    check_positive("--max-minutes", args.max_minutes, allow_none=True)
    ema = getattr(args, "ema", None)
    if ema is not None and not (0.0 <= ema < 1.0):  # NaN fails this too
        raise ValueError(f"--ema: expected a decay in [0, 1) (0: off), got {ema!r}")
    if args.keep_last < 1:
        raise ValueError(f"--keep-last: expected >= 1 (a resumable checkpoint), got {args.keep_last}")
    if args.data != "shapes" and not Path(args.data).is_dir():
        raise ValueError(f"--data: expected 'shapes' or an image folder, got {args.data!r} (no such directory)")
    check_writable_dir("--out", args.out or f"runs/{args.model}")


def check_sample_args(args) -> None:
    check_positive("-n", args.n)
    check_positive("--temperature", args.temperature)
    if getattr(args, "batch_size", None) is not None:
        check_positive("--batch-size", args.batch_size)
    if args.label is not None and not args.label.strip():
        raise ValueError("--label: expected a class id or '<colour> <shape>', got an empty string")
    if not Path(args.checkpoint).exists():
        raise ValueError(f"checkpoint: no such file or directory {args.checkpoint!r}")
    if getattr(args, "images_dir", None):
        check_writable_dir("--images-dir", args.images_dir)
    else:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("sample: under torchrun (WORLD_SIZE > 1) pass --images-dir DIR, which shards "
                             "batches over ranks; a single grid (--out) is a one-process job")
        check_writable_file("--out", args.out)
