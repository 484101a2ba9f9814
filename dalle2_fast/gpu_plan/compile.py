"""Compile one recorded Triton launch for a GPU that is not there, and read its resources.

``prepare`` does what ``JITFunction.run`` does before a launch — bind the arguments, derive
Triton's specialisations (integers equal to 1 or divisible by 16, pointer alignment), parse the
options — but for ``GPUTarget('cuda', arch, 32)`` instead of the active driver. The result is
plain data (no tensors), so it travels to worker processes; ``compile_prepared`` then runs
``triton.compile``, which lowers to PTX and runs Triton's bundled ``ptxas`` on this machine.
Resources: shared memory from the kernel's metadata (what Triton compares with the device's
opt-in limit before launching), registers and spills from the ``ptxas -v`` log.

Relies on Triton internals (``create_function_from_signature``, ``JITFunction._pack_args``,
checked against Triton 3.8); a Triton whose internals moved fails here loudly.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature


@dataclass
class Prepared:
    """Everything ``triton.compile`` needs besides the kernel, as plain data."""

    key: str  # what makes two launches one compile
    arch: int
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict


def _check_kernel(kernel) -> None:
    if not isinstance(kernel, JITFunction):
        raise RuntimeError(f"{getattr(kernel, '__name__', kernel)} is a {type(kernel).__name__}, not a JITFunction: "
                           "the audit compiles real kernels, run it without TRITON_INTERPRET=1")


def parse_ptxas(log: str) -> dict:
    """Registers, spill stores/loads and stack frame from a ``ptxas -v`` log."""
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    if regs is None or spill is None:
        raise RuntimeError(f"could not read registers / spills from the ptxas log:\n{log}")
    return {"regs": int(regs.group(1)), "spill": int(spill.group(1)), "spill_loads": int(spill.group(2)),
            "stack": int(stack.group(1)) if stack else 0}


def prepare(kernel, args: tuple, meta: dict, arch: int) -> Prepared:
    """Bind ``kernel[grid](*args, **meta)`` for sm_``arch`` as Triton's launcher would."""
    _check_kernel(kernel)
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(meta)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, opts)
    key = repr((kernel.cache_key, arch, sorted(signature.items()), sorted(constexprs.items()), sorted(attrs.items()),
                sorted(options.__dict__.items())))
    return Prepared(key, arch, dict(signature), dict(constexprs), dict(attrs), dict(options.__dict__))


def compile_prepared(kernel, p: Prepared) -> dict:
    """{'smem', 'regs', 'spill', 'spill_loads', 'stack', 'num_warps', 'num_stages', 'seconds'}."""
    _check_kernel(kernel)
    log = io.StringIO()
    t0 = time.perf_counter()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True  # the log of the -v ptxas run Triton does anyway
        knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its log
        compiled = triton.compile(ASTSource(kernel, p.signature, p.constexprs, p.attrs),
                                  target=GPUTarget("cuda", p.arch, 32), options=p.options)
    return {"smem": int(compiled.metadata.shared), **parse_ptxas(log.getvalue()),
            "num_warps": int(compiled.metadata.num_warps), "num_stages": int(compiled.metadata.num_stages),
            "seconds": round(time.perf_counter() - t0, 2)}


def compile_launch(kernel, args: tuple, meta: dict, arch: int) -> dict:
    """Resources of ``kernel[grid](*args, **meta)`` compiled for sm_``arch``."""
    return compile_prepared(kernel, prepare(kernel, args, meta, arch))


class DiskCache:
    """Compile results by key in a JSON-lines file, appended as they come (a long audit that is
    interrupted resumes where it stopped). Keys contain the kernel's source hash, so an edited
    kernel is compiled again."""

    def __init__(self, path: Path | None):
        self.path, self.data = path, {}
        if path is not None and path.exists():
            for line in path.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    k, v = json.loads(line)
                    self.data[k] = v

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value: dict) -> None:
        self.data[key] = value
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                f.write(json.dumps([key, value]) + "\n")
