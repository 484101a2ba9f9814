"""`python -m dalle2_fast.info` (or `dalle2-fast info`): versions, devices, the extension build,
and for every kernel family which backends can run here — or, for each that cannot, why."""
from __future__ import annotations

import importlib.util
import platform
import sys

import torch

import dalle2_fast
from dalle2_fast import _ext
from dalle2_fast.ops._backends import BACKENDS, FAMILIES, backend_device_reasons, triton_interpret


def _version(mod: str) -> str:
    if importlib.util.find_spec(mod) is None:
        return "not installed"
    try:
        return getattr(__import__(mod), "__version__", "installed")
    except Exception as e:  # pragma: no cover
        return f"import failed: {e}"


def report() -> str:
    lines = [
        f"dalle2_fast {dalle2_fast.__version__}  (python {platform.python_version()}, {platform.machine()})",
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}), triton {_version('triton')}, "
        f"open_clip {_version('open_clip')}",
        f"CPU: {torch.get_num_threads()} threads",
    ]
    if torch.cuda.is_available():
        lines.append("GPU: " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
    else:
        lines.append("GPU: none visible")
    lines.append(f"C++ extension: {'loaded (' + _ext.build_info() + ')' if _ext.loaded() else _ext.load_error()}")
    lines.append(f"TRITON_INTERPRET={'1' if triton_interpret() else '0'}")
    lines.append("")
    devices = ["cpu", "cuda"]
    for name, fam in FAMILIES.items():
        lines.append(f"{name}:")
        for dev in devices:
            prio = fam.priority.get(dev, ())
            lines.append(f"  on {dev} (automatic order: {', '.join(prio) or '-'}):")
            for b in BACKENDS:
                impl = fam.impls.get(b)
                if impl is None:
                    lines.append(f"    {b:7s} -- no kernel for this family")
                    continue
                if dev not in impl.devices:
                    why = "not a " + dev + " backend"
                    if b == "triton" and dev == "cpu":
                        why = "no GPU; interpreter only in tests (TRITON_INTERPRET=1)"
                    lines.append(f"    {b:7s} -- {why}")
                    continue
                reasons = backend_device_reasons(b, torch.device(dev), impl.needs_extension)
                if dev == "cuda" and not torch.cuda.is_available() and not reasons:
                    reasons = [f"{b}: no GPU visible"]
                if b == "triton" and dev == "cpu" and not triton_interpret():
                    reasons = ["triton: no GPU; interpreter only in tests (TRITON_INTERPRET=1)"]
                dts = ", ".join(str(d).replace("torch.", "") for d in impl.dtypes)
                if reasons:
                    lines.append(f"    {b:7s} -- unavailable: {'; '.join(r.split(': ', 1)[-1] for r in reasons)}")
                else:
                    lines.append(f"    {b:7s} ok ({dts})")
        if fam.notes:
            lines.append(f"  note: {fam.notes}")
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="dalle2-fast info", description=__doc__)
    p.add_argument("--gpu-plan", action="store_true",
                   help="the audited Triton launch table (sm_80, sm_90 and this GPU), the attention dispatch "
                        "estimate and where the rest of docs/gpu-readiness.md comes from")
    a = p.parse_args(argv)
    print(report())
    if a.gpu_plan:
        from dalle2_fast.gpu_plan.plan import plan_text

        print()
        print(plan_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
