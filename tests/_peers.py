"""Reference implementations that cannot share our virtualenv, run in a subprocess.

``dalle2-pytorch`` pins ``open-clip-torch<3`` (we use 3.x) and pulls a training stack; its prior
needs none of that. So each tested release is installed with ``pip install --no-deps --target``
into ``.venv-peers/dalle2-pytorch-<version>/`` plus the three small packages its prior imports
(``.venv-peers/common``), and the reference runs in a child process of our interpreter (same
torch) with those two folders first on ``sys.path``; the modules its package ``__init__``
imports for other models (kornia, x-clip, CoCa, vector-quantize, resize-right) are replaced by
inert stubs there. ``python -m tests._peers`` (``make peers``) builds everything; tests call
:func:`dalle2_pytorch_env` and skip with the reason when it cannot be built (no registry).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / ".venv-peers"
COMMON = ("einops==0.8.2", "einops-exts==0.0.4", "rotary-embedding-torch==0.9.1")
DALLE2_VERSIONS = ("1.15.6", "1.8.4", "1.1.0")  # one per convention era (see interop/dalle2_pytorch.py)


def _pip_target(target: Path, specs) -> str | None:
    """Install ``specs`` without dependencies into ``target`` (atomically: a temp dir renamed);
    returns None, or why it failed."""
    if target.is_dir():
        return None
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
           "--target", str(tmp), *specs]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"pip failed to run: {e}"
    if r.returncode != 0:
        return f"pip install {' '.join(specs)} failed: {(r.stderr or r.stdout).strip()[-400:]}"
    tmp.rename(target)
    return None


def dalle2_pytorch_env(version: str) -> tuple[list[str] | None, str]:
    """(sys.path entries for the reference of ``version``, '') or (None, why not)."""
    PEERS.mkdir(exist_ok=True)
    why = _pip_target(PEERS / "common", COMMON)
    if why is None:
        why = _pip_target(PEERS / f"dalle2-pytorch-{version}", [f"dalle2-pytorch=={version}"])
    if why is not None:
        return None, f"cannot build the dalle2-pytorch {version} reference in {PEERS}: {why}"
    return [str(PEERS / f"dalle2-pytorch-{version}"), str(PEERS / "common")], ""


def run_reference(version: str, script: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``script`` (which imports DALLE2-pytorch through ``tests/interop/_dalle2_stubs``) under
    the reference's paths; raises with its output on failure."""
    paths, why = dalle2_pytorch_env(version)
    if paths is None:
        raise RuntimeError(why)
    env = dict(os.environ, DALLE2_REF_PATHS=os.pathsep.join(paths))
    r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"reference dalle2-pytorch {version} failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    return r


if __name__ == "__main__":  # make peers
    for v in DALLE2_VERSIONS:
        p, why = dalle2_pytorch_env(v)
        print(f"dalle2-pytorch {v}: {p[0] if p else why}")
