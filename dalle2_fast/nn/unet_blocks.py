"""Building blocks of the DDPM / Improved DDPM / ADM U-Net family (and its noisy classifier).

- ``ResBlock``: GN-SiLU-conv, embedding injected by addition (DDPM) or AdaGN
  (``use_scale_shift_norm``, ADM), GN-SiLU-dropout-conv, skip; optional BigGAN-style
  up/down-sampling inside the block (ADM, Sec. 3 "BigGAN residual blocks").
- ``AttentionBlock``: GroupNorm, then :class:`~dalle2_fast.nn.Attention` over the H*W
  positions, then the residual; with ``context_dim`` the tokens attend to
  concat(context tokens, own tokens) as GLIDE does (``context_mode='concat'``); the context may
  also come as a :class:`~dalle2_fast.nn.KVCache` of every block's projected context keys/values
  (``UNet.context_cache``: computed once per sampling call, the same result).
- ``AttentionPool2d``: CLIP-style attention pooling (the ADM classifier head).

Every norm is an :class:`~dalle2_fast.nn.AdaGN` (the fused ``ops.adagn`` kernel; the
dtype fitting for autocast lives there) and every attention goes through ``ops.attention``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dalle2_fast.nn.adagn import AdaGN
from dalle2_fast.nn.attention import Attention
from dalle2_fast.nn.kv_cache import KVCache
from dalle2_fast.ops import attention


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Upsample(nn.Module):
    """Nearest 2x upsampling, then an optional 3x3 conv. (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if use_conv else None

    def forward(self, x):  # noqa: D102
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    """Strided 3x3 conv (``use_conv``) or 2x2 average pooling. (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int, use_conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv else None

    def forward(self, x):  # noqa: D102
        return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)


class ResBlock(nn.Module):
    """Residual block conditioned on an embedding ``emb`` (B, emb_channels).

    ``updown``: None, 'up' or 'down' (BigGAN-style resampling of both paths between the
    first norm and the first conv, as in ADM). ``use_scale_shift_norm``: AdaGN
    ``GN(h) * (1 + s) + b`` with (s, b) = Linear(SiLU(emb)) (ADM) instead of ``GN(h + Linear(SiLU(emb)))``.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        dropout: float = 0.0,
        num_groups: int = 32,
        use_scale_shift_norm: bool = False,
        updown: str | None = None,
    ):
        super().__init__()
        if updown not in (None, "up", "down"):
            raise ValueError(f"ResBlock: updown must be None, 'up' or 'down', got {updown!r}")
        self.updown, self.use_scale_shift_norm = updown, use_scale_shift_norm
        self.norm1 = AdaGN(channels, num_groups, act="silu")
        self.conv1 = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, out_channels * (2 if use_scale_shift_norm else 1))
        self.norm2 = AdaGN(out_channels, num_groups, act="silu")
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def _resample(self, x):
        if self.updown == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.updown == "down":
            return F.avg_pool2d(x, 2)
        return x

    def forward(self, x, emb):
        """x: (B, C, H, W), emb: (B, E) -> (B, out_channels, H', W')."""
        h = self.conv1(self._resample(self.norm1(x)))
        x = self._resample(x)
        e = self.emb_proj(F.silu(emb)).to(h.dtype)  # (B, out) or (B, 2 out)
        if self.use_scale_shift_norm:
            h = self.norm2(h, e)  # AdaGN: (scale, shift) = e.chunk(2)
        else:
            h = self.norm2(h + e[:, :, None, None])  # the add is not fusable into the norm
        # in place on conv2's fresh output (its backward does not need it): one image-sized
        # allocation less per block, which on large images means fewer page faults
        out, skip = self.conv2(self.dropout(h)), self.skip(x)
        if out.dtype == torch.promote_types(out.dtype, skip.dtype) and out.shape == skip.shape:
            return out.add_(skip)
        return skip + out


class AttentionBlock(nn.Module):
    """x + Attention(GroupNorm(x)) over the H*W positions, optionally also attending to context.

    x: (B, C, H, W); context: (B, T, context_dim) tokens; context_mask: (B, T) bool, True =
    padded. Heads: ``num_head_channels`` per head if given, else ``num_heads``. Parameters:
    ``norm`` (an :class:`AdaGN` without embedding) and ``attn`` (an :class:`Attention` in
    'concat' mode, its output projection zero-initialised as in guided-diffusion).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int | None = None,
        num_groups: int = 32,
        context_dim: int | None = None,
    ):
        super().__init__()
        if num_head_channels is not None:
            if channels % num_head_channels:
                raise ValueError(
                    f"AttentionBlock: channels ({channels}) must be divisible by "
                    f"num_head_channels ({num_head_channels})"
                )
            num_heads = channels // num_head_channels
        if num_heads < 1 or channels % num_heads:
            raise ValueError(f"AttentionBlock: channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.norm = AdaGN(channels, num_groups)
        self.attn = Attention(channels, heads=num_heads, context_dim=context_dim or None, context_mode="concat")
        _zero(self.attn.to_out)

    cache_index: int | None = None  # this block's layer in a U-Net's context cache (set by the U-Net)

    def forward(self, x, context=None, context_mask=None):  # noqa: D102
        b, c, hh, ww = x.shape
        tok = self.norm(x).flatten(2).transpose(1, 2)  # (B, T, C); a view for channels-last
        if isinstance(context, KVCache):  # the context's keys/values, projected once (UNet.context_cache)
            if self.cache_index is None or context_mask is not None:
                raise ValueError("AttentionBlock: a context cache comes from UNet.context_cache (no context_mask: "
                                 "the cache holds it)")
            out = self.attn(tok, past=context[self.cache_index])
        else:
            out = self.attn(tok, context, context_mask if context is not None else None)  # (B, T, C)
        return x + out.transpose(1, 2).reshape(b, c, hh, ww).to(x.dtype)


class AttentionPool2d(nn.Module):
    """CLIP-style attention pooling: the mean token (plus a positional embedding) queries all
    H*W tokens. x: (B, C, H, W) -> (B, out_dim)."""

    def __init__(self, spatial: int, channels: int, num_head_channels: int, out_dim: int):
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(
                f"AttentionPool2d: channels ({channels}) must be divisible by num_head_channels ({num_head_channels})"
            )
        self.num_heads = channels // num_head_channels
        self.positional_embedding = nn.Parameter(torch.randn(spatial * spatial + 1, channels) / channels**0.5)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, out_dim)

    def forward(self, x):  # noqa: D102
        b, c = x.shape[:2]
        tok = x.flatten(2).transpose(1, 2)  # (B, T, C)
        tok = torch.cat([tok.mean(dim=1, keepdim=True), tok], dim=1)  # (B, T + 1, C)
        if tok.shape[1] != self.positional_embedding.shape[0]:
            raise ValueError(
                f"AttentionPool2d: expected {self.positional_embedding.shape[0] - 1} positions, got {tok.shape[1] - 1}"
            )
        tok = tok + self.positional_embedding.to(tok.dtype)
        nh, d = self.num_heads, c // self.num_heads
        q, k, v = self.qkv(tok).view(b, -1, 3, nh, d).permute(2, 0, 3, 1, 4)  # (B, nh, T+1, d)
        a = attention(q[:, :, :1], k, v)  # only the pooled query is needed: (B, nh, 1, d)
        return self.proj(a.transpose(1, 2).reshape(b, c))


class TimestepSequential(nn.ModuleList):
    """Runs its layers in order, handing ``emb`` to ResBlocks and the context to attention.
    ``use_checkpoint`` recomputes the whole block in backward (activation checkpointing)."""

    use_checkpoint = False

    def _run(self, x, emb, context, context_mask):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, AttentionBlock):
                x = layer(x, context, context_mask)
            else:
                x = layer(x)
        return x

    def forward(self, x, emb, context=None, context_mask=None):  # noqa: D102
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._run, x, emb, context, context_mask, use_reentrant=False)
        return self._run(x, emb, context, context_mask)
