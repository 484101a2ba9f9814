"""`dalle2-fast info --gpu-plan`: what a GPU will be handed, from the committed data only (no
compiling, no GPU needed): the audited Triton launch table for sm_80 and sm_90 (and, when a GPU
is visible, the configurations chosen for it), the attention dispatch estimate, and where the
rest of docs/gpu-readiness.md comes from."""
from __future__ import annotations

import torch

from dalle2_fast.triton import launch as L

SOURCES = """Regenerate docs/gpu-readiness.md:
  python -m dalle2_fast.gpu_plan.triton_audit --write [--jobs N]   Triton audit (full matrix) + the table above
  python -m dalle2_fast.gpu_plan.triton_audit --ci                 the CI check of that table (subset compiled)
  python -m dalle2_fast.gpu_plan.cuda_usage --write                CUDA kernels: ptxas -v of the built objects
  python -m dalle2_fast.bench.roofline --write                     roofline of every benchmark case, dispatch
  bash benchmarks/gpu/run.sh --plan                                the first GPU run, step by step"""


def _this_gpu() -> list[str]:
    if not torch.cuda.is_available():
        return ["No GPU visible: the tables show the audited architectures only."]
    from dalle2_fast.gpu_plan.report import DTYPES, HEAD_DIMS

    t = L.target_for(torch.empty(0, device="cuda"))
    lines = [f"This GPU: {t.name}, sm_{t.arch}, {t.smem // 1024} KiB shared memory per block "
             f"(audited numbers of sm_{L.audited_arch(t.arch)} stand in)"]
    for kernel in L.ATTENTION_KERNELS:
        for dt in DTYPES:
            picks = []
            for bd in HEAD_DIMS:
                cfg = L.attention_config(kernel, dt, bd, t)
                picks.append(f"D<={bd}: " + ("none fits (triton refused)" if cfg is None else
                                             f"M{cfg['BLOCK_M']} N{cfg['BLOCK_N']} w{cfg['num_warps']} s{cfg['num_stages']}"))
            lines.append(f"  {kernel} {L.dtype_name(dt)}: " + "; ".join(picks))
    return lines


def plan_text() -> str:
    from dalle2_fast.bench.roofline import dispatch_markdown
    from dalle2_fast.gpu_plan.report import triton_markdown
    from dalle2_fast.triton import _audited

    out = ["GPU plan (docs/gpu-readiness.md)", "",
           "Triton launches (audited offline with Triton's compiler and ptxas; shared memory, registers, spills):",
           triton_markdown(_audited.META.get("summary")), *_this_gpu(), "",
           "Attention on CUDA, roofline estimate for (16, 8, 4096, 4096, 64) forward (not measured):",
           dispatch_markdown(), SOURCES]
    return "\n".join(out)


def gpu_plan_text() -> str:
    """`benchmarks/gpu/run.sh --plan` as the doc shows it (python3, no prebuilt extension)."""
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("DALLE2_FAST_EXTENSION_PATH", "PYTHON")}
    env["PATH"] = env.get("PATH", "")
    res = subprocess.run(["bash", str(root / "benchmarks" / "gpu" / "run.sh"), "--plan"], capture_output=True,
                         text=True, env={**env, "PYTHON": "python3"}, cwd=root, check=True)
    return "```\n" + res.stdout.rstrip() + "\n```\n"


def write_doc() -> None:
    """Every section of docs/gpu-readiness.md that derives from committed data (the CUDA table
    needs a CUDA build: python -m dalle2_fast.gpu_plan.cuda_usage --write)."""
    from dalle2_fast.bench import roofline
    from dalle2_fast.gpu_plan.report import replace_section, triton_markdown
    from dalle2_fast.triton import _audited

    replace_section("triton-audit", triton_markdown(_audited.META.get("summary")))
    replace_section("roofline", roofline.markdown("cuda"))
    replace_section("attention-dispatch", roofline.dispatch_markdown())
    replace_section("gpu-plan", gpu_plan_text())


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--write"]:
        write_doc()
    else:
        print(plan_text())
