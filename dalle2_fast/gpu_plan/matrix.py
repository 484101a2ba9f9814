"""The launch matrix the Triton audit compiles: every configuration the wrappers can launch.

A ``Case`` calls the real launch wrappers of dalle2_fast/triton/ on small CPU tensors while
``launch.planning_for(target)`` makes them plan for a GPU and ``launch.recording()`` keeps the
launches instead of running them; the audit then compiles each recorded launch for the target.
The tensors only decide dtypes, strides and the integer specialisations Triton would see
(values of 1 and multiples of 16), so they are small.

Axes (the full matrix; ``ci_subset`` picks one case per wrapper x dtype x architecture with the
other axes rotated so every constexpr value still appears):
- attention: float32 / float16 / bfloat16 x head dim 16, 32, 40, 64, 80, 96, 128, 200, 256 (every
  BLOCK_D; multiples of 16 and not) x causal x key padding (Sk = 77, cross-attention to text
  tokens) -> forward, backward dK/dV, backward dQ;
- nearest_code: dtypes x codebook width 3, 16, 32, 64, 256 (every BLOCK_D);
- adagn: dtypes x SiLU x NCHW / channels-last x every (BLOCK_C, BLOCK_S) tile the wrapper can
  choose (group sizes 1..16+, spatial sizes 1..4096+), groups = 1 and groups = C included;
- sampling_step: dtypes x every variant the public ops reach (predict_x0 / DDPM / DDIM /
  DPM-Solver++(2M) x eps / x0 / v x CFG x clipping x learned variance x noise x previous x0 x x0 out).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable

import torch

from dalle2_fast.triton import launch as L

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HEAD_DIMS = (16, 32, 40, 64, 80, 96, 128, 200, 256)
CODE_WIDTHS = (3, 16, 32, 64, 256)
FLAGS = ((False, False), (True, False), (False, True), (True, True))  # (causal, key padding)


@dataclass
class Case:
    family: str
    params: dict
    run: Callable[[], None]  # calls the launch wrappers (under recording())
    sizing: bool = False  # also compile every other candidate configuration with these arguments

    @property
    def name(self) -> str:
        return self.family + "(" + ", ".join(f"{k}={v}" for k, v in self.params.items()) + ")"


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- attention
def _attention_run(dtype, D, causal, pad):
    def run():
        from dalle2_fast.triton.attention import attention_bwd_triton, attention_fwd_triton

        B, H, SQ = 2, 2, 128
        SK = 77 if pad else SQ
        q = torch.randn(B, H, SQ, D, generator=_g(0)).to(dtype)
        k = torch.randn(B, H, SK, D, generator=_g(1)).to(dtype)
        v = torch.randn(B, H, SK, D, generator=_g(2)).to(dtype)
        mask = (torch.arange(SK) >= SK - 5).expand(B, SK).contiguous() if pad else None
        out, lse = attention_fwd_triton(q, k, v, mask, causal, D**-0.5)
        attention_bwd_triton(torch.randn_like(q), q, k, v, out, lse, mask, causal, D**-0.5)
    return run


def attention_cases() -> list[Case]:
    out = []
    for dtype, D, (causal, pad) in itertools.product(DTYPES, HEAD_DIMS, FLAGS):
        sizing = D in L.ATTENTION_BLOCK_DS and not causal and not pad
        out.append(Case("attention", dict(dtype=L.dtype_name(dtype), D=D, causal=causal, pad=pad),
                        _attention_run(dtype, D, causal, pad), sizing))
    return out


# ----------------------------------------------------------------------------- nearest_code
def _codebook_run(dtype, D):
    def run():
        from dalle2_fast.triton.codebook import nearest_code_triton

        x = torch.randn(1000, D, generator=_g(0)).to(dtype)
        codes = torch.randn(512, D, generator=_g(1)).to(dtype)
        nearest_code_triton(x, codes)
    return run


def codebook_cases() -> list[Case]:
    return [Case("nearest_code", dict(dtype=L.dtype_name(dt), D=D), _codebook_run(dt, D), sizing=D in (16, 32, 64))
            for dt, D in itertools.product(DTYPES, CODE_WIDTHS)]


# ----------------------------------------------------------------------------- adagn
def _adagn_shape(bc: int, bs: int) -> tuple[int, int, int]:
    """(C, groups, S) whose wrapper tile is (bc, bs): groups = C for one-channel groups,
    groups = 1 for the widest, two groups otherwise; S = bs, or twice the cap at the cap."""
    Cg = {1: 1, 2: 2, 4: 3, 8: 8, 16: 24}[bc]  # 3 -> 4 and 24 -> 16: groups of awkward size
    G = 4 if bc == 1 else (1 if bc == 16 else 2)
    cap = max(32, 4096 // bc)
    return Cg * G, G, (2 * bs if bs == cap else bs)


def _adagn_run(dtype, C, G, S, silu, nhwc):
    def run():
        from dalle2_fast.triton.adagn import adagn_backward_triton, adagn_forward_triton

        x = torch.randn(2, C, S, generator=_g(0)).to(dtype)
        if nhwc:
            x = x.transpose(1, 2).contiguous().transpose(1, 2)  # channels-last (B, C, S)
        w, b = torch.randn(C, generator=_g(1)), torch.randn(C, generator=_g(2))
        sc, sh = torch.randn(2, C, generator=_g(3)), torch.randn(2, C, generator=_g(4))
        y, mean, rstd = adagn_forward_triton(x, G, w, b, sc, sh, 1e-5, silu)
        adagn_backward_triton(torch.randn_like(y), x, mean, rstd, G, w, b, sc, sh, silu)
    return run


def adagn_cases() -> list[Case]:
    out = []
    for dtype, (bc, bs), silu, nhwc in itertools.product(DTYPES, L.ADAGN_TILES, (False, True), (False, True)):
        if nhwc and bs == 1:
            continue  # one position: channels-last and contiguous are the same strides
        C, G, S = _adagn_shape(bc, bs)
        out.append(Case("adagn", dict(dtype=L.dtype_name(dtype), C=C, groups=G, S=S, silu=silu,
                                      layout="nhwc" if nhwc else "nchw"), _adagn_run(dtype, C, G, S, silu, nhwc)))
    return out


# ----------------------------------------------------------------------------- sampling_step
def sampling_variants() -> list[dict]:
    """Every (kind, pred, cfg, clip, learned, noise, prev, want_x0) the public ops can pass: the
    dynamic-threshold pre-pass (kind 0), ddpm_step, ddim_step / predict_x0, dpmpp_2m_step."""
    out = []
    for pred, cfg in itertools.product((0, 1, 2), (False, True)):
        out.append(dict(kind=0, pred=pred, cfg=cfg, clip=False, learned=False, noise=False, prev=False, want=False))
        for clip, learned, noise, want in itertools.product((False, True), repeat=4):
            out.append(dict(kind=1, pred=pred, cfg=cfg, clip=clip, learned=learned, noise=noise, prev=False, want=want))
        for clip, noise, want in itertools.product((False, True), repeat=3):
            out.append(dict(kind=2, pred=pred, cfg=cfg, clip=clip, learned=False, noise=noise, prev=False, want=want))
        for clip, prev in itertools.product((False, True), repeat=2):
            out.append(dict(kind=3, pred=pred, cfg=cfg, clip=clip, learned=False, noise=False, prev=prev, want=True))
    out = [dict(v, known=0) for v in out]
    # inpainting blend (known / mask / known_noise): 1 = a per-channel mask with its noise, 2 = a
    # one-channel mask without noise (the broadcast index); on each sampler's widest variant
    for kind, known in itertools.product((1, 2, 3), (1, 2)):
        out.append(dict(kind=kind, pred=2, cfg=True, clip=True, learned=kind == 1, noise=kind != 3, prev=kind == 3,
                        want=True, known=known))
    return out


def _sampling_run(dtype, v):
    def run():
        from dalle2_fast.triton.sampling import sampling_step_triton

        B, shape = 2, (3, 16, 16)
        x = torch.randn(B, *shape, generator=_g(0)).to(dtype)
        rows, ch = (2 * B if v["cfg"] else B), (2 * shape[0] if v["learned"] else shape[0])
        m = torch.randn(rows, ch, *shape[1:], generator=_g(1)).to(dtype)
        coefs = torch.rand(B, 12, generator=_g(2)) + 0.5
        extra = torch.randn(B, *shape, generator=_g(3)).to(dtype)
        known = v.get("known", 0)
        mask = (torch.rand(B, 1 if known == 2 else shape[0], *shape[1:], generator=_g(4)) > 0.5).to(dtype)
        sampling_step_triton(x, m, coefs, torch.full((B,), 3.0) if v["cfg"] else None,
                             torch.ones(B) if v["clip"] else None, extra if v["noise"] else None,
                             extra if v["prev"] else None, v["kind"], v["pred"], v["learned"], v["want"],
                             x if known else None, mask if known else None, extra if known == 1 else None)
    return run


def sampling_cases() -> list[Case]:
    return [Case("sampling_step", dict(dtype=L.dtype_name(dt), **v), _sampling_run(dt, v))
            for dt, v in itertools.product(DTYPES, sampling_variants())]


FAMILIES = {"attention": attention_cases, "nearest_code": codebook_cases, "adagn": adagn_cases,
            "sampling_step": sampling_cases}


def full_matrix(families=None) -> list[Case]:
    return [c for f, make in FAMILIES.items() if families is None or f in families for c in make()]


def features(case: Case) -> set[tuple]:
    """What a case exercises: its dtype and every value that selects a different constexpr
    or integer specialisation in the kernels it launches."""
    p = case.params
    f = {("dtype", p["dtype"])}
    if case.family == "attention":
        f |= {("BLOCK_D", max(16, L._next_pow2(p["D"]))), ("D%16", p["D"] % 16 == 0),
              ("causal", p["causal"]), ("pad", p["pad"])}
    elif case.family == "nearest_code":
        f |= {("BLOCK_D", 64 if p["D"] >= 64 else (32 if p["D"] >= 32 else 16)), ("D%16", p["D"] % 16 == 0)}
    elif case.family == "adagn":
        Cg = p["C"] // p["groups"]
        bc, bs = L.adagn_candidates(Cg, p["S"])[0]["BLOCK_C"], L.adagn_candidates(Cg, p["S"])[0]["BLOCK_S"]
        f |= {("BLOCK_C", bc), ("BLOCK_S", "1" if bs == 1 else ("cap" if bs == max(32, 4096 // bc) else "mid")),
              ("groups=1", p["groups"] == 1), ("Cg=1", Cg == 1), ("silu", p["silu"]), ("layout", p["layout"])}
    else:
        f |= {(k, v) for k, v in p.items() if k != "dtype"}
    return {(case.family,) + x for x in f}


def ci_subset(cases: list[Case]) -> list[Case]:
    """The fewest cases (greedy set cover) that still exercise every feature of the given
    cases: every kernel in every dtype, every BLOCK_D, both head-dim alignments, every flag,
    tile class and sampler switch. The audit crosses them with both architectures."""
    todo = set().union(*(features(c) for c in cases)) if cases else set()
    chosen: list[Case] = []
    while todo:
        best = max(cases, key=lambda c: len(features(c) & todo))  # first of the best: deterministic
        chosen.append(best)
        todo -= features(best)
    return chosen
