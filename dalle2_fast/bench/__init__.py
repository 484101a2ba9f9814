"""Benchmark cases shared by `dalle2-fast bench` and the pytest-benchmark suite in
benchmarks/: each family module defines ``cases(device, quick) -> list[Case]`` once."""
from dalle2_fast.bench.core import Case, Variant, time_fn

__all__ = ["Case", "Variant", "time_fn"]
