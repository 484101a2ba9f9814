"""The first-GPU-hour script (benchmarks/gpu/run.sh): its --plan dry run and its refusal without a
GPU; and `dalle2-fast info --gpu-plan`."""
import os
import re
import subprocess
import sys
from pathlib import Path

from dalle2_fast.bench.cli import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "run.sh"


def _run(*args, **env):
    e = {k: v for k, v in os.environ.items() if k != "DALLE2_FAST_EXTENSION_PATH"}
    e.update(PYTHON=sys.executable, **env)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=e, cwd=ROOT, timeout=120)


def test_plan_lists_every_step_in_order_within_ten_minutes():
    res = _run("--plan")
    assert res.returncode == 0, res.stderr
    steps = re.findall(r"^STEP (\d+) (\S+) limit=(\d+)s estimate=(\d+)s: (.*)$", res.stdout, re.M)
    names = [s[1] for s in steps]
    assert names[:3] == ["env", "build", "gpu-tests"]
    assert names[3:] == [f"bench-{f}" for f in ("codebook", "attention", "adagn", "sampling", "unet", "vqvae2", "unclip")]
    later = dict(re.findall(r"^LATER bench-(\S+): (.+)$", res.stdout, re.M))  # left out, each with its reason
    assert {n.removeprefix("bench-") for n in names[3:]} | set(later) == set(FAMILIES)  # every family, in the harness
    assert not set(later) & {n.removeprefix("bench-") for n in names[3:]} and all(len(w) > 20 for w in later.values())
    total = int(re.search(r"^TOTAL limit=(\d+)s", res.stdout, re.M).group(1))
    assert total == sum(int(s[2]) for s in steps) <= 600
    assert all(int(s[3]) <= int(s[2]) for s in steps)  # estimates inside their limits
    cmds = dict((s[1], s[4]) for s in steps)
    assert "pytest -m gpu" in cmds["gpu-tests"] and "--no-deps --no-build-isolation" in cmds["build"]
    assert all("--device cuda" in cmds[f"bench-{f}"] and f"--ops {f}" in cmds[f"bench-{f}"]
               for f in FAMILIES if f not in later)
    assert "info --gpu-plan" in cmds["env"]


def test_plan_skips_the_build_with_a_prebuilt_extension():
    res = _run("--plan", DALLE2_FAST_EXTENSION_PATH="/x/dalle2_fast_C.so")
    assert re.search(r"^STEP 2 build .*skipped: DALLE2_FAST_EXTENSION_PATH=/x/dalle2_fast_C.so", res.stdout, re.M)


def test_plan_commands_are_valid_for_the_harness():
    """The bench flags the plan passes exist (argparse would reject them on the GPU)."""
    import pytest

    from dalle2_fast.bench.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--ops", "nonexistent"])
    assert e.value.code == 2
    res = _run("--plan", "--quick")
    assert res.stdout.count("--quick") == len(FAMILIES) - res.stdout.count("\nLATER ")


def test_run_without_a_gpu_refuses_clearly():
    res = _run()
    assert res.returncode == 2 and "no CUDA GPU" in res.stderr
    assert _run("--bogus").returncode == 2


def test_info_gpu_plan(capsys):
    from dalle2_fast.info import main

    assert main(["--gpu-plan"]) == 0
    out = capsys.readouterr().out
    assert "Triton launches" in out and "attention_bwd_dkdv" in out and "order by the estimate" in out
    assert "Chosen configurations over the limits: **0** of" in out
