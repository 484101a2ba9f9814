"""Flash attention: ``attention(q, k, v, causal=False, key_padding_mask=None, scale=None)``.

The op behind the U-Net's spatial attention (Sq = Sk = H*W), the diffusion / AR prior's causal
transformer and the U-Net's cross-attention to text and CLIP tokens (Sq != Sk). Kernels tile the
keys with an online softmax (Dao et al. 2022; Dao 2023): the Sq x Sk score matrix is never
materialised, and the backward recomputes it from the saved log-sum-exp.

Semantics (the same on every backend):
- ``key_padding_mask`` (B, Sk) bool, **True = padding**: that key is ignored by every query
  (the convention of ``nn.MultiheadAttention``'s ``key_padding_mask``; the opposite of SDPA's
  ``attn_mask``, where True means "take part").
- ``causal`` is **bottom-right aligned**: query i sees key j iff j <= i + (Sk - Sq). For
  Sq = Sk this is the usual lower triangle; for Sq < Sk (decoding with a KV cache) the last
  query sees every key; for Sq > Sk the first Sq - Sk queries see no key. (SDPA's
  ``is_causal`` is top-left aligned; FlashAttention >= 2.1 is bottom-right, like us.)
- A query that sees no key (all its keys padded and/or causally hidden, or Sk = 0) outputs
  zeros, not NaN, and passes zero gradient (for finite inputs).
- B = 0, H = 0 or Sq = 0 gives an empty output.

Non-finite inputs (NaN, +-Inf; the same on every backend, ``_poisoned`` states it in code):
- A key hidden from a query (padded, or causally hidden) takes no part in that query's output:
  its ``k`` and ``v`` may hold anything, NaN included. A query that sees no key outputs zeros
  whatever ``q``, ``k``, ``v`` and ``scale`` hold.
- A query that sees at least one key outputs NaN in its whole row when ``q`` of that row, or
  ``k`` of any key it sees, has a non-finite entry, or when ``scale`` is non-finite; and NaN
  in column d when ``v[..., j, d]`` is non-finite for a key j it sees. Inf becomes NaN too: a
  flash kernel's online softmax cannot reproduce IEEE Inf arithmetic tile by tile (an Inf
  score's limit, a zero weight times an Inf value), so the one answer every backend gives
  alike is "non-finite in, NaN out" for exactly the outputs that the non-finite input reaches.
- Finite inputs whose scores overflow float32 (|scale * q.k| > 3e38) are outside this contract.
- Gradients are specified for finite inputs only; with non-finite inputs they hold NaN.

Backends: ``torch`` (explicit math, ``attention_ref``), ``cpu`` (see ``CPU_BACKEND_REASON``),
``cuda`` (C++/CUDA flash forward and backward, csrc/cuda/attention_cuda.cu), ``triton``
(dalle2_fast/triton/attention.py).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dalle2_fast import _ext
from dalle2_fast.ops._backends import family
from dalle2_fast.triton.launch import ATTENTION_KERNELS

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256

# Measured on the 2-core AVX-512 development VM (shared, so absolute rates vary with load),
# (B, H, S, D) = (4, 8, 1024, 64) float32 forward, SDPA timed in the same run:
#   `python -m dalle2_fast.bench --ops attention` (benchmarks/results/cpu-xeon-2core/attention-cpu.md):
#   SDPA 40.5 GFLOP/s, our C++ flash kernel 13.4 GFLOP/s (0.33x); forward + backward 0.54x;
#   an earlier standalone timing on the same VM under less load: SDPA 0.21 TFLOP/s, C++ 0.02-0.06.
# SDPA wins everywhere measured, so the `cpu` backend runs SDPA.
CPU_BACKEND_REASON = (
    "attention on CPU runs torch's F.scaled_dot_product_attention (with our padding/causal/"
    "empty-row semantics): it measured ~3-9x faster than our C++ flash kernel for "
    "(4, 8, 1024, 64) float32 on the development CPU; the C++ kernel is kept as the host-side "
    "test of the math the CUDA kernel shares (csrc/include/dalle2_fast/attention.h); except "
    "float32 inference with at most FEW_ROWS (16) queries per head (decoding, a frozen prefix's "
    "trailing tokens), which runs the C++ kernel's few-rows loops: 2.3x SDPA with its guard for "
    "(8, 4, 3, 81, 64) on the development CPU (dalle2_fast/bench/attention.py's decode case)"
)

# On CUDA (no GPU measurement yet): triton (tensor cores for half types, 3xTF32 for float32),
# then the CUDA C++ kernel (scalar FP32 FMAs, no tensor cores), then the explicit-score torch
# reference — the order of their roofline times (bench/roofline.attention_order, tested).
CUDA_ORDER_REASON = (
    "on CUDA, unmeasured: triton, then cuda, then torch, by roofline estimate (docs/gpu-readiness.md); "
    "the CUDA kernel is scalar FP32 with no tensor cores: for bfloat16 its ceiling is ~15x below "
    "the GPU's SDPA (FlashAttention/cuDNN) on A100 and H100"
)
attention_family = family("attention", priority={"cpu": ("cpu", "torch"), "cuda": ("triton", "cuda", "torch")})
attention_family.notes = CPU_BACKEND_REASON + "; " + CUDA_ORDER_REASON  # printed by `info`


def _hidden_mask(
    B: int, Sq: int, Sk: int, causal: bool, key_padding_mask: torch.Tensor | None, device,
    row0: int = 0, rows: int | None = None,
) -> torch.Tensor | None:
    """Bool mask, True = key hidden from the query, for query rows [row0, row0 + rows),
    broadcastable to (B, H, rows, Sk): (rows, Sk) for causal only, (B, 1, 1, Sk) for padding
    only, (B, 1, rows, Sk) for both."""
    rows = Sq - row0 if rows is None else rows
    hidden = None
    if causal:
        # bottom-right alignment: query i sees key j iff j <= i + (Sk - Sq)
        i = torch.arange(row0, row0 + rows, device=device)[:, None]
        hidden = torch.arange(Sk, device=device)[None, :] > i + (Sk - Sq)  # (rows, Sk)
    if key_padding_mask is not None:
        pad = key_padding_mask[:, None, None, :]  # (B, 1, 1, Sk)
        hidden = pad if hidden is None else (hidden | pad)
    return hidden


def _poisoned(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool,
    key_padding_mask: torch.Tensor | None, scale: float,
) -> torch.Tensor:
    """Bool (B, H, Sq, D): True where a non-finite input reaches the output (module docstring).

    O((Sq + Sk) * D) work: query i sees the open (unpadded) keys j < end_i (end_i = Sk without
    ``causal``), so "a bad key among those it sees" is a prefix count over the keys."""
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    bad = ~torch.isfinite(k).all(-1, keepdim=True) | ~torch.isfinite(v)  # (B, H, Sk, D)
    open_ = torch.ones((1, 1, Sk, 1), dtype=torch.bool, device=q.device)
    if key_padding_mask is not None:
        open_ = ~key_padding_mask[:, None, :, None]  # (B, 1, Sk, 1)
    bad = bad & open_
    if causal:
        end = (torch.arange(Sq, device=q.device) + (Sk - Sq + 1)).clamp(0, Sk)  # (Sq,)

        def seen_by_rows(t):  # (b, h, Sk, d) -> (b, h, Sq, d): any of keys [0, end_i)
            c = torch.cumsum(t.to(torch.int32), dim=2)
            zero = c.new_zeros((c.shape[0], c.shape[1], 1, c.shape[3]))
            c = torch.cat([zero, c], dim=2)  # c[:, :, e] = count in [0, e)
            return c.index_select(2, end) > 0

        reach, has_key = seen_by_rows(bad), seen_by_rows(open_)
    else:  # (B, H, 1, D), (B or 1, 1, 1, 1)
        reach, has_key = bad.any(2, keepdim=True), open_.any(2, keepdim=True)
    row_bad = ~torch.isfinite(q).all(-1, keepdim=True)  # (B, H, Sq, 1)
    if not math.isfinite(scale):
        row_bad = torch.ones_like(row_bad)
    return (reach | row_bad) & has_key


def _finite_or_zero(t: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))


def _apply_poison(out: torch.Tensor, poison: torch.Tensor | None) -> torch.Tensor:
    """NaN where ``poison``; a product (not a select) so that gradients through it are NaN too."""
    return out if poison is None else out * torch.where(poison, float("nan"), 1.0).to(out.dtype)


def _nonfinite_guard(q, k, v, causal, key_padding_mask, scale):
    """(q, k, v, scale, poison) for math that must only see finite numbers: non-finite entries
    zeroed, a non-finite scale replaced by 1, and ``poison`` (None when nothing is poisoned).

    Eager on the CPU, one sum per input proves the common all-finite case cheaply (a finite sum
    means every entry is finite; a sum that overflows only takes the exact path needlessly) and
    skips the elementwise work, which on a small CPU costs as much as the attention itself.
    Elsewhere (GPU, torch.compile) the exact path runs unconditionally: no data-dependent branch."""
    if (q.device.type == "cpu" and not torch.compiler.is_compiling() and math.isfinite(scale)
            and bool(torch.isfinite(sum(t.sum(dtype=torch.float32) for t in (q, k, v))))):
        return q, k, v, scale, None
    poison = _poisoned(q, k, v, causal, key_padding_mask, scale)
    return (_finite_or_zero(q), _finite_or_zero(k), _finite_or_zero(v), scale if math.isfinite(scale) else 1.0,
            poison)


def attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    upcast: bool = True,
    max_elems: int = 1 << 26,
) -> torch.Tensor:
    """Plain-PyTorch reference (test oracle, ``torch`` backend, benchmark baseline).

    softmax(scale * q k^T + mask) v with explicit scores, computed in float64 with ``upcast``
    (else float32, or float64 for float64 inputs); returns q's dtype. Differentiable by
    autograd. Query rows are processed in chunks of at most ``max_elems`` scores (exact: rows
    are independent), which bounds inference memory; under autograd every chunk's
    probabilities are kept for the backward, so training memory stays O(Sq * Sk).
    Semantics as in the module docstring: the math runs on inputs whose non-finite entries
    are zeroed (so nothing leaks from a hidden key), then ``_poisoned`` marks NaN.
    """
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    scale = D**-0.5 if scale is None else float(scale)
    q, k, v, scale, poison = _nonfinite_guard(q, k, v, causal, key_padding_mask, scale)
    dt = torch.float64 if (upcast or q.dtype == torch.float64) else torch.float32
    if Sk == 0:  # every row sees no key: zeros, still connected to the graph
        return (q.to(dt) * 0.0).to(q.dtype)
    kt, vv = k.to(dt).transpose(-1, -2), v.to(dt)  # (B, H, D, Sk), (B, H, Sk, D)
    chunk = max(1, max_elems // max(1, B * H * Sk))
    outs = []
    for r0 in range(0, Sq, chunk):
        qc = q[:, :, r0 : r0 + chunk].to(dt)  # (B, H, rows, D)
        s = torch.matmul(qc, kt) * scale  # (B, H, rows, Sk)
        hidden = _hidden_mask(B, Sq, Sk, causal, key_padding_mask, q.device, r0, qc.shape[2])
        if hidden is not None:
            s = s.masked_fill(hidden, float("-inf"))
        m = s.amax(-1, keepdim=True).detach()  # softmax is shift-invariant: no gradient needed
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows with every key hidden
        p = torch.exp(s - m)
        denom = p.sum(-1, keepdim=True)
        p = p / torch.where(denom > 0, denom, torch.ones_like(denom))  # empty rows: p = 0
        outs.append(torch.matmul(p, vv))  # (B, H, rows, D)
    if not outs:  # Sq = 0
        return (q.to(dt) * 0.0).to(q.dtype)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    return _apply_poison(out, poison).to(q.dtype)


def _validate(q, k, v, causal, key_padding_mask, scale) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-D (B, H, S, D), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"attention: {name} must be a floating tensor, got {t.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v must have the same shape (B, H, Sk, D), got {tuple(k.shape)} and {tuple(v.shape)}")
    for i, what in ((0, "batch B"), (1, "heads H"), (3, "head dim D")):
        if q.shape[i] != k.shape[i]:
            raise ValueError(
                f"attention: q and k/v must agree in {what} (dim {i}): q is {tuple(q.shape)}, k is {tuple(k.shape)}"
            )
    D = q.shape[3]
    if D == 0 or D > MAX_HEAD_DIM:
        raise ValueError(f"attention: head dim D must be in 1..{MAX_HEAD_DIM}, got D={D}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.device != k.device or q.device != v.device:
        raise ValueError(f"attention: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not isinstance(causal, bool):
        raise TypeError(f"attention: causal must be a bool, got {type(causal).__name__}")
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"attention: scale must be None or a Python number, got {type(scale).__name__}")
    if key_padding_mask is not None:
        m = key_padding_mask
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"attention: key_padding_mask must be a bool tensor, got {type(m).__name__}")
        if m.dtype != torch.bool:
            raise TypeError(f"attention: key_padding_mask must be bool (True = padding), got {m.dtype}")
        expect = (q.shape[0], k.shape[2])
        if tuple(m.shape) != expect:
            raise ValueError(f"attention: key_padding_mask must be (B, Sk) = {expect}, got {tuple(m.shape)}")
        if m.device != q.device:
            raise ValueError(f"attention: key_padding_mask is on {m.device} but q is on {q.device}")


# ---------------------------------------------------------------------------------------------
# torch backend: the reference math in the input precision (float32 for half inputs).


@attention_family.register("torch", dtypes=_FLOATS + (torch.float64,), devices=("cpu", "cuda"))
def _attention_torch(q, k, v, key_padding_mask, causal, scale):
    return attention_ref(q, k, v, causal, key_padding_mask, scale, upcast=False)


# ---------------------------------------------------------------------------------------------
# cpu backend: torch's SDPA with our semantics (see CPU_BACKEND_REASON).


FEW_ROWS = 16  # csrc/cpu/attention_cpu.cpp kFewRows: up to this many queries per head, the few-rows loops


def _attention_sdpa(q, k, v, key_padding_mask, causal, scale):
    if (q.shape[2] <= FEW_ROWS and q.dtype == torch.float32 and _ext.loaded()
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))):
        # a few queries per head (decoding, a frozen prefix's trailing tokens), inference: our C++
        # few-rows loops, which carry the semantics themselves (no guard pass; CPU_BACKEND_REASON)
        return torch.ops.dalle2_fast.attention_fwd(q, k, v, key_padding_mask, causal, scale)[0]
    # SDPA's own handling of non-finite input differs from ours (a NaN row comes out as zeros,
    # a NaN key behind padding leaks): it only ever sees finite inputs, _poisoned marks NaN.
    q, k, v, scale, poison = _nonfinite_guard(q, k, v, causal, key_padding_mask, scale)
    return _apply_poison(_sdpa_finite(q, k, v, key_padding_mask, causal, scale), poison)


def _sdpa_finite(q, k, v, key_padding_mask, causal, scale):
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    if Sk == 0:
        return q * 0.0
    if key_padding_mask is None and (not causal or Sq <= Sk):
        # no query can be left without a key: SDPA's own flags suffice
        if not causal:
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
        if Sq == Sk:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    keep, empty = _sdpa_masks(B, Sq, Sk, causal, key_padding_mask, q.device)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=scale)
    return out.masked_fill(empty, 0.0)  # zero output and, through masked_fill, zero gradient


_MASK_MEMO: dict = {}  # (B, Sq, Sk, causal, device, id(key_padding_mask)) -> (mask, its version, keep, empty)
_MASK_MEMO_SIZE = 64


def _sdpa_masks(B, Sq, Sk, causal, key_padding_mask, device):
    """(keep, empty): SDPA's bool mask (True = take part; rows that see no key attend to all) and
    those rows, (B or 1, 1, Sq, Sk) and (.., Sq, 1). Memoised in eager code: a sampling loop asks
    for the same ones at every step (the same padding-mask object, unchanged: its version is
    compared; the memo holds the mask so its id cannot be reused), which otherwise costs several
    small ops per attention call."""
    memo = not torch.compiler.is_compiling() and (key_padding_mask is None or device.type == "cpu")
    key = (B if key_padding_mask is not None else 0, Sq, Sk, causal, str(device), id(key_padding_mask))
    if memo:
        hit = _MASK_MEMO.get(key)
        if hit is not None and hit[0] is key_padding_mask and (
                key_padding_mask is None or hit[1] == key_padding_mask._version):
            return hit[2], hit[3]
    hidden = _hidden_mask(B, Sq, Sk, causal, key_padding_mask, device)
    empty = hidden.all(-1, keepdim=True)  # rows that see no key (SDPA would give NaN)
    keep = ~(hidden & ~empty)  # SDPA's bool mask: True = take part; empty rows attend all
    if memo and keep.numel() <= 1 << 20:  # small masks only (the memo holds them)
        if len(_MASK_MEMO) >= _MASK_MEMO_SIZE:
            _MASK_MEMO.clear()
        _MASK_MEMO[key] = (key_padding_mask, None if key_padding_mask is None else key_padding_mask._version,
                           keep, empty)
    return keep, empty


attention_family.register("cpu", dtypes=_FLOATS, devices=("cpu",), needs_extension=False)(_attention_sdpa)


# ---------------------------------------------------------------------------------------------
# Kernel backends (cuda, triton): forward/backward custom ops under one autograd.Function each.


class _ExtFlash(torch.autograd.Function):
    """C++ custom ops dalle2_fast::attention_fwd / attention_bwd (CUDA kernel on CUDA tensors,
    the C++ CPU kernel on CPU tensors — the latter only reached through ``_attention_ext``)."""

    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, causal, scale):
        out, lse = torch.ops.dalle2_fast.attention_fwd(q, k, v, key_padding_mask, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, mask = ctx.saved_tensors
        dq, dk, dv = torch.ops.dalle2_fast.attention_bwd(
            grad_out.contiguous(), q, k, v, out, lse, mask, ctx.causal, ctx.scale
        )
        return dq, dk, dv, None, None, None


class _TritonFlash(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, causal, scale):
        from dalle2_fast.triton.attention import attention_fwd_triton

        out, lse = attention_fwd_triton(q, k, v, key_padding_mask, causal, scale)
        ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
        ctx.causal, ctx.scale = causal, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        from dalle2_fast.triton.attention import attention_bwd_triton

        q, k, v, out, lse, mask = ctx.saved_tensors
        dq, dk, dv = attention_bwd_triton(grad_out.contiguous(), q, k, v, out, lse, mask, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None, None


def _attention_ext(q, k, v, key_padding_mask, causal, scale):
    return _ExtFlash.apply(q, k, v, key_padding_mask, causal, scale)


attention_family.register("cuda", dtypes=_FLOATS, devices=("cuda",))(_attention_ext)


def _triton_limits(q, k=None, v=None, *args, **kwargs):
    reasons = []
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        reasons.append("the Triton interpreter has no bfloat16 arithmetic")
    if q.shape[0] * q.shape[1] > 65535:  # grid axis 1 is B * H
        reasons.append(f"B * H must be <= 65535 for the Triton grid, got {q.shape[0] * q.shape[1]}")
    if q.device.type == "cuda":  # only audited launches that fit this GPU (triton/launch.py)
        needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v))
        kernels = ATTENTION_KERNELS if needs_grad else ("attention_fwd",)
        reasons += triton_launch_reasons(kernels, q, q.shape[3])
    return reasons


def triton_launch_reasons(kernels, q: torch.Tensor, D: int) -> list[str]:
    """Why the audited launch table has no configuration of these attention kernels that fits
    q's GPU ([] when each has one)."""
    from dalle2_fast.triton import launch as L

    target, block_d = L.target_for(q), max(16, 1 << (int(D) - 1).bit_length())
    return [L.refusal(kern, q.dtype, target, L.attention_candidates(kern, block_d), "audited launch")
            for kern in kernels if L.attention_config(kern, q.dtype, block_d, target) is None]


@attention_family.register("triton", dtypes=_FLOATS, devices=("cpu", "cuda"), limits=_triton_limits)
def _attention_triton(q, k, v, key_padding_mask, causal, scale):
    return _TritonFlash.apply(q, k, v, key_padding_mask, causal, scale)


if _ext.loaded():

    @torch.library.register_fake("dalle2_fast::attention_fwd")
    def _attention_fwd_fake(q, k, v, key_padding_mask, causal, scale):
        B, H, Sq, _ = q.shape
        return q.new_empty(q.shape), q.new_empty((B, H, Sq), dtype=torch.float32)

    @torch.library.register_fake("dalle2_fast::attention_bwd")
    def _attention_bwd_fake(grad_out, q, k, v, out, lse, key_padding_mask, causal, scale):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = False,
    key_padding_mask: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention softmax(scale * q k^T) v, flash-style.

    Args:
        q: (B, H, Sq, D) float32/float16/bfloat16 (float64 on the torch backend), D <= 256
            (any D; 40, 80, 96 are padded inside the kernels).
        k, v: (B, H, Sk, D), same dtype and device as q. Sk may differ from Sq (cross-attention).
        causal: bottom-right aligned causal mask (query i sees keys j <= i + Sk - Sq).
        key_padding_mask: optional (B, Sk) bool, **True = padding** (key ignored).
        scale: score scale, default D ** -0.5.
        backend: None (fastest available), 'torch', 'cpu', 'cuda' or 'triton'
            (``DALLE2_FAST_BACKEND`` forces one globally).

    Returns:
        (B, H, Sq, D) in q's dtype. Rows that see no key are zeros; NaN wherever a non-finite
        input reaches (module docstring). Differentiable in q, k, v.
    """
    _validate(q, k, v, causal, key_padding_mask, scale)
    scale = q.shape[3] ** -0.5 if scale is None else float(scale)
    impl = attention_family.select(q, k, v, key_padding_mask, causal=causal, backend=backend)
    return impl.fn(q, k, v, key_padding_mask, causal, scale)


__all__ = ["attention", "attention_ref", "attention_family", "CPU_BACKEND_REASON", "MAX_HEAD_DIM"]
