"""AdaGN CPU cases timed by *process CPU time* on one thread (robust on a shared, oversubscribed
machine where wall-clock medians mostly measure scheduling): the same cases and callables as
``dalle2_fast/bench/adagn.py``, best of N, ratios to the eager ``torch`` baseline in the same run.

    PYTHONPATH=. python benchmarks/adagn_cpu_time.py [--quick] [--repeats 7]
"""
import argparse
import time

import torch

from dalle2_fast.bench.adagn import cases


def cpu_time(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args()
    torch.set_num_threads(1)
    print("| case | variant | CPU time | vs torch (eager) | GB/s |\n|---|---|---|---|---|")
    for case in cases("cpu", quick=a.quick):
        times = {v.label: cpu_time(v.fn, a.repeats) for v in case.variants}
        base = times[case.baseline]
        for label, t in times.items():
            print(f"| {case.name} | {label} | {t * 1e3:.2f} ms | {base / t:.2f}x | {case.bytes / t / 1e9:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
