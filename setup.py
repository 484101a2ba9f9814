"""Build driver: runs CMake (CMakeLists.txt is the one description of sources and flags)
and places the resulting library at the `dalle2_fast._C` extension path.

Environment:
  DALLE2_FAST_CUDA=auto|1|0   build the CUDA kernels (auto: when nvcc and a CUDA torch exist)
  DALLE2_FAST_CUDA_ARCHS      CUDA architectures, default "80;90" (A100, H100)
  DALLE2_FAST_MAX_JOBS        parallel compile jobs, default min(2, cpu count)
  DALLE2_FAST_BUILD_DIR       CMake build directory (default build/cmake-<config>, incremental)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _nvcc() -> str | None:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    cand = Path(cuda_home) / "bin" / "nvcc"
    return str(cand) if cand.exists() else shutil.which("nvcc")


def _want_cuda() -> tuple[bool, str | None]:
    mode = os.environ.get("DALLE2_FAST_CUDA", "auto").strip().lower()
    nvcc = _nvcc()
    import torch

    if mode in ("0", "off", "false", "no"):
        return False, None
    have = nvcc is not None and torch.version.cuda is not None
    if mode in ("1", "on", "true", "yes"):
        if not have:
            raise RuntimeError(
                "DALLE2_FAST_CUDA=1 but CUDA cannot be built: "
                + ("nvcc not found (set CUDA_HOME)" if nvcc is None else "this torch has no CUDA")
            )
        return True, nvcc
    if mode != "auto":
        raise RuntimeError(f"DALLE2_FAST_CUDA must be auto, 1 or 0, got {mode!r}")
    return have, nvcc


def _tool(name: str) -> str | None:
    """Prefer the tool installed beside this interpreter (the venv's cmake>=4 and ninja)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        with_cuda, nvcc = _want_cuda()
        jobs = os.environ.get("DALLE2_FAST_MAX_JOBS") or str(min(2, os.cpu_count() or 1))
        archs = os.environ.get("DALLE2_FAST_CUDA_ARCHS", "80;90")
        tag = f"py{sys.version_info.major}{sys.version_info.minor}-{'cuda' if with_cuda else 'cpu'}"
        build_dir = Path(os.environ.get("DALLE2_FAST_BUILD_DIR", ROOT / "build" / f"cmake-{tag}"))
        build_dir.mkdir(parents=True, exist_ok=True)
        cmake = _tool("cmake")
        ninja = _tool("ninja")
        gen = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
        cfg = [
            cmake, "-S", str(ROOT), "-B", str(build_dir), *gen,
            f"-DPython_EXECUTABLE={sys.executable}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DDALLE2_FAST_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DDALLE2_FAST_CUDA_ARCHS={archs}",
        ]
        if with_cuda:
            cfg.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        print(f"[dalle2_fast] configuring ({'CPU + CUDA ' + archs if with_cuda else 'CPU only'}, {jobs} jobs)")
        subprocess.check_call(cfg)
        subprocess.check_call([cmake, "--build", str(build_dir), "-j", jobs])
        built = build_dir / "dalle2_fast_C.so"
        dest = Path(self.get_ext_fullpath(ext.name))
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        shutil.copyfile(built, tmp)
        os.replace(tmp, dest)  # atomic: a running process keeps its mapped copy


setup(
    ext_modules=[Extension("dalle2_fast._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
)
