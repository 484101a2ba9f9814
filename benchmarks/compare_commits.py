"""The end-to-end case of ``dalle2-fast bench --ops unclip`` at two checkouts, timed in one run.

Each checkout runs in its own child process (its own ``dalle2_fast``, shipped weights and
extension), loads the pipeline once and then answers "time one call" requests on a pipe; the
parent alternates the two children call by call, so both see the same machine load. The call is
each checkout's own unclip bench case: ``load_pipeline()`` then ``pipe(PROMPTS[:4], seed=0,
batch_size=4)`` with the pipeline's default settings.

    python benchmarks/compare_commits.py --old /path/to/old/checkout --new . --repeats 7 \
        --out benchmarks/results/cpu-xeon-2core/redesign

Writes ``compare.json`` and ``compare.md`` (medians, spread, the ratio old/new per round).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import sys, time, torch
torch.manual_seed(0)
from dalle2_fast.bench.unclip import PROMPTS, load_pipeline
pipe, kind = load_pipeline("cpu")
prompts = PROMPTS[:4]
with torch.no_grad():
    pipe(prompts, seed=0, batch_size=4)  # warm-up
print("ready", kind, flush=True)
for line in sys.stdin:
    if line.strip() != "go":
        break
    with torch.no_grad():
        t = time.perf_counter()
        pipe(prompts, seed=0, batch_size=4)
        dt = time.perf_counter() - t
    print(f"{dt:.6f}", flush=True)
"""


def _start(checkout: Path, extension: str | None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    if extension:
        env["DALLE2_FAST_EXTENSION_PATH"] = extension
    p = subprocess.Popen([sys.executable, "-c", CHILD], cwd=checkout, env=env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = p.stdout.readline().split()
    if not line or line[0] != "ready":
        raise RuntimeError(f"{checkout}: the child did not start (see its stderr above)")
    return p


def _time(p: subprocess.Popen) -> float:
    p.stdin.write("go\n")
    p.stdin.flush()
    return float(p.stdout.readline())


def _rev(checkout: Path) -> str:
    r = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, type=Path, help="the baseline checkout")
    ap.add_argument("--new", required=True, type=Path, help="the checkout under test")
    ap.add_argument("--old-extension", default=None, help="DALLE2_FAST_EXTENSION_PATH for the old checkout")
    ap.add_argument("--new-extension", default=None, help="DALLE2_FAST_EXTENSION_PATH for the new checkout")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error("--repeats: expected an integer >= 1")
    procs = {"old": _start(a.old, a.old_extension), "new": _start(a.new, a.new_extension)}
    times = {"old": [], "new": []}
    try:
        for i in range(a.repeats):
            order = ("old", "new") if i % 2 == 0 else ("new", "old")
            for k in order:
                times[k].append(_time(procs[k]))
            print(f"round {i + 1}/{a.repeats}: old {times['old'][-1]:.2f} s, new {times['new'][-1]:.2f} s", flush=True)
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait(timeout=60)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [o / n for o, n in zip(times["old"], times["new"])]
    doc = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
           "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
           "old": {"checkout": str(a.old), "rev": _rev(a.old), "seconds": times["old"], "median_s": med["old"]},
           "new": {"checkout": str(a.new), "rev": _rev(a.new), "seconds": times["new"], "median_s": med["new"]},
           "speedup_median": med["old"] / med["new"], "speedup_per_round": ratios,
           "case": "bench unclip: shipped pipeline, 4 prompts, seed 0, batch 4, default settings",
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "compare.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = [f"# bench unclip: {doc['old']['rev']} (old) vs {doc['new']['rev']} (new), one run", "",
          f"Machine: {doc['machine']}; {doc['when']}; calls alternated, {a.repeats} rounds.", "",
          "| checkout | median s | min s | max s |", "|---|---|---|---|"]
    for k in ("old", "new"):
        md.append(f"| {k} ({doc[k]['rev']}) | {med[k]:.3f} | {min(times[k]):.3f} | {max(times[k]):.3f} |")
    md += ["", f"Speed-up old/new (median): **{doc['speedup_median']:.3f}x**; per round "
               f"{min(ratios):.3f}x .. {max(ratios):.3f}x."]
    (a.out / "compare.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
