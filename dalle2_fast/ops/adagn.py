"""Fused adaptive GroupNorm: ``adagn(x, num_groups, weight, bias, scale, shift, eps, act)``.

The normalisation of every ADM / unCLIP U-Net ResBlock (Dhariwal & Nichol 2021, Sec. 3;
guided-diffusion's ``use_scale_shift_norm``)::

    out = act(GroupNorm(x; num_groups, weight, bias, eps) * (1 + scale) + shift)

with ``scale``/``shift`` (B, C) a projection of the timestep (+ class / CLIP) embedding and
``act`` None or 'silu'. One kernel pass does what eager PyTorch does in four or five.

The paper's form ``AdaGN(h, y) = y_s * GroupNorm(h) + y_b`` is ``scale = y_s - 1,
shift = y_b`` (or ``nn.AdaGN(..., one_plus=False)``, which passes ``y_s`` directly).

Statistics are accumulated in float32 (float64 for float64 inputs) from per-channel sums
around a shift, merged with Chan's formula (csrc/include/dalle2_fast/adagn.h): a large common
offset in ``x`` does not cancel catastrophically.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from dalle2_fast import _ext
from dalle2_fast.ops._backends import family

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_ACTS = (None, "silu")

adagn_family = family("adagn")


def adagn_ref(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    eps: float = 1e-5,
    act: str | None = None,
    upcast: bool = False,
) -> torch.Tensor:
    """Plain-PyTorch AdaGN (test oracle, ``torch`` backend, benchmark baseline):
    group norm -> ``* (1 + scale) + shift`` -> ``silu``.

    x: (B, C, *S); weight/bias: (C,); scale/shift: (B, C). Statistics are two-pass (mean, then
    the mean square of x - mean: no cancellation on inputs with a large mean) in float32, or
    float64 with ``upcast`` / float64 inputs. With ``upcast`` the result is float64, otherwise
    x's dtype, in x's memory format. (Written out rather than ``F.group_norm``, which refuses
    one-element groups and loses precision on large-mean channels-last input.)
    """
    acc = torch.float64 if (upcast or x.dtype == torch.float64) else torch.float32
    B, C = x.shape[0], x.shape[1]
    xg = x.to(acc).reshape(B, num_groups, x[0:1].numel() // num_groups)  # (B, G, C/G * prod(S))
    mean = xg.mean(-1, keepdim=True)
    centred = xg - mean
    var = centred.square().mean(-1, keepdim=True)
    h = (centred * torch.rsqrt(var + eps)).reshape(x.shape)
    cshape = (1, C) + (1,) * (x.dim() - 2)  # (1, C, 1, ...)
    bshape = (B, C) + (1,) * (x.dim() - 2)  # (B, C, 1, ...)
    if weight is not None:
        h = h * weight.to(acc).reshape(cshape)
    if bias is not None:
        h = h + bias.to(acc).reshape(cshape)
    if scale is not None:
        h = h * (1 + scale.to(acc).reshape(bshape))
    if shift is not None:
        h = h + shift.to(acc).reshape(bshape)
    if act == "silu":
        h = F.silu(h)
    h = h if upcast else h.to(x.dtype)
    for fmt, dims in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if x.dim() == dims and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
            h = h.contiguous(memory_format=fmt)
    return h


def _validate(x, num_groups, weight, bias, scale, shift, eps, act) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"adagn: x must be a tensor, got {type(x).__name__}")
    if not 3 <= x.dim() <= 5:
        raise ValueError(f"adagn: x must be (B, C, *spatial) with 1-3 spatial dims, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"adagn: x must be float32/float16/bfloat16 (or float64), got {x.dtype}")
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"adagn: num_groups must be a positive int, got {num_groups!r}")
    B, C = x.shape[0], x.shape[1]
    if C % num_groups != 0:
        raise ValueError(f"adagn: num_groups={num_groups} must divide the channel count C={C}")
    if act not in _ACTS:
        raise ValueError(f"adagn: act must be None or 'silu', got {act!r}")
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"adagn: eps must be a non-negative number, got {eps!r}")
    for name, t, shape in (("weight", weight, (C,)), ("bias", bias, (C,)), ("scale", scale, (B, C)),
                           ("shift", shift, (B, C))):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"adagn: {name} must be a tensor or None, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"adagn: {name} must have shape {shape} for x of shape {tuple(x.shape)}, "
                             f"got {tuple(t.shape)}")
        if t.device != x.device:
            raise ValueError(f"adagn: {name} is on {t.device} but x is on {x.device}")
        if t.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"adagn: {name} must be {x.dtype} (x's dtype) or float32, got {t.dtype}")


# ----------------------------------------------------------------------------- backends
@adagn_family.register("torch", dtypes=_FLOATS + (torch.float64,), devices=("cpu", "cuda"))
def _adagn_torch(x, num_groups, weight, bias, scale, shift, eps, act):
    return adagn_ref(x, num_groups, weight, bias, scale, shift, eps, act)


def _make_function(fwd_op, bwd_op, name):
    """An autograd.Function around a (forward, backward) custom-op pair."""

    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, num_groups, weight, bias, scale, shift, eps, silu):
            y, mean, rstd = fwd_op(x, num_groups, weight, bias, scale, shift, eps, silu)
            ctx.save_for_backward(x, mean, rstd, weight, bias, scale, shift)
            ctx.num_groups, ctx.silu = num_groups, silu
            return y

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad_out):
            x, mean, rstd, weight, bias, scale, shift = ctx.saved_tensors
            dx, dw, db, dscale, dshift = bwd_op(grad_out, x, mean, rstd, ctx.num_groups, weight, bias, scale,
                                                shift, ctx.silu)
            need = ctx.needs_input_grad

            def cast(g, t, i):
                return g.to(t.dtype) if (t is not None and need[i]) else None

            return (dx if need[0] else None, None, cast(dw, weight, 2), cast(db, bias, 3),
                    cast(dscale, scale, 4), cast(dshift, shift, 5), None, None)

    Fn.__name__ = Fn.__qualname__ = name
    return Fn


def _ext_fwd(*args):
    return torch.ops.dalle2_fast.adagn_forward(*args)


def _ext_bwd(*args):
    return torch.ops.dalle2_fast.adagn_backward(*args)


_ExtAdaGN = _make_function(_ext_fwd, _ext_bwd, "_ExtAdaGN")


def _adagn_ext(x, num_groups, weight, bias, scale, shift, eps, act):
    return _ExtAdaGN.apply(x, num_groups, weight, bias, scale, shift, float(eps), act == "silu")


adagn_family.register("cpu", dtypes=_FLOATS + (torch.float64,), devices=("cpu",))(_adagn_ext)
adagn_family.register("cuda", dtypes=_FLOATS + (torch.float64,), devices=("cuda",))(_adagn_ext)


def _triton_limits(x, num_groups=None, *args, **kwargs):
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return ["the Triton interpreter has no bfloat16 arithmetic"]
    if x.device.type == "cuda" and num_groups:  # only audited launches that fit this GPU (triton/launch.py)
        from dalle2_fast.triton import launch as L

        target, S = L.target_for(x), math.prod(x.shape[2:])
        Cg = x.shape[1] // num_groups
        return [L.refusal(k, x.dtype, target, L.adagn_candidates(Cg, S), "audited launch")
                for k in L.ADAGN_KERNELS if L.adagn_config(k, x.dtype, Cg, S, target) is None]
    return []


_TritonAdaGN = None


@adagn_family.register("triton", dtypes=_FLOATS, devices=("cpu", "cuda"), limits=_triton_limits)
def _adagn_triton(x, num_groups, weight, bias, scale, shift, eps, act):
    global _TritonAdaGN
    if _TritonAdaGN is None:
        from dalle2_fast.triton.adagn import adagn_backward_triton, adagn_forward_triton

        _TritonAdaGN = _make_function(adagn_forward_triton, adagn_backward_triton, "_TritonAdaGN")
    return _TritonAdaGN.apply(x, num_groups, weight, bias, scale, shift, float(eps), act == "silu")


# ----------------------------------------------------------------------------- fakes
def out_like(x: torch.Tensor) -> torch.Tensor:
    """Uninitialised output in the kernels' layout for ``x``: channels-last if x is
    channels-last (and not also plain contiguous), else contiguous. Mirrors adagn_host.h."""
    if x.dim() >= 3 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous():
        return x.new_empty(x.movedim(1, -1).shape).movedim(-1, 1)
    return x.new_empty(x.shape)


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


if _ext.loaded():

    @torch.library.register_fake("dalle2_fast::adagn_forward")
    def _adagn_forward_fake(x, num_groups, weight, bias, scale, shift, eps, silu):
        st = stats_dtype(x.dtype)
        return out_like(x), x.new_empty((x.shape[0], num_groups), dtype=st), x.new_empty(
            (x.shape[0], num_groups), dtype=st)

    @torch.library.register_fake("dalle2_fast::adagn_backward")
    def _adagn_backward_fake(grad_out, x, mean, rstd, num_groups, weight, bias, scale, shift, silu):
        st = stats_dtype(x.dtype)
        B, C = x.shape[0], x.shape[1]
        return (out_like(x), x.new_empty((C,), dtype=st), x.new_empty((C,), dtype=st),
                x.new_empty((B, C), dtype=st), x.new_empty((B, C), dtype=st))


# ----------------------------------------------------------------------------- public op
def adagn(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    eps: float = 1e-5,
    act: str | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Adaptive GroupNorm, fused: ``act(GroupNorm(x) * (1 + scale) + shift)``.

    Args:
        x: (B, C, *S) with 1-3 spatial dims S, float32/float16/bfloat16 (float64 on the
            torch and cpu backends), NCHW-contiguous or channels-last; other strides are
            copied to contiguous first.
        num_groups: G, dividing C.
        weight, bias: (C,) GroupNorm's own affine, or None (1 and 0).
        scale, shift: (B, C) adaptive modulation, or None (0). For the paper's
            ``y_s * GN(x) + y_b`` pass ``scale = y_s - 1``, ``shift = y_b``.
            Parameters have x's dtype or float32.
        eps: added to the group variance.
        act: None or 'silu' (fused, gradient included).
        backend: None (fastest available), 'torch', 'cpu', 'cuda' or 'triton'.

    Returns:
        (B, C, *S) in x's dtype and memory format (channels-last in, channels-last out on the
        kernel backends). Differentiable in x, weight, bias, scale and shift.
    """
    _validate(x, num_groups, weight, bias, scale, shift, eps, act)
    impl = adagn_family.select(x, num_groups, backend=backend)
    return impl.fn(x, num_groups, weight, bias, scale, shift, eps, act)


__all__ = ["adagn", "adagn_ref", "adagn_family"]
