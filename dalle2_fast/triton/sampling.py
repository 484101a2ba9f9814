"""Triton fused sampling step: the math of csrc/include/dalle2_fast/sampling.h, one program per
(sample, BLOCK elements); every switch (sampler kind, parameterisation, guidance, clipping,
learned variance, noise, previous x0, the inpainting blend) is a constexpr so each variant
compiles branch-free.
Computes in float32 (inputs float32 / float16 / bfloat16)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from dalle2_fast.triton.launch import SAMPLING_CANDIDATES, launch, refusal, sampling_config, target_for


@triton.jit
def _sampling_step_kernel(
    x_ptr, m_ptr, coef_ptr, g_ptr, thr_ptr, z_ptr, prev_ptr, k_ptr, w_ptr, kz_ptr, out_ptr, x0_ptr,
    B, N, N_OUT, W_N, W_BSTRIDE,
    KIND: tl.constexpr, PRED: tl.constexpr, CFG: tl.constexpr, CLIP: tl.constexpr,
    LEARNED: tl.constexpr, NOISE: tl.constexpr, PREV: tl.constexpr, WANT_X0: tl.constexpr,
    KNOWN: tl.constexpr, KNOISE: tl.constexpr, W_FULL: tl.constexpr, BLOCK: tl.constexpr,
):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    b64 = b.to(tl.int64)
    crow = coef_ptr + b64 * 12
    a = tl.load(crow + 0)
    s = tl.load(crow + 1)
    inv_a = tl.load(crow + 2)
    inv_s = tl.load(crow + 3)
    c0 = tl.load(crow + 4)
    c1 = tl.load(crow + 5)
    c2 = tl.load(crow + 6)
    c3 = tl.load(crow + 7)
    c4 = tl.load(crow + 8)
    c5 = tl.load(crow + 9)
    x = tl.load(x_ptr + b64 * N + offs, mask=mask, other=0.0).to(tl.float32)
    mc = tl.load(m_ptr + b64 * N_OUT + offs, mask=mask, other=0.0).to(tl.float32)
    m = mc
    if CFG:
        mu = tl.load(m_ptr + (b64 + B) * N_OUT + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + b64)
        m = mu + g * (mc - mu)
    if PRED == 0:
        eps = m
        x0 = (x - s * m) * inv_a
    elif PRED == 1:
        x0 = m
        eps = (x - a * m) * inv_s
    else:
        x0 = a * x - s * m
        eps = s * x + a * m
    if CLIP:
        thr = tl.load(thr_ptr + b64)
        # NaN propagates (x0 or thr), as the reference's torch.minimum / maximum: the default
        # min/max would return the bound for a NaN x0
        x0 = tl.minimum(tl.maximum(x0, -thr, propagate_nan=tl.PropagateNan.ALL), thr,
                        propagate_nan=tl.PropagateNan.ALL) / thr
        eps = (x - a * x0) * inv_s
    z = 0.0
    if NOISE:
        z = tl.load(z_ptr + b64 * N + offs, mask=mask, other=0.0).to(tl.float32)
    if KIND == 1:
        if LEARNED:
            v = tl.load(m_ptr + b64 * N_OUT + N + offs, mask=mask, other=0.0).to(tl.float32)
            f = (v + 1.0) * 0.5
            sigma = c4 * tl.exp(0.5 * (f * c3 + (1.0 - f) * c2))
        else:
            sigma = c5
        out = c0 * x0 + c1 * x + sigma * z
    elif KIND == 2:
        out = c0 * x0 + c1 * eps + c2 * z
    elif KIND == 3:
        p = 0.0
        if PREV:
            p = tl.load(prev_ptr + b64 * N + offs, mask=mask, other=0.0).to(tl.float32)
        out = c0 * x + c1 * (c2 * x0 + c3 * p)
    else:
        out = x0
    if KNOWN:  # inpainting: the known region forward-noised to the target level (sampling.h)
        ka = tl.load(crow + 10)
        ks = tl.load(crow + 11)
        kn = tl.load(k_ptr + b64 * N + offs, mask=mask, other=0.0).to(tl.float32)
        if W_FULL:
            widx = offs
        else:
            widx = offs % W_N
        w = tl.load(w_ptr + b64 * W_BSTRIDE + widx, mask=mask, other=0.0).to(tl.float32)
        kz = 0.0
        if KNOISE:
            kz = tl.load(kz_ptr + b64 * N + offs, mask=mask, other=0.0).to(tl.float32)
        out = w * (ka * kn + ks * kz) + (1.0 - w) * out
    tl.store(out_ptr + b64 * N + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
    if WANT_X0:
        tl.store(x0_ptr + b64 * N + offs, x0.to(x0_ptr.dtype.element_ty), mask=mask)


@triton_op("dalle2_fast::sampling_step_triton", mutates_args=())
def sampling_step_triton_op(
    x: torch.Tensor, model_out: torch.Tensor, coefs: torch.Tensor, guidance: torch.Tensor | None,
    thresh: torch.Tensor | None, noise: torch.Tensor | None, prev_x0: torch.Tensor | None, kind: int,
    pred: int, learned_var: bool, want_x0: bool, known: torch.Tensor | None = None,
    mask: torch.Tensor | None = None, known_noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.contiguous()
    m = model_out.contiguous()
    B = x.shape[0]
    N = x.numel() // B
    n_out = m.numel() // m.shape[0]
    c = coefs.float().contiguous()
    g = guidance.float().contiguous() if guidance is not None else c
    th = thresh.float().contiguous() if thresh is not None else c
    z = noise.to(x.dtype).contiguous() if noise is not None else x
    p = prev_x0.to(x.dtype).contiguous() if prev_x0 is not None else x
    blend = known is not None and mask is not None and kind != 0
    kn = known.to(x.dtype).contiguous() if blend else x
    w = mask.to(x.dtype).contiguous() if blend else x
    kz = known_noise.to(x.dtype).contiguous() if blend and known_noise is not None else x
    w_n = w.numel() // w.shape[0] if blend else N
    w_bstride = 0 if (blend and w.shape[0] == 1 and B > 1) else w_n
    out = torch.empty_like(x)
    want = want_x0 and kind != 0
    x0 = torch.empty_like(x) if want else x.new_empty((0,))
    target = target_for(x)
    cfg = dict(BLOCK=256) if target is None else sampling_config(x.dtype, target)  # interpreter | audited
    if cfg is None:  # the dispatcher refuses these inputs first (ops.sampling._triton_limits)
        raise RuntimeError(refusal("sampling_step", x.dtype, target, SAMPLING_CANDIDATES, "sampling step"))
    grid = (B, triton.cdiv(N, cfg["BLOCK"]))
    launch(
        _sampling_step_kernel, grid,
        x, m, c, g, th, z, p, kn, w, kz, out, x0 if want else out, B, N, n_out, w_n, w_bstride,
        KIND=kind, PRED=pred, CFG=guidance is not None, CLIP=thresh is not None,
        LEARNED=bool(learned_var and kind == 1), NOISE=noise is not None, PREV=prev_x0 is not None,
        WANT_X0=want, KNOWN=blend, KNOISE=blend and known_noise is not None, W_FULL=w_n == N, **cfg,
    )
    return out, x0


def sampling_step_triton(x, model_out, coefs, guidance, thresh, noise, prev_x0, kind, pred, learned_var, want_x0,
                         known=None, mask=None, known_noise=None):
    return sampling_step_triton_op(x, model_out, coefs, guidance, thresh, noise, prev_x0, kind, pred,
                                   learned_var, want_x0, known, mask, known_noise)


__all__ = ["sampling_step_triton"]
