"""Codebook nearest-neighbour benchmark cases (issue: foundation).

CPU: N=16384, D=256, K=8192 float32 — ours (`cpu`, `torch` ref backend) against
``torch.cdist(x, C).argmin(1)`` (the baseline) and faiss-cpu ``IndexFlatL2`` k=1 (a peer).
GPU: N=65536, K=16384, D=256 in float32 and bfloat16 against an ``mm``-based distance + argmin
(baseline) and a bare ``torch.mm`` of the same shape (the bound).
"""
from __future__ import annotations

import importlib.util

import torch

from dalle2_fast.bench.core import Case, Variant
from dalle2_fast.ops import nearest_code
from dalle2_fast.ops.codebook import nearest_code_family

FAMILY = "codebook"


def _shapes(device: str, quick: bool) -> list[tuple[int, int, int, torch.dtype]]:
    if device == "cuda":
        if quick:
            return [(8192, 4096, 256, torch.float32), (8192, 4096, 256, torch.bfloat16)]
        return [(n, 16384, 256, dt) for n in (16384, 65536) for dt in (torch.float32, torch.bfloat16)]
    if quick:
        return [(2048, 1024, 64, torch.float32)]
    return [(4096, 1024, 64, torch.float32), (16384, 8192, 256, torch.float32)]


def _mm_argmin(x: torch.Tensor, c: torch.Tensor):
    d = (x * x).sum(1, keepdim=True) - 2 * (x @ c.T) + (c * c).sum(1)[None]  # (N, K) materialised
    return d.argmin(1)


def _name(n, k, d, dt) -> str:
    return f"N{n}-K{k}-D{d}-{str(dt).replace('torch.', '')}"


def specs(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Name and params of every case, without building tensors (for the roofline)."""
    return [dict(name=_name(n, k, d, dt), params=dict(N=n, K=k, D=d, dtype=str(dt))) for n, k, d, dt in _shapes(device, quick)]


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    out = []
    g = torch.Generator(device="cpu").manual_seed(0)
    for n, k, d, dt in _shapes(device, quick):
        x = torch.randn(n, d, generator=g).to(device=device, dtype=dt)
        c = torch.randn(k, d, generator=g).to(device=device, dtype=dt)
        variants, missing = [], {}
        for b in nearest_code_family.available(device, dt):
            if b == "triton" and device == "cpu":
                continue  # the interpreter is a test tool, not a CPU backend
            variants.append(Variant(b, (lambda b=b, x=x, c=c: nearest_code(x, c, backend=b)), "ours"))
        if device == "cpu":
            variants.append(Variant("cdist", lambda x=x, c=c: torch.cdist(x, c).argmin(1), "baseline"))
            if importlib.util.find_spec("faiss") is not None:
                import faiss

                index = faiss.IndexFlatL2(d)
                index.add(c.float().numpy())
                xn = x.float().numpy()
                variants.append(Variant("faiss", lambda index=index, xn=xn: index.search(xn, 1), "peer"))
            else:
                missing["faiss"] = "faiss-cpu not installed"
            baseline = "cdist"
        else:
            variants.append(Variant("mm+argmin", lambda x=x, c=c: _mm_argmin(x, c), "baseline"))
            variants.append(Variant("bare mm (bound)", lambda x=x, c=c: x @ c.T, "bound"))
            baseline = "mm+argmin"
        name = _name(n, k, d, dt)
        out.append(Case(FAMILY, name, dict(N=n, K=k, D=d, dtype=str(dt)), variants, baseline,
                        flops=2.0 * n * k * d,
                        missing=missing, device=device))
    return out
