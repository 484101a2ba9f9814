"""Vector quantiser (van den Oord et al. 2017, "Neural Discrete Representation Learning").

Lookup by ``ops.nearest_code`` (never an N x K distance matrix, never a one-hot), straight-
through gradients, commitment loss beta * ||z - sg[e]||^2 (Eq. 3), and either the codebook loss
||sg[z] - e||^2 or EMA codebook updates (Appendix A.1) with Laplace smoothing. Codes unused for
``dead_code_after`` training steps are replaced by random encoder outputs of the current batch.
Optional cosine-similarity codebook (l2-normalised lookup, as in ViT-VQGAN). Under
torch.distributed the EMA statistics and usage counts are all-reduced and revived codes are
broadcast from rank 0, so every rank keeps the same codebook.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dalle2_fast.ops import nearest_code


class VQOutput(NamedTuple):
    quantized: torch.Tensor  # same shape as the input; straight-through gradient to the input
    indices: torch.Tensor  # input shape without the channel dim, int64
    loss: torch.Tensor  # scalar: commitment (+ codebook loss when not EMA)
    perplexity: torch.Tensor  # scalar: exp(entropy of code usage in this batch)


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


class VectorQuantizer(nn.Module):
    """Args:
    num_codes: K codes.  dim: code dimension D.
    beta: commitment weight (0.25 in the paper).
    ema: EMA codebook updates (decay, Laplace ``eps``) instead of a codebook loss.
    dead_code_after: revive a code unused for this many training steps (0 disables).
    cosine: l2-normalise inputs and codes (lookup by cosine similarity).
    channel_dim: the dim of the input holding the D features (1 for (B, D, H, W) conv
        features and (N, D) rows; -1 for (B, T, D) sequences).
    backend: forwarded to ``ops.nearest_code``.
    """

    def __init__(
        self,
        num_codes: int,
        dim: int,
        beta: float = 0.25,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        dead_code_after: int = 100,
        cosine: bool = False,
        channel_dim: int = 1,
        backend: str | None = None,
    ):
        super().__init__()
        if num_codes < 1:
            raise ValueError(f"VectorQuantizer: num_codes must be >= 1, got {num_codes}")
        if dim < 1:
            raise ValueError(f"VectorQuantizer: dim must be >= 1, got {dim}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"VectorQuantizer: decay must be in [0, 1), got {decay}")
        if beta < 0:
            raise ValueError(f"VectorQuantizer: beta must be >= 0, got {beta}")
        self.num_codes, self.dim = num_codes, dim
        self.beta, self.ema, self.decay, self.eps = beta, ema, decay, eps
        self.dead_code_after, self.cosine = dead_code_after, cosine
        self.channel_dim, self.backend = channel_dim, backend
        if ema:
            init = torch.randn(num_codes, dim)
            self.register_buffer("embedding", init)
            # cluster_size starts at 1 (not 0): an unused code then keeps embed_avg / cluster_size
            # = its initial value as both decay, instead of blowing up through the smoothing.
            self.register_buffer("cluster_size", torch.ones(num_codes))
            self.register_buffer("embed_avg", init.clone())
        else:
            self.embedding = nn.Parameter(torch.empty(num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))
        self.register_buffer("unused_steps", torch.zeros(num_codes, dtype=torch.long))

    @property
    def codebook(self) -> torch.Tensor:
        """(K, D) codes as used for lookup (normalised when cosine)."""
        e = self.embedding
        return F.normalize(e, dim=-1) if self.cosine else e

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (...) -> codes (..., D) by a gather (no one-hot)."""
        return F.embedding(indices, self.codebook)

    def _flatten(self, z: torch.Tensor) -> tuple[torch.Tensor, list[int], int]:
        cd = self.channel_dim % z.dim()
        if z.shape[cd] != self.dim:
            raise ValueError(
                f"VectorQuantizer: input has {z.shape[cd]} features on dim {cd} (shape {tuple(z.shape)}), "
                f"expected dim={self.dim}"
            )
        zc = z.movedim(cd, -1)  # (..., D)
        return zc.reshape(-1, self.dim), list(zc.shape[:-1]), cd

    def forward(self, z: torch.Tensor) -> VQOutput:
        if z.dim() < 2:
            raise ValueError(f"VectorQuantizer: input must have >= 2 dims, got shape {tuple(z.shape)}")
        if not z.is_floating_point():
            raise TypeError(f"VectorQuantizer: input must be floating point, got {z.dtype}")
        flat, lead, cd = self._flatten(z)  # (N, D)
        if flat.shape[0] == 0:
            raise ValueError("VectorQuantizer: empty input (no vectors to quantise)")
        if self.cosine:
            flat = F.normalize(flat, dim=-1)
        codes = self.codebook
        with torch.no_grad():
            idx, _ = nearest_code(flat.detach().to(codes.dtype), codes.detach(), backend=self.backend)
        q = F.embedding(idx, codes).to(flat.dtype)  # (N, D)

        commit = F.mse_loss(flat, q.detach())
        loss = self.beta * commit
        if not self.ema:
            loss = loss + F.mse_loss(q, flat.detach())

        counts = torch.bincount(idx, minlength=self.num_codes).to(torch.float32)
        if self.training:
            with torch.no_grad():
                counts = self._update(flat.detach().float(), idx, counts)
        probs = counts / counts.sum().clamp_min(1.0)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())

        q_st = flat + (q - flat).detach()  # straight-through estimator
        quantized = q_st.reshape(*lead, self.dim).movedim(-1, cd)
        return VQOutput(quantized, idx.reshape(lead), loss, perplexity)

    @torch.no_grad()
    def _update(self, flat: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """EMA statistics and dead-code bookkeeping; returns the (global) counts."""
        sums = None
        if self.ema:
            sums = torch.zeros(self.num_codes, self.dim, device=flat.device, dtype=torch.float32)
            sums.index_add_(0, idx, flat)
        if _dist_on():
            dist.all_reduce(counts)
            if sums is not None:
                dist.all_reduce(sums)
        if self.ema:
            self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            self.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.cluster_size.sum()
            smoothed = (self.cluster_size + self.eps) / (n + self.num_codes * self.eps) * n  # Laplace
            self.embedding.copy_(self.embed_avg / smoothed.unsqueeze(1))
        self.unused_steps.add_(1).masked_fill_(counts > 0, 0)
        if self.dead_code_after > 0:
            self._revive(flat)
        return counts

    @torch.no_grad()
    def _revive(self, flat: torch.Tensor) -> None:
        dead = (self.unused_steps >= self.dead_code_after).nonzero().squeeze(1)
        if dead.numel() == 0:
            return
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
        new = flat[pick] + 1e-3 * torch.randn_like(flat[pick])
        if _dist_on():
            dist.broadcast(new, src=0)  # every rank takes rank 0's choice
        new = new.to(self.embedding.dtype)
        self.embedding.data[dead] = new
        if self.ema:
            self.embed_avg[dead] = new
            self.cluster_size[dead] = 1.0
        self.unused_steps[dead] = 0

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, beta={self.beta}, ema={self.ema}, "
                f"cosine={self.cosine}, dead_code_after={self.dead_code_after}")
