"""Issue 19, lever check: does ``torch.compile`` (CPU inductor) of the prefix-cached Karlo-reduced
prior beat the eager prefix-cached path? The same case as ``caches``' ``prior-karlo-reduced``
(``dalle2_fast.bench.caches.karlo_setup``): eager prefix cache, the same prior compiled the way
``UnCLIPPipeline.compile()`` compiles it (``nn.Module.compile(**options)``, here on a copy), and
diffusers' prior loop, interleaved round-robin, one thread; wall clock and process CPU time,
median of ``--repeats``. Compile time (the first compiled call) is reported separately, and the
largest difference between the compiled and eager outputs.

    PYTHONPATH=. python benchmarks/prior_compile_cpu.py [--quick] [--repeats 5] [--dynamic]
"""
import argparse
import copy
import statistics
import time

import torch

from dalle2_fast.bench.caches import karlo_setup


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dynamic", action="store_true", help="compile with dynamic=True (default dynamic=False)")
    a = p.parse_args()
    if a.repeats < 1:
        p.error(f"--repeats must be >= 1, got {a.repeats}")
    torch.set_num_threads(1)
    k = karlo_setup(a.quick)
    eager = k.ours
    compiled = copy.deepcopy(eager)
    compiled.compile(dynamic=a.dynamic)

    ref = k.run(True)
    t0 = time.perf_counter()
    out = k.run(True, compiled)
    compile_s = time.perf_counter() - t0
    diff = (out - ref).abs().max().item()
    variants = {"eager prefix cache": lambda: k.run(True), "compiled prefix cache": lambda: k.run(True, compiled),
                "diffusers": k.diffusers_loop}
    for f in variants.values():
        f()
    wall = {n: [] for n in variants}
    cpu = {n: [] for n in variants}
    for _ in range(a.repeats):
        for n, f in variants.items():
            w0, c0 = time.perf_counter(), time.process_time()
            f()
            wall[n].append(time.perf_counter() - w0)
            cpu[n].append(time.process_time() - c0)
    print(f"case {k.params}, torch {torch.__version__}, 1 thread, median of {a.repeats} (interleaved)")
    print(f"compile (first compiled call): {compile_s:.2f} s; max |compiled - eager| = {diff:.2e}")
    base_w, base_c = statistics.median(wall["diffusers"]), statistics.median(cpu["diffusers"])
    print("| variant | wall s | CPU s | diffusers / variant (wall) | (CPU) |\n|---|---|---|---|---|")
    for n in variants:
        w, c = statistics.median(wall[n]), statistics.median(cpu[n])
        print(f"| {n} | {w:.4f} | {c:.4f} | {base_w / w:.2f}x | {base_c / c:.2f}x |")


if __name__ == "__main__":
    main()
