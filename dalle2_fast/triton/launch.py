"""Launch configurations for the Triton kernels, chosen from the audited resource table.

No GPU has run these kernels yet, so a configuration is never guessed on the device: every
candidate below was compiled ahead of time for sm_80 and sm_90 (``python -m
dalle2_fast.gpu_plan.triton_audit``, which runs Triton's own compiler and bundled ptxas on a
CPU-only machine) and its shared memory, registers and spills are stored in ``_audited.py``.
On a CUDA tensor a wrapper asks :func:`choose` for its kernel: the first candidate, in the
order listed, whose audited shared memory fits the device's per-block limit and that does not
spill registers; if every fitting candidate spills, the one that spills least. A candidate
that was never audited is never chosen, and when none fits, :func:`choose` returns None and the
op's dispatcher (``ops/*._triton_limits``) refuses the ``triton`` backend with the reason, so
the next backend runs instead of a launch that would raise ``OutOfResources``.

Devices of another architecture use the audited numbers of the nearest audited one at or
below (sm_86 / sm_89 use sm_80's, sm_100 / sm_120 use sm_90's: an estimate, see
docs/gpu-readiness.md) against their own limit. CPU tensors (the interpreter, tests) get
small interpreter tiles and never consult the table.

This module imports torch only (not triton): dispatch can ask it cheaply.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from dataclasses import dataclass
from typing import Any, Iterator

import torch


@dataclass(frozen=True)
class Target:
    """A GPU a launch is planned for: compute capability (``arch`` = 10 * major + minor) and
    the shared memory one block may opt into, in bytes."""

    arch: int
    smem: int
    name: str = ""
    regs: int = 65536  # 32-bit registers one block may use (every architecture since sm_50)
    threads: int = 1024


# The architectures the audit compiles for, with their opt-in shared memory per block
# (CUDA C Programming Guide, "Compute Capabilities": 163 KiB on 8.0, 227 KiB on 9.0).
AUDITED_TARGETS: dict[int, Target] = {
    80: Target(80, 163 * 1024, "A100 (sm_80)"),
    90: Target(90, 227 * 1024, "H100/H200 (sm_90)"),
}


def audited_arch(arch: int) -> int:
    """The audited architecture whose numbers stand in for ``arch``."""
    below = [a for a in AUDITED_TARGETS if a <= arch]
    return max(below) if below else min(AUDITED_TARGETS)


def cfg_key(meta: dict[str, Any]) -> str:
    """Canonical text of a launch configuration: 'BLOCK_M=128,BLOCK_N=64,num_stages=3,...'."""
    return ",".join(f"{k}={meta[k]}" for k in sorted(meta))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- the target
_OVERRIDE: contextvars.ContextVar[Target | None] = contextvars.ContextVar("launch_target", default=None)


@contextlib.contextmanager
def planning_for(target: Target) -> Iterator[None]:
    """Within the block, wrappers plan launches for ``target`` whatever their tensors' device
    (the audit runs the real wrappers on small CPU tensors this way)."""
    tok = _OVERRIDE.set(target)
    try:
        yield
    finally:
        _OVERRIDE.reset(tok)


@functools.lru_cache(maxsize=None)
def _device_target(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    major, minor = torch.cuda.get_device_capability(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or AUDITED_TARGETS[audited_arch(10 * major + minor)].smem
    return Target(10 * major + minor, int(smem), props.name)


def target_for(t: torch.Tensor) -> Target | None:
    """The GPU a launch on ``t`` runs on; None for the interpreter (CPU tensors)."""
    override = _OVERRIDE.get()
    if override is not None:
        return override
    if t.device.type != "cuda":
        return None
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return _device_target(index)


# ----------------------------------------------------------------------------- launching
@dataclass
class Launch:
    """One kernel launch as a wrapper would issue it (recorded by the audit)."""

    kernel: Any
    grid: tuple
    args: tuple
    meta: dict[str, Any]


_RECORDER: contextvars.ContextVar[list | None] = contextvars.ContextVar("launch_recorder", default=None)


@contextlib.contextmanager
def recording() -> Iterator[list[Launch]]:
    """Within the block, :func:`launch` records launches instead of running them."""
    out: list[Launch] = []
    tok = _RECORDER.set(out)
    try:
        yield out
    finally:
        _RECORDER.reset(tok)


def launch(kernel, grid: tuple, *args, **meta) -> None:
    """``wrap_triton(kernel)[grid](*args, **meta)``, or a record of it under :func:`recording`."""
    rec = _RECORDER.get()
    if rec is not None:
        rec.append(Launch(kernel, tuple(grid), args, dict(meta)))
        return
    from torch.library import wrap_triton

    wrap_triton(kernel)[grid](*args, **meta)


# ----------------------------------------------------------------------------- choosing
_TABLE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("launch_table", default=None)


def _table() -> dict:
    table = _TABLE.get()
    if table is not None:
        return table
    from dalle2_fast.triton import _audited

    return _audited.TABLE


@contextlib.contextmanager
def using_table(table) -> Iterator[None]:
    """Within the block, choose from ``table`` (a mapping like ``_audited.TABLE``) instead of
    the committed one: the audit while it regenerates the table, and tests of the rule."""
    tok = _TABLE.set(table)
    clear_caches()
    try:
        yield
    finally:
        _TABLE.reset(tok)
        clear_caches()


def audited(kernel: str, arch: int, dtype: torch.dtype, meta: dict[str, Any]) -> dict | None:
    """The audited resources {'smem', 'regs', 'spill'} of ``kernel`` with ``meta`` for the
    audited architecture standing in for ``arch`` (max over every audited case), or None."""
    return _table().get(f"{kernel}|sm_{audited_arch(arch)}|{dtype_name(dtype)}|{cfg_key(meta)}")


def over_limits(res: dict, num_warps: int, target: Target) -> list[str]:
    """What keeps a block with these resources from launching on ``target`` ([] = it fits).
    Triton raises OutOfResources for shared memory over the opt-in limit and for more threads
    than the registers allow (registers are allocated per warp in units of 256)."""
    out = []
    if res["smem"] > target.smem:
        out.append(f"shared memory {res['smem']} B > {target.smem} B")
    regs_per_warp = -(-res["regs"] * 32 // 256) * 256
    if regs_per_warp * num_warps > target.regs or num_warps * 32 > target.threads:
        out.append(f"{res['regs']} registers x {num_warps * 32} threads > {target.regs} per block")
    return out


def choose(kernel: str, dtype: torch.dtype, target: Target, candidates: list[dict]) -> dict | None:
    """The configuration to launch ``kernel`` with on ``target`` (see the module docstring)."""
    fitting = []
    for meta in candidates:
        res = audited(kernel, target.arch, dtype, meta)
        if res is not None and not over_limits(res, meta.get("num_warps", 4), target):
            if res["spill"] == 0:
                return dict(meta)
            fitting.append((res["spill"], len(fitting), meta))
    return dict(min(fitting)[2]) if fitting else None


def refusal(kernel: str, dtype: torch.dtype, target: Target, candidates: list[dict], what: str) -> str:
    """Why no candidate of ``kernel`` can launch on ``target``, in words."""
    known = [(r["smem"], cfg_key(m)) for m in candidates if (r := audited(kernel, target.arch, dtype, m))]
    arch = audited_arch(target.arch)
    if not known:
        return (f"{what}: no launch configuration of {kernel} was audited for {dtype_name(dtype)} on sm_{arch} "
                f"(regenerate dalle2_fast/triton/_audited.py with python -m dalle2_fast.gpu_plan.triton_audit --write)")
    smem, cfg = min(known)
    return (f"{what}: no audited configuration of {kernel} fits sm_{target.arch} ({target.smem // 1024} KiB shared "
            f"memory per block); the smallest needs {smem // 1024} KiB ({cfg}, audited on sm_{arch})")


# ----------------------------------------------------------------------------- candidates
def _att(bm: int, bn: int, bd: int, warps: int, stages: int) -> dict:
    return dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps, num_stages=stages)


# Per attention kernel, largest tiles and deepest pipelines first. The first entry of each list
# is the configuration the wrappers used before the audit (it stays the choice wherever it fits
# and does not spill: half precision). float32 tiles cost twice the shared memory and 3xTF32
# (tf32x3) keeps three operand splits live, so float32 usually lands on a later entry.
_ATT_SHAPES: dict[str, dict[str, list[tuple[int, int, int, int]]]] = {
    # key: "small" (BLOCK_D <= 64), "medium" (128), "large" (256): (BLOCK_M, BLOCK_N, warps, stages)
    "attention_fwd": {
        "small": [(128, 64, 4, 3), (128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2),
                  (64, 32, 8, 1), (32, 32, 4, 1), (16, 16, 4, 1)],
        "medium": [(128, 32, 8, 2), (128, 32, 8, 1), (64, 64, 8, 2), (64, 32, 8, 2), (64, 32, 4, 1),
                   (32, 32, 4, 1), (16, 16, 4, 1)],
        "large": [(64, 32, 8, 1), (64, 16, 8, 1), (32, 32, 4, 1), (32, 16, 4, 1), (16, 16, 4, 1)],
    },
    "attention_bwd_dkdv": {  # BLOCK_N keys own dK, dV accumulators: small BLOCK_N first to shrink
        "small": [(128, 64, 4, 3), (64, 64, 8, 2), (128, 32, 8, 2), (64, 32, 8, 2), (32, 32, 8, 2),
                  (32, 32, 4, 2), (32, 32, 4, 1), (16, 16, 4, 1)],
        "medium": [(128, 32, 8, 2), (64, 32, 8, 2), (64, 32, 8, 1), (32, 32, 8, 1), (32, 32, 4, 1),
                   (16, 16, 4, 1)],
        "large": [(64, 32, 8, 1), (32, 32, 8, 1), (32, 16, 8, 1), (32, 32, 4, 1), (16, 16, 4, 1)],
    },
    "attention_bwd_dq": {
        "small": [(128, 64, 4, 3), (128, 64, 8, 2), (128, 32, 8, 2), (64, 64, 8, 2), (64, 32, 8, 2),
                  (64, 32, 4, 2), (32, 32, 4, 2), (32, 32, 4, 1), (16, 16, 4, 1)],
        "medium": [(128, 32, 8, 2), (64, 32, 8, 2), (64, 32, 8, 1), (32, 32, 8, 1), (32, 32, 4, 1),
                   (16, 16, 4, 1)],
        "large": [(64, 32, 8, 1), (32, 32, 8, 1), (32, 16, 8, 1), (32, 32, 4, 1), (16, 16, 4, 1)],
    },
}
ATTENTION_KERNELS = tuple(_ATT_SHAPES)
ATTENTION_BLOCK_DS = (16, 32, 64, 128, 256)


def attention_candidates(kernel: str, block_d: int) -> list[dict]:
    size = "small" if block_d <= 64 else ("medium" if block_d <= 128 else "large")
    return [_att(bm, bn, block_d, w, s) for bm, bn, w, s in _ATT_SHAPES[kernel][size]]


@functools.lru_cache(maxsize=None)
def attention_config(kernel: str, dtype: torch.dtype, block_d: int, target: Target) -> dict | None:
    return choose(kernel, dtype, target, attention_candidates(kernel, block_d))


def codebook_candidates(dtype: torch.dtype, D: int) -> list[dict]:
    bd = 64 if D >= 64 else (32 if D >= 32 else 16)
    bk = 128 if dtype in (torch.float16, torch.bfloat16) else 64

    def c(bn, k, w, s):
        return dict(BLOCK_N=bn, BLOCK_K=k, BLOCK_D=bd, num_warps=w, num_stages=s)

    return [c(128, bk, 8, 3), c(128, bk, 8, 2), c(128, 64, 8, 2), c(64, 64, 4, 2), c(64, 32, 4, 1), c(32, 32, 4, 1)]


@functools.lru_cache(maxsize=None)
def codebook_config(dtype: torch.dtype, D: int, target: Target) -> dict | None:
    return choose("nearest_code", dtype, target, codebook_candidates(dtype, D))


def adagn_candidates(Cg: int, S: int) -> list[dict]:
    """One configuration per (group size, spatial size): a (BLOCK_C x BLOCK_S) tile of at most
    4096 elements for 8 warps. The set it can return is finite (ADAGN_TILES)."""
    bc = min(_next_pow2(Cg), 16)
    return [dict(BLOCK_C=bc, BLOCK_S=min(_next_pow2(S), max(32, 4096 // bc)), num_warps=8, num_stages=3)]


ADAGN_TILES = tuple((bc, bs) for bc in (1, 2, 4, 8, 16) for bs in (1 << i for i in range(13)) if bs <= max(32, 4096 // bc))
ADAGN_KERNELS = ("adagn_fwd", "adagn_bwd")


@functools.lru_cache(maxsize=None)
def adagn_config(kernel: str, dtype: torch.dtype, Cg: int, S: int, target: Target) -> dict | None:
    return choose(kernel, dtype, target, adagn_candidates(Cg, S))


SAMPLING_CANDIDATES = [dict(BLOCK=1024, num_warps=4, num_stages=3)]


@functools.lru_cache(maxsize=None)
def sampling_config(dtype: torch.dtype, target: Target) -> dict | None:
    return choose("sampling_step", dtype, target, SAMPLING_CANDIDATES)


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def clear_caches() -> None:
    """Forget chosen configurations (after the table is regenerated in-process)."""
    for f in (attention_config, codebook_config, adagn_config, sampling_config, _device_target):
        f.cache_clear()


__all__ = ["Target", "AUDITED_TARGETS", "target_for", "planning_for", "launch", "recording", "choose",
           "audited", "over_limits", "refusal", "attention_config", "codebook_config", "adagn_config", "sampling_config",
           "attention_candidates", "codebook_candidates", "adagn_candidates", "SAMPLING_CANDIDATES"]
