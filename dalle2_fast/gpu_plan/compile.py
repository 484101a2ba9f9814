"""Compile one recorded Triton launch for a GPU that is not there, and read its resources.

It does what ``JITFunction.run`` does before a launch — bind the arguments, derive Triton's
specialisations (integers equal to 1 or divisible by 16, pointer alignment), parse the options —
but for ``GPUTarget('cuda', arch, 32)`` instead of the active driver, then runs
``triton.compile``, which lowers to PTX and runs Triton's bundled ``ptxas`` on this machine.
Resources: shared memory from the kernel's metadata (what Triton compares with the device's
opt-in limit before launching), registers and spills from the ``ptxas -v`` log.

Relies on Triton internals (``create_function_from_signature``, ``JITFunction._pack_args``,
checked against Triton 3.8); a Triton whose internals moved fails here loudly.
"""
from __future__ import annotations

import contextlib
import io
import re
import time

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

_CACHE: dict[tuple, dict] = {}  # compile key -> resources, for the life of the process


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


def _prepare(kernel, args: tuple, meta: dict, arch: int):
    _check_kernel(kernel)
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(meta)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bound, spec, opts = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, opts)
    key = (kernel.cache_key, arch, repr(sorted(signature.items())), repr(sorted(constexprs.items())),
           repr(sorted(attrs.items())), repr(sorted(options.__dict__.items())))
    return key, target, options, signature, constexprs, attrs


def compile_key(kernel, args: tuple, meta: dict, arch: int) -> tuple:
    """What makes two launches one compile: the kernel's source hash, the architecture, the
    signature with Triton's specialisations, constexprs and options."""
    return _prepare(kernel, args, meta, arch)[0]


def compile_launch(kernel, args: tuple, meta: dict, arch: int) -> dict:
    """Resources of ``kernel[grid](*args, **meta)`` compiled for sm_``arch``:
    {'smem', 'regs', 'spill', 'spill_loads', 'stack', 'num_warps', 'num_stages', 'seconds', 'cached'}."""
    key, target, options, signature, constexprs, attrs = _prepare(kernel, args, meta, arch)
    if key in _CACHE:
        return {**_CACHE[key], "cached": True}
    log = io.StringIO()
    t0 = time.perf_counter()
    with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True  # the log of the -v ptxas run Triton does anyway
        knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its log
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
    res = {"smem": int(compiled.metadata.shared), **parse_ptxas(log.getvalue()),
           "num_warps": int(compiled.metadata.num_warps), "num_stages": int(compiled.metadata.num_stages),
           "seconds": round(time.perf_counter() - t0, 2)}
    _CACHE[key] = res
    return {**res, "cached": False}
