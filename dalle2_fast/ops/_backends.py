"""One dispatch mechanism for every kernel family.

Backends: ``torch`` (plain PyTorch reference, always available), ``cpu`` (C++ extension),
``cuda`` (C++/CUDA extension), ``triton`` (Triton; on CPU tensors only under
``TRITON_INTERPRET=1``, which tests use).

Each family (``KernelFamily``) registers one implementation per backend with the devices and
dtypes it supports plus an optional ``limits`` check. ``not_supported_reasons`` explains a
refusal in words. ``select`` runs the first backend of the family's per-device priority list
that has no reasons; a backend forced by argument or by ``DALLE2_FAST_BACKEND`` that cannot
run raises ``BackendNotSupported`` with its reasons — it never silently falls back.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from dalle2_fast import _ext

BACKENDS = ("torch", "cpu", "cuda", "triton")
ENV_VAR = "DALLE2_FAST_BACKEND"

# Default priority per device type. Justification: on the CPU the C++ kernels beat eager torch
# for every family measured (benchmarks/results/); on CUDA — not measured yet, no GPU so far —
# Triton first (tensor cores for half types, launch configurations audited offline to fit the
# GPU: triton/launch.py), then our CUDA C++ kernels, then torch: the order of their roofline
# estimates (docs/gpu-readiness.md) until GPU measurements replace it. A family may override.
DEFAULT_PRIORITY: dict[str, tuple[str, ...]] = {
    "cpu": ("cpu", "torch"),
    "cuda": ("triton", "cuda", "torch"),
}


class BackendNotSupported(RuntimeError):
    """A requested backend cannot run these inputs; the message lists the reasons."""


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _find_triton() -> str:
    # find_spec, not import: importing triton costs ~1 s and most runs never need it.
    return "" if importlib.util.find_spec("triton") is not None else "triton is not installed"


_TRITON_ERROR = _find_triton()


def _triton_import_error() -> str:
    return _TRITON_ERROR


def _cuda_visible() -> bool:
    return torch.cuda.is_available()


def backend_device_reasons(backend: str, device: torch.device, needs_extension: bool = True) -> list[str]:
    """Why ``backend`` cannot run on ``device`` at all (independent of the op). A ``cpu``
    implementation built on torch itself (e.g. attention's SDPA path) passes
    ``needs_extension=False``."""
    dev = device.type
    if backend == "torch":
        return []
    if backend == "cpu":
        if dev != "cpu":
            return [f"cpu: runs on CPU tensors, got {dev}"]
        if needs_extension and not _ext.loaded():
            return [f"cpu: {_ext.load_error()}"]
        return []
    if backend == "cuda":
        if not _ext.loaded():
            return [f"cuda: {_ext.load_error()}"]
        if not _ext.has_cuda_kernels():
            return ["cuda: extension built without CUDA kernels (DALLE2_FAST_CUDA=0 or no nvcc)"]
        if dev != "cuda":
            return [f"cuda: runs on CUDA tensors, got {dev}" + ("" if _cuda_visible() else " (no GPU visible)")]
        return []
    if backend == "triton":
        err = _triton_import_error()
        if err:
            return [f"triton: {err}"]
        if dev == "cuda":
            return []
        if dev == "cpu":
            if triton_interpret():
                return []
            return ["triton: CPU tensors only under TRITON_INTERPRET=1 (the interpreter, for tests)"]
        return [f"triton: unsupported device {dev}"]
    return [f"unknown backend {backend!r}; expected one of {BACKENDS}"]


def backend_status(device: str) -> dict[str, str]:
    """{backend: '' if usable on this device type else the reason}, for `info`."""
    d = torch.device(device)
    out = {}
    for b in BACKENDS:
        reasons = backend_device_reasons(b, d)
        if device == "cuda" and not _cuda_visible() and not reasons:
            reasons = [f"{b}: no GPU visible"]
        out[b] = "; ".join(reasons)
    return out


def forced_backend(backend: str | None) -> str | None:
    """The backend the caller or ``DALLE2_FAST_BACKEND`` forces, or None for automatic."""
    if backend is None:
        backend = os.environ.get(ENV_VAR) or None
        if backend is not None and backend.lower() in ("auto", ""):
            backend = None
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    return backend


@dataclass
class Impl:
    backend: str
    fn: Callable
    dtypes: tuple[torch.dtype, ...]
    devices: tuple[str, ...]
    limits: Callable[..., list[str]] | None = None
    needs_extension: bool = True  # only meaningful for the `cpu` backend


@dataclass
class KernelFamily:
    """Backends of one op family and the rule for choosing among them."""

    name: str
    priority: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_PRIORITY))
    impls: dict[str, Impl] = field(default_factory=dict)
    notes: str = ""  # shown by `info` (e.g. why a backend is absent on a device)

    def register(
        self,
        backend: str,
        *,
        dtypes: Sequence[torch.dtype],
        devices: Sequence[str],
        limits: Callable[..., list[str]] | None = None,
        needs_extension: bool = True,
    ):
        """Decorator: ``fn`` implements this family on ``backend``. ``limits(*tensors, **kw)``
        returns reasons (strings) for inputs it cannot handle beyond device and dtype."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}")

        def deco(fn):
            self.impls[backend] = Impl(backend, fn, tuple(dtypes), tuple(devices), limits, needs_extension)
            return fn

        return deco

    def not_supported_reasons(self, backend: str, tensor: torch.Tensor, *args, **kwargs) -> list[str]:
        """Reasons ``backend`` cannot run these inputs; [] means it can. ``tensor`` is the
        primary input (its device and dtype decide); the rest goes to the backend's limits."""
        impl = self.impls.get(backend)
        if impl is None:
            return [f"{backend}: no {self.name} kernel for this backend"]
        reasons = backend_device_reasons(backend, tensor.device, impl.needs_extension)
        if reasons:
            return reasons
        if tensor.device.type not in impl.devices:
            reasons.append(f"{backend}: {self.name} runs on {'/'.join(impl.devices)}, got {tensor.device.type}")
        if tensor.dtype not in impl.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in impl.dtypes)
            reasons.append(f"{backend}: {self.name} supports {names}, got {str(tensor.dtype).replace('torch.', '')}")
        if not reasons and impl.limits is not None:
            reasons.extend(f"{backend}: {r}" for r in impl.limits(tensor, *args, **kwargs))
        return reasons

    def select(self, tensor: torch.Tensor, *args, backend: str | None = None, **kwargs) -> Impl:
        """The implementation to run (see the module docstring for the rule)."""
        forced = forced_backend(backend)
        if forced is not None:
            reasons = self.not_supported_reasons(forced, tensor, *args, **kwargs)
            if reasons:
                raise BackendNotSupported(
                    f"{self.name}: backend {forced!r} was requested but cannot run these inputs: "
                    + "; ".join(reasons)
                )
            return self.impls[forced]
        order = self.priority.get(tensor.device.type, ("torch",))
        all_reasons = []
        for b in order:
            reasons = self.not_supported_reasons(b, tensor, *args, **kwargs)
            if not reasons:
                return self.impls[b]
            all_reasons.extend(reasons)
        raise BackendNotSupported(f"{self.name}: no backend can run these inputs: " + "; ".join(all_reasons))

    def available(self, device: str, dtype: torch.dtype | None = None) -> list[str]:
        """Backends that have a kernel for this family and can run on ``device`` now."""
        out = []
        for b, impl in self.impls.items():
            if device not in impl.devices or (dtype is not None and dtype not in impl.dtypes):
                continue
            if not backend_device_reasons(b, torch.device(device), impl.needs_extension):
                out.append(b)
        return out


FAMILIES: dict[str, KernelFamily] = {}


def family(name: str, priority: dict[str, tuple[str, ...]] | None = None) -> KernelFamily:
    fam = KernelFamily(name, dict(priority or DEFAULT_PRIORITY))
    FAMILIES[name] = fam
    return fam
