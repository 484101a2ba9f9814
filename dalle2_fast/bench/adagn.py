"""Adaptive GroupNorm benchmark cases (issue 3).

The ResBlock step ``silu(group_norm(x, 32, w, b) * (1 + scale) + shift)``, forward and
forward+backward (grads for x, w, b, scale, shift), in NCHW and channels-last.
CPU: float32 (8, 256, 32, 32) and (8, 256, 64, 64). GPU: bfloat16 (16, 320, 64, 64) and
(16, 640, 32, 32), channels-last. Variants: our backends (``torch`` is ``adagn_ref``, a
written-out two-pass reference, slower than ``F.group_norm``), the baseline ``eager``
(``F.group_norm`` -> * (1 + scale) + shift -> silu, what a model without our op runs),
``torch.compile`` of that same eager function (a peer), and a plain copy of x (the bandwidth
bound at this size, forward only).

Bytes (the minimum a fused kernel must move): forward reads x and writes y (2 tensors);
forward+backward adds reading x and dy and writing dx (5 tensors in all).
"""
from __future__ import annotations

import torch

from dalle2_fast.bench.core import Case, Variant
import torch.nn.functional as F

from dalle2_fast.ops import adagn
from dalle2_fast.ops.adagn import adagn_family

FAMILY = "adagn"
GROUPS = 32


def _shapes(device: str, quick: bool) -> list[tuple[tuple[int, ...], torch.dtype, tuple[str, ...]]]:
    if device == "cuda":
        if quick:
            return [((16, 320, 32, 32), torch.bfloat16, ("cl",))]
        return [((16, 320, 64, 64), torch.bfloat16, ("cl",)), ((16, 640, 32, 32), torch.bfloat16, ("cl",))]
    if quick:
        return [((4, 128, 32, 32), torch.float32, ("nchw", "cl"))]
    return [((8, 256, 32, 32), torch.float32, ("nchw", "cl")), ((8, 256, 64, 64), torch.float32, ("nchw", "cl"))]


def _eager(x, w, b, sc, sh):  # the baseline: eager PyTorch as a model would write it
    view = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
    return F.silu(F.group_norm(x, GROUPS, w, b) * (1 + sc.view(view)) + sh.view(view))


_compiled = None


def _compiled_fn():
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_eager)
    return _compiled


def _fwd(fn, x, ps):
    return lambda: fn(x, *ps)


def _fwd_bwd(fn, x, ps, dy):
    def run():
        y = fn(x, *ps)
        return torch.autograd.grad(y, [x, *ps], dy)

    return run


def _name(mode, shape, layout, dt) -> str:
    return f"{mode}-{'x'.join(map(str, shape))}-{layout}-{str(dt).replace('torch.', '')}"


def specs(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Name and params of every case, without building tensors (for the roofline)."""
    return [dict(name=_name(mode, shape, layout, dt), params=dict(shape=shape, dtype=str(dt), layout=layout, mode=mode))
            for shape, dt, layouts in _shapes(device, quick) for layout in layouts for mode in ("fwd", "fwd+bwd")]


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    out = []
    g = torch.Generator(device="cpu").manual_seed(0)
    for shape, dt, layouts in _shapes(device, quick):
        B, C = shape[:2]
        for layout in layouts:
            x = torch.randn(*shape, generator=g).to(device=device, dtype=dt)
            if layout == "cl":
                x = x.contiguous(memory_format=torch.channels_last)
            params = [torch.randn(*s, generator=g).mul_(0.3).to(device=device, dtype=dt)
                      for s in ((C,), (C,), (B, C), (B, C))]
            dy = torch.randn(*shape, generator=g).to(device=device, dtype=dt)
            if layout == "cl":
                dy = dy.contiguous(memory_format=torch.channels_last)
            dst = torch.empty_like(x)
            for mode in ("fwd", "fwd+bwd"):
                xg = x.detach().requires_grad_(mode != "fwd")
                ps = [p.detach().requires_grad_(mode != "fwd") for p in params]

                def wrap(fn):
                    return _fwd(fn, xg, ps) if mode == "fwd" else _fwd_bwd(fn, xg, ps, dy)

                variants, missing = [], {}
                for bk in adagn_family.available(device, dt):
                    if bk == "triton" and device == "cpu":
                        continue  # the interpreter is a test tool, not a CPU backend
                    variants.append(Variant(bk, wrap(lambda x, *p, bk=bk: adagn(
                        x, GROUPS, *p, act="silu", backend=bk)), "ours"))
                variants.append(Variant("eager", wrap(_eager), "baseline"))
                variants.append(Variant("torch.compile", wrap(lambda *a: _compiled_fn()(*a)), "peer"))
                if mode == "fwd":  # a copy moves the same 2 tensors as the forward
                    variants.append(Variant("copy (bound)", lambda dst=dst, x=x: dst.copy_(x), "bound"))
                    # ... and a clone also pays for a fresh output, as every op here does (first-
                    # touch page faults dominate above glibc's 32 MB mmap threshold).
                    variants.append(Variant("clone (bound)", lambda x=x: x.clone(), "bound"))
                n = x.numel() * x.element_size()
                name = _name(mode, shape, layout, dt)
                out.append(Case(FAMILY, name, dict(shape=shape, dtype=str(dt), layout=layout, mode=mode),
                                variants, "eager", bytes=(2 if mode == "fwd" else 5) * n,
                                missing=missing, device=device))
    return out
