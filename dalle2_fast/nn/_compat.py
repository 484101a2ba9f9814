"""The two kernel calls the U-Net family makes, in ONE place each.

Every group norm / AdaGN of the U-Net, the noisy classifier and the unCLIP decoder goes
through :func:`_adagn` (``ops.adagn``, the fused kernel); every attention goes through
:func:`_attention` (``ops.attention``). Notes:
- under autocast x arrives in bf16/fp16 while the GroupNorm affine stays float32 and
  scale/shift come from a Linear (autocast dtype): cast them to what ``ops.adagn`` accepts;
- the ResBlock without scale-shift norm calls ``_adagn(h + emb, ...)`` (the add is not fusable);
- ``_attention`` inputs are (B, H, S, D) views of a fused qkv projection (non-contiguous);
  the self-attention blocks never mask, cross-attention passes a (B, Tc + S) padding mask whose
  own-token part is all False, so no query row is ever fully masked.
"""
from __future__ import annotations

import torch

from dalle2_fast.ops import adagn, attention


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
    2021, Sec. 3.2), statistics in float32, returned in ``x.dtype`` (``ops.adagn``).

    x: (B, C, *spatial); weight, bias: (C,) GroupNorm affine; scale, shift: (B, C) or None;
    act: None or 'silu'. The seed form ``y_s * GN(x) + y_b`` is ``scale = y_s - 1``.
    """
    # ops.adagn takes parameters in x's dtype or float32 (statistics are float32 either way);
    # anything else (e.g. a bf16 scale from an autocast Linear with float32 x) goes to float32.
    def fit(t):
        return t if t is None or t.dtype in (x.dtype, torch.float32) else t.float()

    return adagn(x, num_groups, fit(weight), fit(bias), fit(scale), fit(shift), eps, act)


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
