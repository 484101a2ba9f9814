"""``dalle2-fast``: one command tree, one verb per thing users do. Each verb is a thin function
over the Python API (in ``dalle2_fast/cli/<verb>.py``): it parses, checks every flag before any
model loads, and calls.

    sample       text to image (PROMPT...), or a trained suite checkpoint (--checkpoint)
    variations   images that keep the CLIP content of an input image
    interpolate  images between two input images in CLIP space
    text-diff    edit an image toward a caption (the paper's text diffs)
    inpaint      fill a masked region of an image from a caption, or extend it past a border
    train        train a suite model, CLIP, or the unCLIP recipe
    eval         the caption-match report of a pipeline
    serve        an HTTP service: OpenAI's Images API with dynamic batching, and a web page
    bench        the kernel and model benchmarks
    info         versions, devices and which kernel backends run here
    convert      other projects' weights (Karlo, diffusers priors, OpenAI CLIP, the LAION prior, ...) into our format
"""
from __future__ import annotations

import argparse
import sys

from dalle2_fast.cli import bench_info, convert, edit, evaluate, inpaint, sample, serve, train

VERBS = (sample, edit, inpaint, train, evaluate, serve, bench_info, convert)


class UsageError(ValueError):
    """A bad command line: reported as one line naming the flag, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: one line, our exit status
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dalle2-fast", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for verb in VERBS:
        verb.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run a command; bad input raises (library callers and tests use this)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after 'bench' belongs to the harness, options included
        return bench_info.bench(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    rc = args.func(args)
    return rc if isinstance(rc, int) else 0


def console(argv: list[str] | None = None) -> int:
    """The ``dalle2-fast`` command: :func:`main`, with bad input reported as one line (exit 2)
    instead of a traceback."""
    from dalle2_fast.allocator import apply_from_env
    from dalle2_fast.checkpoint import CheckpointError

    try:
        apply_from_env()  # this process's malloc keeps freed memory (dalle2_fast/allocator.py)
        return main(argv)
    except SystemExit:
        raise
    except (ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError, CheckpointError) as e:
        msg = " ".join(str(e).split())
        print(f"dalle2-fast: error: {msg[:2000]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dalle2-fast: interrupted", file=sys.stderr)
        return 130


__all__ = ["main", "console", "build_parser", "UsageError"]
