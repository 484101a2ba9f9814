"""The unCLIP autoregressive prior P(z_i | y) (Ramesh et al. 2022, Sec. 2.1).

z_i is PCA-reduced and quantised (:class:`PCAQuantizer`) into a sequence of K codes, which a causal
transformer predicts one by one, conditioned on the sequence
``[encoded text tokens (L), z_t, quantised z_t . z_i token, code_1, ..., code_{K-1}]``.
Classifier-free guidance by replacing the text (tokens and z_t) with learned null values with
probability ``cond_drop_prob``; at sampling the logits are combined ``u + s (c - u)``. As in the
paper, the dot-product token lets sampling ask for embeddings that agree with the caption more
strongly: by default it is drawn from the top half of the buckets.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.models.prior.diffusion_prior import select_best
from dalle2_fast.models.prior.quantize import PCAQuantizer, QuantileBuckets
from dalle2_fast.models.prior.transformer import CausalTransformer, TextConditioning
from dalle2_fast.seeding import check_seeds, per_sample_rand


@dataclass
class ARPriorConfig:
    clip_dim: int = 64
    text_width: int = 128
    text_len: int = 24
    n_components: int = 32      # K principal components kept
    n_buckets: int = 64         # codes per component
    n_dot_buckets: int = 16     # codes of the z_t . z_i token
    width: int = 256
    layers: int = 4
    heads: int = 4
    cond_drop_prob: float = 0.1


@register_model("unclip_ar_prior")
class AutoregressivePrior(Pretrained, nn.Module):
    """See the module docstring. Call :meth:`fit_quantizers` on training embeddings first."""

    config_class = ARPriorConfig

    def __init__(self, config: ARPriorConfig):
        super().__init__()
        self.config = c = config
        self.text = TextConditioning(c.text_width, c.text_len, c.clip_dim, c.width)
        self.quantizer = PCAQuantizer(c.clip_dim, c.n_components, c.n_buckets)
        self.dot_buckets = QuantileBuckets(1, c.n_dot_buckets)
        self.dot_emb = nn.Embedding(c.n_dot_buckets, c.width)
        self.code_emb = nn.Embedding(c.n_components * c.n_buckets, c.width)  # one table per component
        self.transformer = CausalTransformer(c.width, c.layers, c.heads, c.text_len + 1 + c.n_components)
        self.head = nn.Linear(c.width, c.n_buckets)
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit_quantizers(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> None:
        """PCA basis, code buckets and dot-product buckets from paired training embeddings (N, D)."""
        if image_embeds.shape != text_embeds.shape:
            raise ValueError(f"fit_quantizers: image_embeds {tuple(image_embeds.shape)} and text_embeds "
                             f"{tuple(text_embeds.shape)} must have the same shape")
        self.quantizer.fit(image_embeds)
        self.dot_buckets.fit((image_embeds * text_embeds).sum(-1, keepdim=True))
        self.fitted.fill_(True)

    def _require_fitted(self):
        if not bool(self.fitted):
            raise RuntimeError("AutoregressivePrior: call fit_quantizers(image_embeds, text_embeds) before "
                               "training or sampling")

    def forward(self, codes: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                text_embed: torch.Tensor, dot_code: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for codes 1 .. k+1 given codes 1 .. k: codes (B, k), 0 <= k < K -> (B, k + 1, n_buckets)."""
        b, k = codes.shape
        c = self.config
        if k >= c.n_components:
            raise ValueError(f"AutoregressivePrior: at most {c.n_components - 1} input codes, got {k}")
        tok, mask, emb = self.text(text_tokens, text_mask, text_embed, drop)
        offs = torch.arange(k, device=codes.device) * c.n_buckets
        seq = torch.cat([tok, emb, self.dot_emb(dot_code)[:, None], self.code_emb(codes + offs)], dim=1)
        full_mask = torch.cat([mask, mask.new_ones(b, 1 + 1 + k)], dim=1)
        h = self.transformer(seq, key_padding_mask=~full_mask, causal=True)
        return self.head(h[:, c.text_len + 1:])  # positions of the dot token and the k codes

    def loss(self, image_embed: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
             text_embed: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Cross-entropy of the K codes of z_i (teacher forcing)."""
        self._require_fitted()
        b = image_embed.shape[0]
        codes = self.quantizer.encode(image_embed)                                   # (B, K)
        dot = self.dot_buckets.encode((image_embed * text_embed).sum(-1, keepdim=True))[:, 0]
        drop = (torch.rand(b, generator=generator) < self.config.cond_drop_prob).to(image_embed.device)
        logits = self(codes[:, :-1], text_tokens, text_mask, text_embed, dot, drop)  # (B, K, n)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))

    @torch.no_grad()
    def sample(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, text_embed: torch.Tensor,
               seeds: Sequence[int], guidance: float = 1.0, temperature: float = 1.0,
               dot_range: tuple[float, float] = (0.5, 1.0), n_candidates: int = 1,
               steps: int | None = None, progress: bool = False) -> torch.Tensor:
        """Unit-norm z_i (B, D), deterministic per seed. (``steps``/``progress`` are accepted for the
        pipeline's prior interface; AR sampling always takes n_components steps.)

        dot_range: the dot-product token is drawn uniformly from this fraction of its buckets
        (default: the top half). With ``n_candidates`` > 1 the draw with the largest z_i . z_t is kept.
        """
        self._require_fitted()
        c = self.config
        b = text_embed.shape[0]
        seeds = check_seeds(seeds, b)
        if not 0.0 <= dot_range[0] < dot_range[1] <= 1.0:
            raise ValueError(f"AutoregressivePrior.sample: dot_range must satisfy 0 <= lo < hi <= 1, got {dot_range}")
        if temperature <= 0:
            raise ValueError(f"AutoregressivePrior.sample: temperature must be > 0, got {temperature}")
        dev = text_embed.device
        u = per_sample_rand(seeds, (n_candidates, c.n_components + 1), device=dev)  # (B, C, K+1)
        u = u.transpose(0, 1).reshape(n_candidates * b, -1)
        rep = lambda z: z.repeat(n_candidates, *([1] * (z.dim() - 1)))  # noqa: E731
        tokens, mask, emb = rep(text_tokens), rep(text_mask), rep(text_embed)
        lo, hi = int(dot_range[0] * c.n_dot_buckets), max(int(dot_range[0] * c.n_dot_buckets) + 1,
                                                           int(round(dot_range[1] * c.n_dot_buckets)))
        dot = (lo + (u[:, 0] * (hi - lo)).long()).clamp_(0, c.n_dot_buckets - 1)
        n = tokens.shape[0]
        codes = torch.zeros(n, 0, dtype=torch.long, device=dev)
        drop = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(dev)
        for k in range(c.n_components):
            if guidance == 1.0:
                logits = self(codes, tokens, mask, emb, dot)[:, -1]
            else:
                both = self(torch.cat([codes, codes]), torch.cat([tokens, tokens]), torch.cat([mask, mask]),
                            torch.cat([emb, emb]), torch.cat([dot, dot]), drop)[:, -1]
                cond, uncond = both.chunk(2)
                logits = uncond + guidance * (cond - uncond)
            cdf = torch.softmax(logits.float() / temperature, -1).cumsum(-1)          # (N, n)
            nxt = torch.searchsorted(cdf, (u[:, k + 1] * cdf[:, -1])[:, None]).clamp_(max=c.n_buckets - 1)
            codes = torch.cat([codes, nxt], dim=1)
        return select_best(self.quantizer.decode(codes).view(n_candidates, b, -1), text_embed)

    def config_dict(self) -> dict:
        return asdict(self.config)
