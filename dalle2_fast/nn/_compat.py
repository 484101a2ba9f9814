"""The two kernel calls the U-Net family makes, in ONE place each.

Every group norm / AdaGN of the U-Net, the noisy classifier and the unCLIP decoder goes
through :func:`_adagn`; every attention goes through :func:`_attention`. Today both are plain
PyTorch; when ``dalle2_fast.ops.adagn`` and ``dalle2_fast.ops.attention`` land, swapping these
two bodies moves every model onto the fused kernels. Notes for the swap:
- under autocast x arrives in bf16/fp16 while the GroupNorm affine stays float32 and
  scale/shift come from a Linear (autocast dtype): cast them to what ``ops.adagn`` accepts;
- the ResBlock without scale-shift norm calls ``_adagn(h + emb, ...)`` (the add is not fusable);
- ``_attention`` inputs are (B, H, S, D) views of a fused qkv projection (non-contiguous);
  the self-attention blocks never mask, cross-attention passes a (B, Tc + S) padding mask whose
  own-token part is all False, so no query row is ever fully masked.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dalle2_fast.ops import attention


def _adagn(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    eps: float = 1e-5,
    act: str | None = None,
) -> torch.Tensor:
    """``act(GroupNorm(x) * (1 + scale) + shift)`` (the ADM form of AdaGN, Dhariwal & Nichol
    2021, Sec. 3.2), computed in float32 and returned in ``x.dtype``.

    x: (B, C, *spatial); weight, bias: (C,) GroupNorm affine; scale, shift: (B, C) or None;
    act: None or 'silu'. The seed form ``y_s * GN(x) + y_b`` is ``scale = y_s - 1``.
    """
    h = F.group_norm(x.float(), num_groups, weight, bias, eps)  # upcast as GroupNorm32 does
    if scale is not None or shift is not None:
        view = (x.shape[0], x.shape[1]) + (1,) * (x.dim() - 2)
        if scale is not None:
            h = h * (1 + scale.float().view(view))
        if shift is not None:
            h = h + shift.float().view(view)
    if act == "silu":
        h = F.silu(h)
    elif act is not None:
        raise ValueError(f"_adagn: act must be None or 'silu', got {act!r}")
    return h.to(x.dtype)


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v.

    q: (B, H, Sq, D), k and v: (B, H, Sk, D) -> (B, H, Sq, D).
    key_padding_mask: (B, Sk) bool, True marks a PADDED key (ignored), as in
    ``nn.MultiheadAttention`` and ``ops.attention``.
    """
    return attention(q, k, v, key_padding_mask=key_padding_mask)
