"""Relative positions for attention: rotary embeddings and T5's bucketed relative position bias.

- :func:`apply_rotary`: rotary position embedding (Su et al. 2021, RoFormer Eq. 34) on the first
  ``rot_dim`` channels of each head, adjacent channel pairs (2i, 2i+1) rotated by angle
  ``pos * theta^(-2i / rot_dim)``; the other channels pass through. The interleaved-pair layout
  and the default theta = 10000 are those of the ``rotary-embedding-torch`` package, which the
  DALLE2-pytorch prior uses (so its checkpoints' ``rotary_emb.freqs`` equal :func:`rotary_freqs`).
- :class:`RelativePositionBias`: T5's learned per-head bias over log-spaced buckets of the
  query-key distance (Raffel et al. 2020, Sec. 2.1), causal form (only keys at or before the
  query are told apart): distances n = max(i - j, 0) below ``num_buckets // 2`` get their own
  bucket, larger ones share log-spaced buckets up to ``max_distance``.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def rotary_freqs(rot_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """(rot_dim // 2,) float32 angular frequencies theta^(-2i / rot_dim)."""
    if rot_dim < 2 or rot_dim % 2:
        raise ValueError(f"rotary: rot_dim must be an even number >= 2, got {rot_dim}")
    return 1.0 / (theta ** (torch.arange(0, rot_dim, 2)[: rot_dim // 2].float() / rot_dim))


def apply_rotary(t: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate t: (..., S, D) by positions (S,) with freqs (R/2,) on channels [0, R), R <= D.
    Computed in float32 (returns t's dtype)."""
    rot = 2 * freqs.shape[0]
    if rot > t.shape[-1]:
        raise ValueError(f"rotary: {rot} rotated channels > head dim {t.shape[-1]}")
    ang = positions.float()[:, None] * freqs.float().to(t.device)[None]  # (S, R/2)
    cos, sin = ang.cos(), ang.sin()
    x = t[..., :rot].float().unflatten(-1, (rot // 2, 2))  # (..., S, R/2, 2): interleaved pairs
    x1, x2 = x[..., 0], x[..., 1]
    out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    return torch.cat((out.to(t.dtype), t[..., rot:]), dim=-1)


def relative_position_bucket(rel: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """Causal T5 buckets of relative positions rel = key - query (int64) -> int64 in [0, num_buckets)."""
    n = (-rel).clamp_min(0)
    exact = num_buckets // 2
    large = exact + (torch.log(n.float() / exact) / math.log(max_distance / exact) * (num_buckets - exact)).long()
    large = large.clamp_max(num_buckets - 1)
    return torch.where(n < exact, n, large)


class RelativePositionBias(nn.Module):
    """Learned bias (heads, Sq, Sk) for queries at positions 0..Sq-1 and keys at q_offset
    .. q_offset + Sk - 1 relative to them: key j sits at position j - k_offset. Args: heads,
    num_buckets, max_distance as in T5."""

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 128):
        super().__init__()
        if num_buckets < 2 or max_distance <= num_buckets // 2:
            raise ValueError(f"RelativePositionBias: need num_buckets >= 2 and max_distance > num_buckets // 2, "
                             f"got {num_buckets} and {max_distance}")
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def forward(self, sq: int, sk: int, k_offset: int = 0) -> torch.Tensor:
        """(heads, sq, sk): bias of query i and key j, with rel = (j - k_offset) - i."""
        dev = self.relative_attention_bias.weight.device
        rel = (torch.arange(sk, device=dev)[None] - k_offset) - torch.arange(sq, device=dev)[:, None]  # (sq, sk)
        bucket = relative_position_bucket(rel, self.num_buckets, self.max_distance)
        return self.relative_attention_bias(bucket).permute(2, 0, 1)


__all__ = ["rotary_freqs", "apply_rotary", "relative_position_bucket", "RelativePositionBias"]
