"""PCA + per-dimension quantisation of CLIP image embeddings for the autoregressive prior.

Ramesh et al. 2022, Sec. 2.1: the AR prior models z_i as a sequence of discrete codes. z_i is
reduced with PCA fitted on the training embeddings (components in decreasing-eigenvalue order, so
the sequence predicts the most important directions first), and each kept coordinate is quantised
into ``n_buckets`` buckets. The text-image dot product z_t . z_i is quantised the same way into a
conditioning token. Buckets here are equal-mass (quantile) bins, decoded to the mean of the
training values that fell in them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuantileBuckets(nn.Module):
    """Per-column equal-mass bucketing of (N, K) values into ``n_buckets`` codes."""

    def __init__(self, k: int, n_buckets: int):
        super().__init__()
        if n_buckets < 2:
            raise ValueError(f"QuantileBuckets: n_buckets must be >= 2, got {n_buckets}")
        self.n_buckets = n_buckets
        self.register_buffer("edges", torch.zeros(k, n_buckets - 1))   # (K, n-1) inner boundaries
        self.register_buffer("centres", torch.zeros(k, n_buckets))     # (K, n) decode values

    @torch.no_grad()
    def fit(self, values: torch.Tensor) -> "QuantileBuckets":
        if values.dim() != 2 or values.shape[1] != self.edges.shape[0]:
            raise ValueError(f"QuantileBuckets.fit: values must be (N, {self.edges.shape[0]}), "
                             f"got {tuple(values.shape)}")
        if values.shape[0] < self.n_buckets:
            raise ValueError(f"QuantileBuckets.fit: need >= {self.n_buckets} rows (one per bucket), "
                             f"got {values.shape[0]}")
        v = values.double()
        q = torch.linspace(0, 1, self.n_buckets + 1, dtype=torch.float64)[1:-1]
        self.edges.copy_(torch.quantile(v, q, dim=0).T)
        codes = self.encode(values)
        sums = torch.zeros(v.shape[1], self.n_buckets, dtype=torch.float64).scatter_add_(1, codes.T, v.T)
        counts = torch.zeros_like(sums).scatter_add_(1, codes.T, torch.ones_like(v.T))
        # an empty bucket (ties in the data) decodes to the midpoint of its edges
        lo = torch.cat([v.min(0).values[:, None], self.edges.double()], 1)
        hi = torch.cat([self.edges.double(), v.max(0).values[:, None]], 1)
        self.centres.copy_(torch.where(counts > 0, sums / counts.clamp_min(1), (lo + hi) / 2))
        return self

    def encode(self, values: torch.Tensor) -> torch.Tensor:
        """(N, K) floats -> (N, K) int64 codes in [0, n_buckets)."""
        e = self.edges.to(values.dtype)
        return torch.searchsorted(e.contiguous(), values.T.contiguous(), right=True).T.contiguous()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(N, K) codes -> (N, K) bucket centres."""
        if codes.min() < 0 or codes.max() >= self.n_buckets:
            raise ValueError(f"QuantileBuckets.decode: codes must be in [0, {self.n_buckets}), got range "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return torch.gather(self.centres.expand(codes.shape[0], -1, -1), 2, codes[..., None]).squeeze(-1)


class PCAQuantizer(nn.Module):
    """z_i (N, D) unit-norm <-> (N, K) codes: PCA to K components, then per-component buckets."""

    def __init__(self, clip_dim: int, n_components: int, n_buckets: int):
        super().__init__()
        if not 1 <= n_components <= clip_dim:
            raise ValueError(f"PCAQuantizer: n_components must be in [1, {clip_dim}], got {n_components}")
        self.register_buffer("mean", torch.zeros(clip_dim))
        self.register_buffer("components", torch.eye(clip_dim)[:n_components])  # (K, D), orthonormal rows
        self.buckets = QuantileBuckets(n_components, n_buckets)

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    @torch.no_grad()
    def fit(self, image_embeds: torch.Tensor) -> "PCAQuantizer":
        """Fit the PCA basis and the buckets on training embeddings (N, D), N >= n_buckets."""
        z = image_embeds.double()
        mean = z.mean(0)
        _, _, vh = torch.linalg.svd(z - mean, full_matrices=False)  # rows by decreasing singular value
        self.mean.copy_(mean)
        self.components.copy_(vh[: self.n_components])
        self.buckets.fit(self.project(image_embeds))
        return self

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean.to(z.dtype)) @ self.components.to(z.dtype).T  # (N, K)

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        return self.buckets.encode(self.project(z))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (N, K) -> unit-norm embeddings (N, D)."""
        y = self.buckets.decode(codes).float()
        return F.normalize(self.mean.float() + y @ self.components.float(), dim=-1)
