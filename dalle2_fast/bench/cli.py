"""`dalle2-fast bench` / `python -m dalle2_fast.bench`: runs benchmark families and reports
time, achieved GB/s or TFLOP/s, the machine's bounds measured in the same run, and ratios to
each case's baseline. Writes results.json and results.md (and PNG plots) under --out."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from dalle2_fast.bench.core import copy_bandwidth, matmul_rate, run_case
from dalle2_fast.bench.roofline import peak_for, run_roofline

# family name -> module under dalle2_fast.bench defining cases(device, quick)
FAMILIES = {
    "codebook": "dalle2_fast.bench.codebook",
    "attention": "dalle2_fast.bench.attention",
    "unet": "dalle2_fast.bench.unet",
    "sampling": "dalle2_fast.bench.sampling",
    "adagn": "dalle2_fast.bench.adagn",
    "vqvae2": "dalle2_fast.bench.vqvae2",
    "unclip": "dalle2_fast.bench.unclip",
    "unclip-peers": "dalle2_fast.bench.unclip_peers",
    "serve": "dalle2_fast.bench.serve",
    "caches": "dalle2_fast.bench.caches",
}


def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.check_output(["git", "-C", str(root), "rev-parse", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except Exception:
        return "unknown"


def machine_info(device: str) -> dict:
    info = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(), "git_commit": _git_commit(), "device": device,
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _fmt_row(r: dict, mem: dict) -> list[str]:
    rows = []
    for label, t in r["times"].items():
        extra = []
        if "gbps" in r:
            extra.append(f"{r['gbps'][label]:.1f} GB/s")
        if "tflops" in r:
            extra.append(f"{r['tflops'][label] * 1e3:.1f} GFLOP/s")
        if "items_per_s" in r:
            extra.append(f"{r['items_per_s'][label]:.2f} images/s")
        for k, v in r.get("notes", {}).get(label, {}).items():
            extra.append(f"{k} {v}")
        if label in mem:
            extra.append(f"peak +{mem[label]:.1f} MB")
        roof = r.get("roofline", {}).get(label)
        if roof:  # the time at the roofline and the fraction of it this run reached
            extra.append(f"roofline {roof * 1e3:.3f} ms ({100 * roof / t:.0f}% reached)")
        rows.append(f"| {r['family']} | {r['name']} | {label} ({r['kinds'][label]}) | {t * 1e3:.2f} ms | "
                    f"{r['ratios'][label]:.2f}x | {', '.join(extra)} |")
    for peer, why in r["missing"].items():
        rows.append(f"| {r['family']} | {r['name']} | {peer} (missing) | - | - | {why} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dalle2-fast bench", description=__doc__)
    p.add_argument("--ops", default=",".join(FAMILIES), help=f"comma list of {sorted(FAMILIES)}")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="small sweep (under two minutes on a 2-core CPU)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--memory", action="store_true", help="also measure peak extra host memory per variant (CPU)")
    p.add_argument("--out", default=None, help="directory for results.json / results.md / plots")
    a = p.parse_args(argv)
    ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in FAMILIES]
    if unknown:
        p.error(f"--ops: unknown families {unknown}; choose from {sorted(FAMILIES)}")
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no GPU visible")
    repeats = a.repeats or (3 if a.quick else 5)

    t0 = time.time()
    gpu_name = torch.cuda.get_device_name() if a.device == "cuda" else ""
    bounds = {"copy_GBps": copy_bandwidth(a.device, 64 << 20 if a.quick else 256 << 20) / 1e9,
              "matmul_GFLOPs": matmul_rate(a.device, 1024 if a.quick else 2048) / 1e9}
    print(f"machine bounds ({a.device}): copy {bounds['copy_GBps']:.1f} GB/s, "
          f"fp32 matmul {bounds['matmul_GFLOPs']:.0f} GFLOP/s")
    results, md = [], ["| family | case | variant | time | vs baseline | notes |", "|---|---|---|---|---|---|"]
    for fam in ops:
        mod = importlib.import_module(FAMILIES[fam])
        for case in mod.cases(a.device, quick=a.quick):
            r = run_case(case, repeats=repeats)
            r["bytes"], r["flops"] = case.bytes, case.flops
            r["roofline"], r["roofline_of"] = run_roofline(r, bounds, a.device, gpu_name)
            mem = {}
            if a.memory and a.device == "cpu":
                from dalle2_fast.bench.peakmem import peak_extra_mb

                mem = {v.label: peak_extra_mb(fam, case.name, v.label, quick=a.quick) for v in case.variants}
                r["peak_extra_mb"] = mem
            results.append(r)
            rows = _fmt_row(r, mem)
            md.extend(rows)
            print("\n".join(rows), flush=True)
    doc = {"machine": machine_info(a.device), "bounds": bounds, "quick": a.quick, "results": results,
           "elapsed_s": time.time() - t0}
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(doc, indent=2))
        head = [f"Machine: {doc['machine'].get('cpu_model') or doc['machine']['processor']} "
                f"({doc['machine']['cpu_count']} cores), torch {torch.__version__}, commit "
                f"{doc['machine']['git_commit'][:10]}. Bounds measured in the same run: copy "
                f"{bounds['copy_GBps']:.1f} GB/s, fp32 matmul {bounds['matmul_GFLOPs']:.0f} GFLOP/s. Roofline: "
                + (f"{peak_for(gpu_name).name} published peaks" if peak_for(gpu_name) else "the bounds measured here")
                + " (dalle2_fast/bench/roofline.py).", ""]
        (out / "results.md").write_text("\n".join(head + md) + "\n")
        from dalle2_fast.bench.plots import plot_family

        for fam in ops:  # a family may draw its own plot (``plot(results, path)``)
            own = getattr(importlib.import_module(FAMILIES[fam]), "plot", None)
            (own or (lambda res, path, f=fam: plot_family(res, f, path)))(
                [r for r in results if r["family"] == fam], out / f"{fam}.png")
        print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
