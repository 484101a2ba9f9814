"""Adaptive GroupNorm layer (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", Sec. 3):
``AdaGN(h, y) = y_s * GroupNorm(h) + y_b`` with ``y = (y_s, y_b)`` a linear projection of the
timestep (+ class / CLIP) embedding, fused with the SiLU that follows it in every ResBlock.

Drop-in for guided-diffusion's ``out_norm`` + ``use_scale_shift_norm`` step::

    emb_out = emb_layers(emb)                 # (B, 2C)
    h = out_norm(h) * (1 + scale) + shift     # scale, shift = emb_out.chunk(2, dim=1)
    h = silu(h)

becomes ``h = AdaGN(C, act="silu")(h, emb_out)`` (one fused kernel, see ``ops.adagn``).

Every norm of the U-Net family (ResBlocks, attention blocks, the output head, the noisy
classifier) is this module; without an embedding it is ``nn.GroupNorm`` (+ act) with the same
``weight`` / ``bias`` parameter names, so state dicts are those of ``nn.GroupNorm``.

Mixed precision: under autocast x arrives in bf16/fp16 (or stays float32 where no autocast op
produced it) while the affine is float32 and scale/shift come from an autocast Linear;
``ops.adagn`` takes parameters in x's dtype or float32, so anything else is cast to float32
here (statistics are float32 either way).
"""
from __future__ import annotations

import torch
from torch import nn

from dalle2_fast.ops import adagn


def _fit(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """A parameter in a dtype ``ops.adagn`` accepts: x's dtype or float32 (e.g. a bf16 scale
    from an autocast Linear next to a float32 x becomes float32)."""
    return t if t is None or t.dtype in (x.dtype, torch.float32) else t.float()


class AdaGN(nn.Module):
    """Args:
    channels: C.  num_groups: G (32 in ADM), dividing C.  eps: GroupNorm epsilon.
    act: None or 'silu' (fused after the modulation).
    affine: hold GroupNorm's own per-channel weight/bias (as ``nn.GroupNorm``).
    one_plus: the embedding's first half is ``scale`` applied as ``* (1 + scale)``
        (guided-diffusion, default); False takes it as the paper's ``y_s`` (``* y_s``).
    backend: forwarded to ``ops.adagn``.

    forward(x, emb=None): x (B, C, *S); emb is None (plain GroupNorm + act), the embedding
    projection output (B, 2C) split as (scale, shift), or a pair (scale (B, C), shift (B, C)).
    """

    def __init__(self, channels: int, num_groups: int = 32, eps: float = 1e-5, act: str | None = None,
                 affine: bool = True, one_plus: bool = True, backend: str | None = None):
        super().__init__()
        if channels < 1 or num_groups < 1 or channels % num_groups:
            raise ValueError(f"AdaGN: num_groups={num_groups} must divide channels={channels}")
        if act not in (None, "silu"):
            raise ValueError(f"AdaGN: act must be None or 'silu', got {act!r}")
        self.channels, self.num_groups, self.eps, self.act = channels, num_groups, eps, act
        self.one_plus, self.backend = one_plus, backend
        if affine:
            self.weight = nn.Parameter(torch.ones(channels))
            self.bias = nn.Parameter(torch.zeros(channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def _split(self, x: torch.Tensor, emb) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if emb is None:
            return None, None
        B, C = x.shape[0], self.channels
        if isinstance(emb, (tuple, list)):
            if len(emb) != 2:
                raise ValueError(f"AdaGN: emb as a sequence must be (scale, shift), got {len(emb)} items")
            scale, shift = emb
        else:
            if emb.dim() > 2 and all(d == 1 for d in emb.shape[2:]):
                emb = emb.flatten(1)  # (B, 2C, 1, 1) as guided-diffusion broadcasts it
            if tuple(emb.shape) != (B, 2 * C):
                raise ValueError(f"AdaGN: emb must be (B, 2C) = ({B}, {2 * C}), got {tuple(emb.shape)}")
            scale, shift = emb.chunk(2, dim=1)  # (B, C) each
        if scale is not None and not self.one_plus:
            scale = scale - 1  # y_s * GN = (1 + (y_s - 1)) * GN
        return scale, shift

    def forward(self, x: torch.Tensor, emb=None) -> torch.Tensor:
        scale, shift = self._split(x, emb)
        w, b = _fit(self.weight, x), _fit(self.bias, x)
        return adagn(x, self.num_groups, w, b, _fit(scale, x), _fit(shift, x), self.eps, self.act, self.backend)

    def extra_repr(self) -> str:
        return (f"{self.channels}, num_groups={self.num_groups}, eps={self.eps}, act={self.act!r}, "
                f"affine={self.weight is not None}, one_plus={self.one_plus}")
