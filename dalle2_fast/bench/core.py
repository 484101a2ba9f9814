"""The pieces every benchmark family uses: a Case (one shape, several variants timed in the
same run), a timer (median of repeats after warm-up; ``triton.testing.do_bench`` on GPU), and
machine bounds measured in the same run (copy bandwidth, matmul rate)."""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


@contextlib.contextmanager
def forced_backend(name: str | None):
    """Run a block with ``DALLE2_FAST_BACKEND=name`` (None: unset), restoring the old value after:
    how a benchmark times the same model with one backend forced for every op."""
    old = os.environ.get("DALLE2_FAST_BACKEND")
    if name is None:
        os.environ.pop("DALLE2_FAST_BACKEND", None)
    else:
        os.environ["DALLE2_FAST_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DALLE2_FAST_BACKEND", None)
        else:
            os.environ["DALLE2_FAST_BACKEND"] = old


@dataclass
class Variant:
    """One thing to time: our backend, a baseline or a peer. ``fn`` is a zero-argument callable
    doing the whole measured work (inputs already built). ``kind``: 'ours' | 'baseline' | 'peer'."""

    label: str
    fn: Callable[[], Any]
    kind: str = "ours"


@dataclass
class Case:
    family: str
    name: str
    params: dict
    variants: list[Variant]
    baseline: str  # label of the variant ratios are taken against
    bytes: int | None = None  # bytes a kernel must move at least (for GB/s)
    flops: float | None = None  # useful floating-point operations (for TFLOP/s)
    missing: dict[str, str] = field(default_factory=dict)  # peer label -> why it is absent
    device: str = "cpu"
    items: int | None = None  # items (images, requests) one call produces: reported per second
    notes: Callable[[], dict] | None = None  # after timing: {variant label: {name: value}} (e.g. latency)
    warmup: int | None = None  # warm-up calls per variant (None: run_case's); 0 for fresh-process variants

    def variant(self, label: str) -> Variant:
        for v in self.variants:
            if v.label == label:
                return v
        raise KeyError(f"{self.family}/{self.name}: no variant {label!r}")


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], Any], device: str = "cpu", warmup: int = 1, repeats: int = 5,
            min_time: float = 0.0) -> float:
    """Median seconds per call. On CUDA uses ``triton.testing.do_bench`` (ms -> s)."""
    if device == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start) < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: str = "cpu", nbytes: int = 256 << 20) -> float:
    """Measured copy bandwidth in bytes/s (read + write counted) for this machine, now."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device, warmup=2, repeats=5)
    return 2 * src.numel() * 4 / t


def matmul_rate(device: str = "cpu", n: int = 2048, dtype: torch.dtype = torch.float32) -> float:
    """Measured dense matmul rate in FLOP/s."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: a @ b, device, warmup=1, repeats=3)
    return 2 * n**3 / t


def run_case(case: Case, repeats: int = 5, warmup: int = 1) -> dict:
    """Times every variant of ``case`` (interleaved round-robin, so drift hits all alike) and
    returns {'times': {label: s}, 'ratios': {label: baseline_time / time}, ...}."""
    samples: dict[str, list[float]] = {v.label: [] for v in case.variants}
    for v in case.variants:
        for _ in range(warmup if case.warmup is None else case.warmup):
            v.fn()
        _sync(case.device)
    if case.device == "cuda":
        for v in case.variants:
            samples[v.label].append(time_fn(v.fn, "cuda"))
    else:
        for _ in range(repeats):
            for v in case.variants:
                samples[v.label].append(time_fn(v.fn, case.device, warmup=0, repeats=1))
    times = {k: statistics.median(s) for k, s in samples.items()}
    base = times[case.baseline]
    out = {
        "family": case.family, "name": case.name, "params": case.params, "device": case.device,
        "baseline": case.baseline, "times": times,
        "ratios": {k: base / t for k, t in times.items()},
        "kinds": {v.label: v.kind for v in case.variants},
        "missing": dict(case.missing),
    }
    if case.bytes:
        out["gbps"] = {k: case.bytes / t / 1e9 for k, t in times.items()}
    if case.flops:
        out["tflops"] = {k: case.flops / t / 1e12 for k, t in times.items()}
    if case.items:
        out["items_per_s"] = {k: case.items / t for k, t in times.items()}
    if case.notes is not None:
        out["notes"] = case.notes()
    return out
