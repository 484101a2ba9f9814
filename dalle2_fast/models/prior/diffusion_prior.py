"""The unCLIP diffusion prior P(z_i | y) (Ramesh et al. 2022, Sec. 2.1).

A decoder-only transformer with a causal mask over the sequence
``[encoded text tokens (L), z_t, timestep embedding, noised z_i, final query]``; the output at the
final query predicts the *unnoised* z_i directly (mean-squared error on x0, Eq. 2 of the paper).
Embeddings are scaled to unit variance (``embed_scale``, sqrt(D) for unit-norm CLIP embeddings
unless fitted on data). Classifier-free guidance: the text conditioning (tokens and z_t) is replaced
by learned null values with probability ``cond_drop_prob`` in training. Sampling draws
``n_candidates`` (2, as in the paper) embeddings per caption and keeps the one with the larger
dot product with z_t.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.models.prior.schedule import CosineSchedule
from dalle2_fast.models.prior.transformer import CausalTransformer, TextConditioning, timestep_embedding
from dalle2_fast.seeding import check_seeds, per_sample_randn


@dataclass
class DiffusionPriorConfig:
    clip_dim: int = 64          # D, CLIP embedding size
    text_width: int = 128       # W of CLIP text token features
    text_len: int = 24          # L, CLIP context length
    width: int = 256
    layers: int = 4
    heads: int = 4
    timesteps: int = 1000
    cond_drop_prob: float = 0.1
    embed_scale: float = 0.0    # 0: sqrt(clip_dim), unit variance for unit-norm embeddings


@register_model("unclip_diffusion_prior")
class DiffusionPrior(Pretrained, nn.Module):
    """Network and cosine diffusion process of the prior; see the module docstring."""

    config_class = DiffusionPriorConfig

    def __init__(self, config: DiffusionPriorConfig):
        super().__init__()
        self.config = config
        c = config
        self.text = TextConditioning(c.text_width, c.text_len, c.clip_dim, c.width)
        self.time_mlp = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.x_proj = nn.Linear(c.clip_dim, c.width)
        self.query = nn.Parameter(torch.randn(c.width) * 0.02)
        self.transformer = CausalTransformer(c.width, c.layers, c.heads, c.text_len + 4)
        self.out = nn.Linear(c.width, c.clip_dim)
        self.schedule = CosineSchedule(c.timesteps)
        scale = c.embed_scale or math.sqrt(c.clip_dim)
        self.register_buffer("embed_scale", torch.tensor(float(scale)))

    def fit_embed_scale(self, image_embeds: torch.Tensor) -> float:
        """Set the scale so the training image embeddings have unit variance per coordinate."""
        s = float(1.0 / image_embeds.float().std().clamp_min(1e-8))
        self.embed_scale.fill_(s)
        self.config.embed_scale = s
        return s

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                text_embed: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted x0 (scaled z_i): (B, D).

        x_t: (B, D) noised scaled embedding; t: (B,) timesteps; text_tokens: (B, L, W);
        text_mask: (B, L) bool; text_embed: (B, D) unit-norm z_t; drop: (B,) bool, null the text.
        """
        b, d = x_t.shape
        if d != self.config.clip_dim:
            raise ValueError(f"DiffusionPrior: x_t must be (B, {self.config.clip_dim}), got {tuple(x_t.shape)}")
        tok, mask, emb = self.text(text_tokens, text_mask, text_embed * self.embed_scale, drop)
        tim = self.time_mlp(timestep_embedding(t, self.config.width))[:, None]
        x = self.x_proj(x_t)[:, None]
        q = self.query.to(x.dtype).expand(b, 1, -1)
        seq = torch.cat([tok, emb, tim, x, q], dim=1)  # (B, L + 4, width)
        full_mask = torch.cat([mask, mask.new_ones(b, 4)], dim=1)
        h = self.transformer(seq, key_padding_mask=~full_mask, causal=True)
        return self.out(h[:, -1])

    def loss(self, image_embed: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
             text_embed: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE between the predicted and the true scaled z_i at a uniformly drawn timestep."""
        b = image_embed.shape[0]
        dev = image_embed.device
        x0 = image_embed * self.embed_scale
        t = torch.randint(0, self.config.timesteps, (b,), generator=generator).to(dev)
        noise = torch.randn(x0.shape, generator=generator).to(dev, x0.dtype)
        drop = (torch.rand(b, generator=generator) < self.config.cond_drop_prob).to(dev)
        pred = self(self.schedule.q_sample(x0, t, noise), t, text_tokens, text_mask, text_embed, drop)
        return F.mse_loss(pred, x0)

    def _x0_rows(self, x, t, tokens, mask, emb, guidance: float) -> torch.Tensor:
        """The predicted x0: (B, D), or with guidance != 1 (2B, D), conditional rows then
        unconditional (text dropped) — combined by the DDIM step kernel."""
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        if guidance == 1.0:
            return self(x, tt, tokens, mask, emb)
        b = x.shape[0]
        drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
        return self(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([tokens, tokens]), torch.cat([mask, mask]),
                    torch.cat([emb, emb]), drop)

    @torch.no_grad()
    def sample(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, text_embed: torch.Tensor,
               seeds: Sequence[int], steps: int = 64, guidance: float = 1.0, n_candidates: int = 2,
               eta: float = 0.0, progress: bool = False) -> torch.Tensor:
        """Unit-norm image embeddings z_i: (B, D), one per caption, deterministic per seed.

        DDIM over ``steps`` respaced timesteps with classifier-free guidance ``guidance`` on the
        predicted x0; of ``n_candidates`` draws the one with the largest z_i . z_t is kept.
        """
        z = self.sample_candidates(text_tokens, text_mask, text_embed, seeds, steps, guidance, n_candidates,
                                   eta, progress)
        return select_best(z, text_embed)

    @torch.no_grad()
    def sample_candidates(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, text_embed: torch.Tensor,
                          seeds: Sequence[int], steps: int = 64, guidance: float = 1.0, n_candidates: int = 2,
                          eta: float = 0.0, progress: bool = False) -> torch.Tensor:
        """All ``n_candidates`` draws per caption, unit-norm: (n_candidates, B, D)."""
        b, d = text_embed.shape[0], self.config.clip_dim
        seeds = check_seeds(seeds, b)
        if n_candidates < 1:
            raise ValueError(f"DiffusionPrior.sample: n_candidates must be >= 1, got {n_candidates}")
        ts = self.schedule.respaced(steps)
        dev = text_embed.device
        noise = per_sample_randn(seeds, (n_candidates, len(ts) + 1, d), device=dev)  # (B, C, S+1, D)
        noise = noise.transpose(0, 1).reshape(n_candidates * b, len(ts) + 1, d)      # candidate-major
        rep = lambda z: z.repeat(n_candidates, *([1] * (z.dim() - 1)))  # noqa: E731
        tokens, mask, emb = rep(text_tokens), rep(text_mask), rep(text_embed)
        x = noise[:, 0]
        it = enumerate(ts)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(list(it), desc="prior", leave=False)
        for i, t in it:
            x0 = self._x0_rows(x, t, tokens, mask, emb, guidance)
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            x = self.schedule.ddim_step(x, x0, t, t_prev, eta, noise[:, i + 1],
                                        guidance=None if guidance == 1.0 else guidance)
        return F.normalize(x.float(), dim=-1).view(n_candidates, b, d)

    def config_dict(self) -> dict:
        return asdict(self.config)


def select_best(candidates: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
    """Of candidates (C, B, D), the one per caption with the largest dot product with z_t (B, D)."""
    best = (candidates * text_embed.float()[None]).sum(-1).argmax(0)  # (B,)
    return candidates[best, torch.arange(candidates.shape[1], device=candidates.device)]
