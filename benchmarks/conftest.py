"""pytest-benchmark suite over the cases defined once in dalle2_fast/bench/<family>.py (the same
definitions `dalle2-fast bench` runs). Full sizes with BENCH_FULL=1, else the quick sweep.

    .venv/bin/python -m pytest benchmarks -q --benchmark-group-by=param:case
"""
import os

import pytest
import torch

FULL = os.environ.get("BENCH_FULL") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def case_params(cases_fn):
    """pytest params (case, variant) for every variant of every case of a family."""
    out = []
    for case in cases_fn(DEVICE, quick=not FULL):
        for v in case.variants:
            out.append(pytest.param(case, v, id=f"{case.name}-{v.label}"))
    return out


def run_benchmark(benchmark, case, variant):
    benchmark.group = f"{case.family}:{case.name}"
    benchmark.extra_info.update(case=case.name, variant=variant.label, kind=variant.kind,
                                baseline=case.baseline, flops=case.flops, bytes=case.bytes)
    benchmark.pedantic(variant.fn, rounds=5, warmup_rounds=1, iterations=1)
