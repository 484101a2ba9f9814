"""Peak extra host memory of one benchmark variant, measured in a fresh process:
``python -m dalle2_fast.bench.peakmem FAMILY CASE_NAME LABEL [--quick]`` prints the growth of the
process's peak RSS (MB) caused by one call, after the inputs exist and the libraries are warm
(a call on the smallest case first). CPU only."""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS. (ru_maxrss
    # is no use here: it survives exec, so a child would inherit its parent's peak.)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("family")
    p.add_argument("case")
    p.add_argument("label")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    from dalle2_fast.bench.cli import FAMILIES

    mod = importlib.import_module(FAMILIES.get(a.family, f"dalle2_fast.bench.{a.family}"))
    warm = mod.cases("cpu", quick=True)[0]
    try:
        warm.variant(a.label).fn()
    except KeyError:
        pass
    case = next(c for c in mod.cases("cpu", quick=a.quick) if c.name == a.case)
    fn = case.variant(a.label).fn
    _reset_peak()
    before = _status_mb("VmRSS")
    fn()
    print(json.dumps({"peak_extra_mb": max(0.0, _status_mb("VmHWM") - before)}))


def peak_extra_mb(family: str, case: str, label: str, quick: bool = False) -> float:
    cmd = [sys.executable, "-m", "dalle2_fast.bench.peakmem", family, case, label] + (["--quick"] if quick else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_extra_mb"]


if __name__ == "__main__":
    main()
