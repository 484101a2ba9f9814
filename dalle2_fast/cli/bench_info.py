"""``dalle2-fast bench`` (arguments go to the harness, ``dalle2_fast.bench``) and ``dalle2-fast info``."""
from __future__ import annotations

import argparse


def bench(argv: list[str]) -> int:
    try:
        from dalle2_fast.bench.cli import main as bench_main
    except ImportError as e:
        raise SystemExit(f"dalle2-fast bench: the benchmark harness is not available ({e})") from None
    return bench_main(list(argv))


def info(args) -> int:
    from dalle2_fast.info import main as info_main

    return info_main(["--gpu-plan"] if args.gpu_plan else [])


def add_parsers(sub) -> None:
    i = sub.add_parser("info", help="versions, devices, and which kernel backends run here")
    i.add_argument("--gpu-plan", action="store_true", help="the audited GPU launch plan (docs/gpu-readiness.md)")
    i.set_defaults(func=info)
    b = sub.add_parser("bench", help="kernel and model benchmarks (arguments go to the harness; see bench --help)")
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=lambda a: bench(a.bench_args))
