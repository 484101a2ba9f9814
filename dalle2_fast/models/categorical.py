"""Drawing from a categorical with uniforms the caller supplies (the autoregressive models'
per-sample seeded sampling: each sample's uniforms come from its own generator, drawn up front)."""
from __future__ import annotations

import torch


def sample_categorical(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Inverse-CDF draw from softmax(logits / temperature): logits (N, K), u (N,) uniforms in
    [0, 1) -> (N,) int64 indices; index k is drawn with its softmax probability."""
    cdf = torch.softmax(logits.float() / temperature, dim=-1).cumsum(-1)  # (N, K)
    idx = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1])[:, None], right=True)  # first k: cdf_k > u * total
    return idx.squeeze(1).clamp_(max=logits.shape[-1] - 1)


__all__ = ["sample_categorical"]
