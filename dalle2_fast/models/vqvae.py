"""VQ-VAE (van den Oord et al. 2017): conv encoder -> ``nn.VectorQuantizer`` (nearest_code
lookup, EMA codebook, dead-code revival) -> conv decoder; loss = MSE + commitment (Eq. 3)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.models.blocks import ConvDecoder, ConvEncoder, check_image, check_power_of_two_factor
from dalle2_fast.nn import VectorQuantizer


@dataclass(frozen=True)
class VQVAEConfig:
    resolution: int = 32
    in_channels: int = 3
    channels: int = 64
    n_res: int = 2
    downsample: int = 2  # stride-2 stages: codes are (R / 2^downsample)^2
    num_codes: int = 512  # up to 8192
    code_dim: int = 64  # up to 512 / 768
    beta: float = 0.25
    ema: bool = True
    decay: float = 0.99
    dead_code_after: int = 20  # revive unused codes quickly: early training collapses onto few codes

    def __post_init__(self):
        if not (self.beta >= 0):
            raise ValueError(f"VQVAEConfig.beta must be >= 0, got {self.beta!r}")


class VQVAEOutput(NamedTuple):
    recon: torch.Tensor  # (B, C, R, R)
    loss: torch.Tensor  # recon MSE + VQ loss
    recon_loss: torch.Tensor
    vq_loss: torch.Tensor
    perplexity: torch.Tensor
    indices: torch.Tensor  # (B, r, r) int64


def make_quantizer(c) -> VectorQuantizer:
    vq = VectorQuantizer(c.num_codes, c.code_dim, beta=c.beta, ema=c.ema, decay=c.decay,
                         dead_code_after=c.dead_code_after)
    vq.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
    return vq


@torch.no_grad()
def init_codebook(vq: VectorQuantizer, z: torch.Tensor) -> None:
    """On the first training batch, set the codes to random encoder outputs (data-dependent
    init): a N(0, 1) codebook far from the encoder's outputs otherwise collapses onto a few codes."""
    if not vq.training or bool(vq.initialised):
        return
    flat = z.detach().movedim(1, -1).reshape(-1, vq.dim).float()  # (N, D)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # data-parallel: pick from the global batch (ranks' shards in rank order), with the same
        # RNG draws on every rank -> the codebook one process gets from the whole batch
        parts = [torch.empty_like(flat) for _ in range(torch.distributed.get_world_size())]
        torch.distributed.all_gather(parts, flat.contiguous())
        flat = torch.cat(parts)
    pick = torch.randint(0, flat.shape[0], (vq.num_codes,), device=flat.device)
    new = flat[pick] + 1e-3 * torch.randn(vq.num_codes, vq.dim, device=flat.device)
    vq.embedding.data.copy_(new.to(vq.embedding.dtype))
    if vq.ema:
        vq.embed_avg.copy_(new)
        vq.cluster_size.fill_(1.0)
    vq.initialised.fill_(True)


@register_model("vqvae")
class VQVAE(nn.Module, Pretrained):
    config_class = VQVAEConfig

    def __init__(self, config: VQVAEConfig):
        super().__init__()
        self.config = c = config
        check_power_of_two_factor(c.resolution, c.downsample, "VQVAE")
        self.code_hw = c.resolution >> c.downsample
        self.encoder = ConvEncoder(c.in_channels, c.channels, c.code_dim, c.downsample, c.n_res)
        self.quantizer = make_quantizer(c)
        self.decoder = ConvDecoder(c.code_dim, c.channels, c.in_channels, c.downsample, c.n_res)

    def forward(self, x: torch.Tensor) -> VQVAEOutput:
        check_image(x, self.config.resolution, self.config.in_channels, "VQVAE")
        z = self.encoder(x)  # (B, D, r, r)
        init_codebook(self.quantizer, z)
        q = self.quantizer(z)
        recon = self.decoder(q.quantized)
        mse = F.mse_loss(recon, x)
        return VQVAEOutput(recon, mse + q.loss, mse, q.loss, q.perplexity, q.indices)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, R, R) -> code indices (B, r, r)."""
        check_image(x, self.config.resolution, self.config.in_channels, "VQVAE")
        return self.quantizer(self.encoder(x)).indices

    @torch.no_grad()
    def decode_indices(self, idx: torch.Tensor) -> torch.Tensor:
        """code indices (B, r, r) -> images (B, C, R, R) (codes gathered, never one-hot)."""
        return self.decoder(self.quantizer.embed(idx).permute(0, 3, 1, 2)).clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_indices(self.encode(x))
