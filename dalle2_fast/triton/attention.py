"""Triton flash attention, forward and backward (Dao 2023, FlashAttention-2, Alg. 1 and 2).

Forward: each program owns BLOCK_M query rows of one (batch, head), walks the keys in BLOCK_N
tiles with an online softmax in the exp2 domain (scores pre-multiplied by scale * log2 e) and
saves the natural-log log-sum-exp per row. Backward: a pre-pass computes delta = rowsum(dO * O);
one kernel per key tile accumulates dK and dV over the query tiles, a second per query tile
accumulates dQ over the key tiles (no atomics, deterministic). Both recompute P from the lse.

Conventions match csrc/include/dalle2_fast/attention.h: bottom-right causal alignment, a
hidden key scores -inf, a row that sees no key outputs 0 with lse = +inf (so P = 0 there).
Head dims that are not a power of two (40, 80, 96) are padded inside the kernel: BLOCK_D is the
next power of two and the extra columns are masked loads (zeros), never stored.

Non-finite inputs (ops/attention.py, attention.h): the forward keeps per row "saw a key" and
"poisoned" (non-finite q, scale, or k of a key it sees) flags; a key tile holding a non-finite
v takes a rare path that poisons the columns of the rows that see it (a 0/1 matrix product)
and zeroes it for P V. Poisoned outputs are NaN, poisoned rows' lse NaN. On finite input the
only extra work per key tile is a finiteness reduction over the k and v tiles.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from dalle2_fast.triton.launch import Target, attention_candidates, attention_config, launch, refusal, target_for

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def _visible(offs_m, offs_n, pad_ptr, SQ, SK, HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr):
    """(BLOCK_M, BLOCK_N) bool: query row sees the key."""
    valid = (offs_n[None, :] < SK) & (offs_m[:, None] >= 0)
    if HAS_PAD:
        pad = tl.load(pad_ptr + offs_n, mask=offs_n < SK, other=1)
        valid = valid & (pad == 0)[None, :]
    if CAUSAL:
        valid = valid & (offs_n[None, :] <= offs_m[:, None] + (SK - SQ))
    return valid


@triton.jit
def _scores(q, k, offs_m, offs_n, pad_ptr, SQ, SK, qk_scale,
            HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr):
    """(BLOCK_M, BLOCK_N) scores q k^T in the log2 domain, -inf where the key is hidden."""
    s = tl.dot(q, tl.trans(k), input_precision=PREC)
    s = s * qk_scale
    valid = _visible(offs_m, offs_n, pad_ptr, SQ, SK, HAS_PAD, CAUSAL)
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _not_finite(x):
    return ~(tl.abs(x.to(tl.float32)) <= 3.402823466e38)


@triton.jit
def _fwd_kernel(
    Q, K, V, PAD, O, LSE,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod, spb,
    H, SQ, SK, D, qk_scale,
    HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=(offs_m[:, None] < SQ) & dmask[None, :], other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    # poisoned rows: a non-finite q entry or scale (keys add theirs below); rows that saw a key
    row_bad = tl.max(_not_finite(q).to(tl.int32), 1)
    if qk_scale * 0.0 != 0.0:  # a NaN or infinite scale poisons every row that sees a key
        row_bad = row_bad + 1
    seen = tl.zeros((BLOCK_M,), tl.int32)
    hi = SK
    if CAUSAL:  # keys past the last row's causal end are hidden from the whole tile
        hi = tl.minimum(SK, (pid_m + 1) * BLOCK_M + SK - SQ)
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < SK) & dmask[None, :]
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=kv_mask, other=0.0)
        s = _scores(q, k, offs_m, offs_n, PAD + b * spb, SQ, SK, qk_scale, HAS_PAD, CAUSAL, PREC)
        kbad = tl.max(_not_finite(k).to(tl.int32), 1)  # (BLOCK_N,)
        if tl.max(kbad, 0) + tl.max(row_bad, 0) > 0:  # rare: a poisoned row, or a bad key in this tile
            # "saw a key" only matters for poisoned rows, and a row poisoned here sees this tile's key
            vis = _visible(offs_m, offs_n, PAD + b * spb, SQ, SK, HAS_PAD, CAUSAL)
            seen = tl.maximum(seen, tl.max(vis.to(tl.int32), 1))
            row_bad += tl.max((vis & (kbad[None, :] > 0)).to(tl.int32), 1)
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row hidden so far: no NaN
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None]
        vbad = _not_finite(v)
        if tl.max(tl.max(vbad.to(tl.int32), 1), 0) > 0:  # rare: poison the columns, zero v for P V
            vis = _visible(offs_m, offs_n, PAD + b * spb, SQ, SK, HAS_PAD, CAUSAL)
            hits = tl.dot(vis.to(tl.float32), vbad.to(tl.float32), input_precision=PREC)
            acc = acc + tl.where(hits > 0.0, float("nan"), 0.0)
            v = tl.where(vbad, 0.0, v).to(v.dtype)
        acc = acc + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    nonzero = l_i > 0.0
    poisoned = (row_bad > 0) & (seen > 0)
    out = acc / tl.where(nonzero, l_i, 1.0)[:, None]  # rows that saw no key: acc = 0 -> 0
    out = tl.where(poisoned[:, None], float("nan"), out)
    tl.store(O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod, out.to(O.dtype.element_ty),
             mask=(offs_m[:, None] < SQ) & dmask[None, :])
    lse = tl.where(nonzero, (m_i + tl.math.log2(tl.where(nonzero, l_i, 1.0))) * 0.6931471805599453, float("inf"))
    lse = tl.where(poisoned, float("nan"), lse)
    tl.store(LSE + pid_bh * SQ + offs_m, lse, mask=offs_m < SQ)


@triton.jit
def _bwd_dkdv_kernel(
    Q, K, V, PAD, DO, LSE, DELTA, DK, DV,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod, spb,
    H, SQ, SK, D, qk_scale, scale,
    HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    kv_mask = (offs_n[:, None] < SK) & dmask[None, :]
    k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=kv_mask, other=0.0)
    dk = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    dv = tl.zeros((BLOCK_N, BLOCK_D), tl.float32)
    lo = 0
    if CAUSAL:  # query rows below the tile's first key's causal start never see it
        lo = tl.maximum(0, pid_n * BLOCK_N - (SK - SQ))
        lo = (lo // BLOCK_M) * BLOCK_M
    for m0 in range(lo, SQ, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        qmask = (offs_m[:, None] < SQ) & dmask[None, :]
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=qmask, other=0.0)
        do = tl.load(DO + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod, mask=qmask, other=0.0)
        lse = tl.load(LSE + pid_bh * SQ + offs_m, mask=offs_m < SQ, other=float("inf")) * 1.4426950408889634
        delta = tl.load(DELTA + pid_bh * SQ + offs_m, mask=offs_m < SQ, other=0.0)
        s = _scores(q, k, offs_m, offs_n, PAD + b * spb, SQ, SK, qk_scale, HAS_PAD, CAUSAL, PREC)
        p = tl.math.exp2(s - lse[:, None])  # (BLOCK_M, BLOCK_N); 0 if hidden or the row is empty
        p = tl.where(lse[:, None] == float("inf"), 0.0, p)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    base = pid_bh * SK * D  # dk, dv are freshly allocated contiguous (B, H, SK, D)
    omask = (offs_n[:, None] < SK) & dmask[None, :]
    tl.store(DK + base + offs_n[:, None] * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=omask)
    tl.store(DV + base + offs_n[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=omask)


@triton.jit
def _bwd_dq_kernel(
    Q, K, V, PAD, DO, LSE, DELTA, DQ,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod, spb,
    H, SQ, SK, D, qk_scale, scale,
    HAS_PAD: tl.constexpr, CAUSAL: tl.constexpr, PREC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    qmask = (offs_m[:, None] < SQ) & dmask[None, :]
    q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=qmask, other=0.0)
    do = tl.load(DO + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod, mask=qmask, other=0.0)
    lse = tl.load(LSE + pid_bh * SQ + offs_m, mask=offs_m < SQ, other=float("inf")) * 1.4426950408889634
    delta = tl.load(DELTA + pid_bh * SQ + offs_m, mask=offs_m < SQ, other=0.0)
    dq = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    hi = SK
    if CAUSAL:
        hi = tl.minimum(SK, (pid_m + 1) * BLOCK_M + SK - SQ)
    for n0 in range(0, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        kv_mask = (offs_n[:, None] < SK) & dmask[None, :]
        k = tl.load(K + b * skb + h * skh + offs_n[:, None] * skn + offs_d[None, :] * skd, mask=kv_mask, other=0.0)
        v = tl.load(V + b * svb + h * svh + offs_n[:, None] * svn + offs_d[None, :] * svd, mask=kv_mask, other=0.0)
        s = _scores(q, k, offs_m, offs_n, PAD + b * spb, SQ, SK, qk_scale, HAS_PAD, CAUSAL, PREC)
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(lse[:, None] == float("inf"), 0.0, p)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    tl.store(DQ + pid_bh * SQ * D + offs_m[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=qmask)


def _config(q: torch.Tensor, D: int, kernel: str, target: Target | None) -> dict:
    """Tiles, warps and stages of ``kernel``: interpreter tiles on CPU tensors, else the audited
    choice for this dtype, head dim and GPU (dalle2_fast/triton/launch.py)."""
    block_d = max(16, triton.next_power_of_2(D))
    if target is None:  # interpreter: small tiles (tl.dot needs >= 16)
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_D=block_d, num_warps=1)
    cfg = attention_config(kernel, q.dtype, block_d, target)
    if cfg is None:  # the dispatcher refuses these inputs first (ops.attention._triton_limits)
        raise RuntimeError(refusal(kernel, q.dtype, target, attention_candidates(kernel, block_d), "attention"))
    return cfg


def _precision(q: torch.Tensor, target: Target | None) -> str:
    """tl.dot input precision: exact in the interpreter, 3xTF32 (about fp32 accuracy) for
    float32 on a GPU, native tensor-core math for half types."""
    if target is None:
        return "ieee"
    return "tf32x3" if q.dtype == torch.float32 else "tf32"


def _pad_arg(mask: torch.Tensor | None, q: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
    if mask is None:
        return q.new_zeros((1,), dtype=torch.int8), 0, False
    pad = mask.to(torch.int8).contiguous()  # (B, Sk), 1 = hidden
    return pad, pad.stride(0), True


def _strides(t: torch.Tensor) -> list[int]:
    return [t.stride(0), t.stride(1), t.stride(2), t.stride(3)]


@triton_op("dalle2_fast::attention_fwd_triton", mutates_args=())
def attention_fwd_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None,
    causal: bool, scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    B, H, SQ, D = q.shape
    SK = k.shape[2]
    out = torch.zeros_like(q, memory_format=torch.contiguous_format)
    lse = torch.full((B, H, SQ), float("inf"), dtype=torch.float32, device=q.device)
    if B * H * SQ == 0 or SK == 0:
        return out, lse
    pad, spb, has_pad = _pad_arg(key_padding_mask, q)
    target = target_for(q)
    cfg = _config(q, D, "attention_fwd", target)
    grid = (triton.cdiv(SQ, cfg["BLOCK_M"]), B * H)
    launch(
        _fwd_kernel, grid,
        q, k, v, pad, out, lse, *_strides(q), *_strides(k), *_strides(v), *_strides(out), spb,
        H, SQ, SK, D, scale * LOG2E,
        HAS_PAD=has_pad, CAUSAL=causal, PREC=_precision(q, target), **cfg,
    )
    return out, lse


@triton_op("dalle2_fast::attention_bwd_triton", mutates_args=())
def attention_bwd_triton(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    lse: torch.Tensor, key_padding_mask: torch.Tensor | None, causal: bool, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, SQ, D = q.shape
    SK = k.shape[2]
    dq = torch.zeros((B, H, SQ, D), dtype=q.dtype, device=q.device)
    dk = torch.zeros((B, H, SK, D), dtype=k.dtype, device=q.device)
    dv = torch.zeros((B, H, SK, D), dtype=v.dtype, device=q.device)
    if B * H * SQ == 0 or SK == 0:
        return dq, dk, dv
    delta = (grad_out.float() * out.float()).sum(-1).contiguous()  # (B, H, SQ)
    pad, spb, has_pad = _pad_arg(key_padding_mask, q)
    target = target_for(q)
    common = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out), spb, H, SQ, SK, D, scale * LOG2E, scale)
    flags = dict(HAS_PAD=has_pad, CAUSAL=causal, PREC=_precision(q, target))
    cfg = _config(q, D, "attention_bwd_dkdv", target)  # each kernel tiles on its own
    launch(_bwd_dkdv_kernel, (triton.cdiv(SK, cfg["BLOCK_N"]), B * H),
           q, k, v, pad, grad_out, lse, delta, dk, dv, *common, **flags, **cfg)
    cfg = _config(q, D, "attention_bwd_dq", target)
    launch(_bwd_dq_kernel, (triton.cdiv(SQ, cfg["BLOCK_M"]), B * H),
           q, k, v, pad, grad_out, lse, delta, dq, *common, **flags, **cfg)
    return dq, dk, dv


__all__ = ["attention_fwd_triton", "attention_bwd_triton"]
