"""Triton fused adaptive GroupNorm, forward and backward.

One program per (batch, group). The group is walked in (BLOCK_C channels x BLOCK_S positions)
tiles through (channel, spatial) strides, so NCHW and channels-last data use the same kernel.
Statistics, as in csrc/include/dalle2_fast/adagn.h: values are shifted by the group's first
element, each tile's (mean, M2) is taken two-pass in registers and merged with Chan's formula,
all in float32. The second loop writes ``act((x - mean) * a_c + c_c)``. Backward: per-channel
sums of dh and dh * xhat (written out for the parameter gradients), then the fused dx loop.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from dalle2_fast.triton.launch import Target, adagn_candidates, adagn_config, launch, refusal, target_for


@triton.jit
def _silu_fwd(h):
    return tl.where(h == float("-inf"), float("nan"), h * tl.sigmoid(h))  # silu(-inf) = NaN, as F.silu


@triton.jit
def _silu_bwd(h, dout):
    s = tl.sigmoid(h)
    return dout * s * (1.0 + h * (1.0 - s))


@triton.jit
def _adagn_fwd_kernel(
    x_ptr, y_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, mean_ptr, rstd_ptr,
    C, S, G, Cg, sb, sc, ss, eps,
    SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0)
    bi = pid // G
    g = pid % G
    c0 = g * Cg
    base = bi.to(tl.int64) * sb
    k = tl.load(x_ptr + base + c0 * sc).to(tl.float32)  # shift: the group's first element
    n_acc = 0.0
    mean_acc = 0.0  # of x - k
    m2_acc = 0.0
    for cs in range(0, Cg, BLOCK_C):
        cl = cs + tl.arange(0, BLOCK_C)
        cmask = cl < Cg
        for s0 in range(0, S, BLOCK_S):
            sp = s0 + tl.arange(0, BLOCK_S)
            mask = cmask[:, None] & (sp < S)[None, :]
            offs = base + (c0 + cl)[:, None] * sc + sp[None, :].to(tl.int64) * ss
            d = tl.where(mask, tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - k, 0.0)
            cnt = tl.sum(mask.to(tl.float32))
            tmean = tl.sum(d) / cnt
            dev = tl.where(mask, d - tmean, 0.0)
            tm2 = tl.sum(dev * dev)
            n = n_acc + cnt
            delta = tmean - mean_acc
            mean_acc = mean_acc + delta * (cnt / n)
            m2_acc = m2_acc + tm2 + delta * delta * n_acc * (cnt / n)
            n_acc = n
    mean = k + mean_acc
    rstd = 1.0 / tl.sqrt(m2_acc / n_acc + eps)
    tl.store(mean_ptr + pid, mean)
    tl.store(rstd_ptr + pid, rstd)
    for cs in range(0, Cg, BLOCK_C):
        cl = cs + tl.arange(0, BLOCK_C)
        cmask = cl < Cg
        c = c0 + cl
        w = tl.load(w_ptr + c, mask=cmask, other=1.0)
        bb = tl.load(b_ptr + c, mask=cmask, other=0.0)
        sc_ = tl.load(scale_ptr + bi * C + c, mask=cmask, other=0.0)
        sh = tl.load(shift_ptr + bi * C + c, mask=cmask, other=0.0)
        a = rstd * w  # fwd_coef in adagn.h: h = ((x - mean) a + c) g + shift, the reference's order
        cc = bb
        g1 = 1.0 + sc_
        for s0 in range(0, S, BLOCK_S):
            sp = s0 + tl.arange(0, BLOCK_S)
            mask = cmask[:, None] & (sp < S)[None, :]
            offs = base + c[:, None] * sc + sp[None, :].to(tl.int64) * ss
            xv = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            h = ((xv - mean) * a[:, None] + cc[:, None]) * g1[:, None] + sh[:, None]
            if SILU:
                h = _silu_fwd(h)
            tl.store(y_ptr + offs, h.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _adagn_bwd_kernel(
    dy_ptr, x_ptr, dx_ptr, mean_ptr, rstd_ptr, w_ptr, b_ptr, scale_ptr, shift_ptr, S_ptr, T_ptr,
    C, S, G, Cg, sb, sc, ss,
    SILU: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0)
    bi = pid // G
    g = pid % G
    c0 = g * Cg
    base = bi.to(tl.int64) * sb
    mean = tl.load(mean_ptr + pid)
    rstd = tl.load(rstd_ptr + pid)
    su = 0.0
    sv = 0.0
    for cs in range(0, Cg, BLOCK_C):
        cl = cs + tl.arange(0, BLOCK_C)
        cmask = cl < Cg
        c = c0 + cl
        w = tl.load(w_ptr + c, mask=cmask, other=1.0)
        bb = tl.load(b_ptr + c, mask=cmask, other=0.0)
        sc_ = tl.load(scale_ptr + bi * C + c, mask=cmask, other=0.0)
        sh = tl.load(shift_ptr + bi * C + c, mask=cmask, other=0.0)
        a = rstd * w
        cc = bb
        g1 = 1.0 + sc_
        s_acc = tl.zeros((BLOCK_C,), tl.float32)
        t_acc = tl.zeros((BLOCK_C,), tl.float32)
        for s0 in range(0, S, BLOCK_S):
            sp = s0 + tl.arange(0, BLOCK_S)
            mask = cmask[:, None] & (sp < S)[None, :]
            offs = base + c[:, None] * sc + sp[None, :].to(tl.int64) * ss
            xm = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - mean
            dh = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if SILU:
                dh = _silu_bwd((xm * a[:, None] + cc[:, None]) * g1[:, None] + sh[:, None], dh)
            dh = tl.where(mask, dh, 0.0)
            s_acc += tl.sum(dh, axis=1)
            t_acc += tl.sum(dh * xm, axis=1)
        t_acc = t_acc * rstd
        tl.store(S_ptr + bi * C + c, s_acc, mask=cmask)
        tl.store(T_ptr + bi * C + c, t_acc, mask=cmask)
        gc = tl.where(cmask, w * (1.0 + sc_), 0.0)
        su += tl.sum(gc * s_acc)
        sv += tl.sum(gc * t_acc)
    n = (Cg * S) * 1.0
    u = su / n
    v = sv / n
    for cs in range(0, Cg, BLOCK_C):
        cl = cs + tl.arange(0, BLOCK_C)
        cmask = cl < Cg
        c = c0 + cl
        w = tl.load(w_ptr + c, mask=cmask, other=1.0)
        bb = tl.load(b_ptr + c, mask=cmask, other=0.0)
        sc_ = tl.load(scale_ptr + bi * C + c, mask=cmask, other=0.0)
        sh = tl.load(shift_ptr + bi * C + c, mask=cmask, other=0.0)
        a = rstd * w
        cc = bb
        g1 = 1.0 + sc_
        gc = w * (1.0 + sc_)  # bwd_coef / grad_x in adagn.h
        q = -rstd * rstd * v
        for s0 in range(0, S, BLOCK_S):
            sp = s0 + tl.arange(0, BLOCK_S)
            mask = cmask[:, None] & (sp < S)[None, :]
            offs = base + c[:, None] * sc + sp[None, :].to(tl.int64) * ss
            xm = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32) - mean
            dh = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if SILU:
                dh = _silu_bwd((xm * a[:, None] + cc[:, None]) * g1[:, None] + sh[:, None], dh)
            dx = rstd * (gc[:, None] * dh - u) + q * xm
            tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- host side
def _layout(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(kernel-layout contiguous data, nhwc): mirrors csrc/include/dalle2_fast/adagn_host.h."""
    nhwc = x.dim() >= 3 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()
    return (x.movedim(1, -1).contiguous() if nhwc else x.contiguous()), nhwc


def _strides(B: int, C: int, S: int, nhwc: bool) -> tuple[int, int, int]:
    return (S * C, 1, C) if nhwc else (C * S, S, 1)  # (batch, channel, spatial)


def _params(x, weight, bias, scale, shift):
    B, C = x.shape[0], x.shape[1]
    f32 = dict(device=x.device, dtype=torch.float32)

    def get(t, shape, fill):
        return t.float().contiguous() if t is not None else torch.full(shape, fill, **f32)

    return get(weight, (C,), 1.0), get(bias, (C,), 0.0), get(scale, (B, C), 0.0), get(shift, (B, C), 0.0)


def _config(x: torch.Tensor, Cg: int, S: int, kernel: str, target: Target | None) -> dict:
    if target is None:  # interpreter: few, large tiles
        bc = min(triton.next_power_of_2(Cg), 16)
        return dict(BLOCK_C=bc, BLOCK_S=min(triton.next_power_of_2(S), max(16, 2048 // bc)), num_warps=1)
    cfg = adagn_config(kernel, x.dtype, Cg, S, target)  # audited for this dtype and GPU (launch.py)
    if cfg is None:  # the dispatcher refuses these inputs first (ops.adagn._triton_limits)
        raise RuntimeError(refusal(kernel, x.dtype, target, adagn_candidates(Cg, S), "adagn"))
    return cfg


@triton_op("dalle2_fast::adagn_forward_triton", mutates_args=())
def adagn_forward_triton(
    x: torch.Tensor, num_groups: int, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
    scale: Optional[torch.Tensor], shift: Optional[torch.Tensor], eps: float, silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, C = x.shape[0], x.shape[1]
    S = 1
    for d in x.shape[2:]:
        S *= d
    xk, nhwc = _layout(x)
    y = torch.empty_like(xk)
    mean = torch.empty((B, num_groups), device=x.device, dtype=torch.float32)
    rstd = torch.empty((B, num_groups), device=x.device, dtype=torch.float32)
    if B > 0 and C > 0 and S > 0:
        w, b, sc, sh = _params(x, weight, bias, scale, shift)
        Cg = C // num_groups
        sb, sc_, ss = _strides(B, C, S, nhwc)
        launch(
            _adagn_fwd_kernel, (B * num_groups,),
            xk, y, w, b, sc, sh, mean, rstd, C, S, num_groups, Cg, sb, sc_, ss, eps,
            SILU=silu, **_config(x, Cg, S, "adagn_fwd", target_for(x)),
        )
    return (y.movedim(-1, 1) if nhwc else y), mean, rstd


@triton_op("dalle2_fast::adagn_backward_triton", mutates_args=())
def adagn_backward_triton(
    grad_out: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, num_groups: int,
    weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], scale: Optional[torch.Tensor],
    shift: Optional[torch.Tensor], silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    B, C = x.shape[0], x.shape[1]
    S = 1
    for d in x.shape[2:]:
        S *= d
    xk, nhwc = _layout(x)
    dyk = grad_out.to(x.dtype).movedim(1, -1).contiguous() if nhwc else grad_out.to(x.dtype).contiguous()
    dx = torch.empty_like(xk)
    w, b, sc, sh = _params(x, weight, bias, scale, shift)
    Ssum = torch.zeros((B, C), device=x.device, dtype=torch.float32)
    Tsum = torch.zeros((B, C), device=x.device, dtype=torch.float32)
    if B > 0 and C > 0 and S > 0:
        Cg = C // num_groups
        sb, sc_, ss = _strides(B, C, S, nhwc)
        launch(
            _adagn_bwd_kernel, (B * num_groups,),
            dyk, xk, dx, mean.float().contiguous(), rstd.float().contiguous(), w, b, sc, sh, Ssum, Tsum,
            C, S, num_groups, Cg, sb, sc_, ss, SILU=silu, **_config(x, Cg, S, "adagn_bwd", target_for(x)),
        )
    one_plus = sc + 1.0  # (B, C)
    dweight = (one_plus * Tsum).sum(0)
    dbias = (one_plus * Ssum).sum(0)
    dscale = w[None] * Tsum + b[None] * Ssum
    return (dx.movedim(-1, 1) if nhwc else dx), dweight, dbias, dscale, Ssum


__all__ = ["adagn_forward_triton", "adagn_backward_triton"]
