"""The unCLIP autoregressive prior P(z_i | y) (Ramesh et al. 2022, Sec. 2.1).

z_i is PCA-reduced and quantised (:class:`PCAQuantizer`) into a sequence of K codes, which a causal
transformer predicts one by one, conditioned on the sequence
``[encoded text tokens (L), z_t, quantised z_t . z_i token, code_1, ..., code_{K-1}]``.
Classifier-free guidance by replacing the text (tokens and z_t) with learned null values with
probability ``cond_drop_prob``; at sampling the logits are combined ``u + s (c - u)``. As in the
paper, the dot-product token lets sampling ask for embeddings that agree with the caption more
strongly: by default it is drawn from the top half of the buckets.

Sampling is per-seed: every uniform a caption's draw uses (its dot token and its K codes, per
candidate) comes up front from its own generator, and each code is drawn from the categorical by
inverse CDF, so caption i's z_i depends only on ``seeds[i]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.models.categorical import sample_categorical
from dalle2_fast.models.prior._v1 import convert_v1_state_dict
from dalle2_fast.models.prior.conditioning import TextConditioning, candidate_seeds, select_best, text_fields
from dalle2_fast.models.prior.quantize import PCAQuantizer, QuantileBuckets
from dalle2_fast.nn.packed_linear import packed_linears
from dalle2_fast.nn.transformer import Transformer
from dalle2_fast.seeding import Draws, check_seeds, per_sample_rand

_BATCH_KEYS = ("image_embed", "text_tokens", "text_mask", "text_embed")


@dataclass(frozen=True)
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
        if not 0.0 <= c.cond_drop_prob <= 1.0:
            raise ValueError(f"ARPriorConfig.cond_drop_prob must be in [0, 1], got {c.cond_drop_prob}")
        self.text = TextConditioning(c.text_width, c.text_len, c.clip_dim, c.width)
        self.quantizer = PCAQuantizer(c.clip_dim, c.n_components, c.n_buckets)
        self.dot_buckets = QuantileBuckets(1, c.n_dot_buckets)
        self.dot_emb = nn.Embedding(c.n_dot_buckets, c.width)
        self.code_emb = nn.Embedding(c.n_components * c.n_buckets, c.width)  # one table per component
        self.transformer = Transformer(c.width, c.layers, c.heads, c.text_len + 1 + c.n_components, causal=True)
        self.head = nn.Linear(c.width, c.n_buckets)
        self.register_buffer("fitted", torch.tensor(False))

    @classmethod
    def _upgrade_state_dict(cls, state: dict, config: ARPriorConfig) -> dict:
        return convert_v1_state_dict(state)  # checkpoints written before the redesign

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
        pre, pre_mask = self._prefix(text_tokens, text_mask, text_embed, dot_code, drop)
        offs = torch.arange(k, device=codes.device) * c.n_buckets
        seq = torch.cat([pre, self.code_emb(codes + offs)], dim=1)
        full_mask = torch.cat([pre_mask, pre_mask.new_ones(b, k)], dim=1)
        h = self.transformer(seq, key_padding_mask=~full_mask)
        return self.head(h[:, c.text_len + 1:])  # positions of the dot token and the k codes

    def _prefix(self, text_tokens, text_mask, text_embed, dot_code, drop):
        """The sequence before the codes, [text tokens, z_t, dot token]: (B, L + 2, width), and its
        mask (B, L + 2) bool True = real."""
        tok, mask, emb = self.text(text_tokens, text_mask, text_embed, drop)
        seq = torch.cat([tok, emb, self.dot_emb(dot_code)[:, None]], dim=1)
        return seq, torch.cat([mask, mask.new_ones(mask.shape[0], 2)], dim=1)

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Cross-entropy of the K codes of z_i (teacher forcing): {'loss'} (mean over the batch).

        batch: ``image_embed`` (B, D) unit-norm z_i, ``text_tokens`` (B, L, W), ``text_mask``
        (B, L) bool True = real, ``text_embed`` (B, D) z_t; optional ``seeds`` (ItemSeeds) or
        ``generator``, from which the text drop for classifier-free guidance ("text_drop") is
        drawn per item.
        """
        self._require_fitted()
        missing = [k for k in _BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"AutoregressivePrior.loss: batch is missing {missing} (needs {list(_BATCH_KEYS)})")
        zi, zt = batch["image_embed"], batch["text_embed"]
        if zi.dim() != 2 or zi.shape != zt.shape or zi.shape[1] != self.config.clip_dim:
            raise ValueError(f"AutoregressivePrior.loss: image_embed and text_embed must both be "
                             f"(B, {self.config.clip_dim}), got {tuple(zi.shape)} and {tuple(zt.shape)}")
        codes = self.quantizer.encode(zi)                                              # (B, K)
        dot = self.dot_buckets.encode((zi * zt).sum(-1, keepdim=True))[:, 0]
        drop = Draws.of(batch, zi.shape[0], zi.device).bernoulli("text_drop", self.config.cond_drop_prob)
        logits = self(codes[:, :-1], batch["text_tokens"], batch["text_mask"], zt, dot, drop)  # (B, K, n)
        return {"loss": F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))}

    @torch.no_grad()
    def sample(self, text, seeds: Sequence[int], *, guidance: float = 1.0, temperature: float = 1.0,
               dot_range: tuple[float, float] = (0.5, 1.0), n_candidates: int = 1,
               steps: int | str | None = None, progress: bool = False, kv_cache: bool = True) -> torch.Tensor:
        """Unit-norm z_i (B, D); z_i of caption i depends only on ``seeds[i]``.

        text: any object with ``.tokens`` (B, L, W), ``.mask`` (B, L) and ``.embed`` (B, D) (the
        CLIP adapter's ``TextEncoding``). guidance: classifier-free guidance on the logits,
        u + s (c - u). dot_range: the dot-product token is drawn uniformly from this fraction of
        its buckets (default: the top half). With ``n_candidates`` > 1 the draw with the largest
        z_i . z_t is kept. ``steps`` is accepted for the priors' common sampling call and ignored:
        AR sampling always takes n_components steps. kv_cache: decode with a growing key/value
        cache (:meth:`Transformer.prefill <dalle2_fast.nn.Transformer.prefill>`: the prefix once,
        then one position per code; the same logits to float tolerance) instead of re-running the
        whole sequence for every code.
        """
        self._require_fitted()
        c = self.config
        text_tokens, text_mask, text_embed = text_fields(text)
        b = text_embed.shape[0]
        seeds = check_seeds(seeds, b)
        if not 0.0 <= dot_range[0] < dot_range[1] <= 1.0:
            raise ValueError(f"AutoregressivePrior.sample: dot_range must satisfy 0 <= lo < hi <= 1, got {dot_range}")
        if temperature <= 0:
            raise ValueError(f"AutoregressivePrior.sample: temperature must be > 0, got {temperature}")
        if isinstance(n_candidates, bool) or not isinstance(n_candidates, int) or n_candidates < 1:
            raise ValueError(f"AutoregressivePrior.sample: n_candidates must be an int >= 1, got {n_candidates!r}")
        dev = text_embed.device
        # every uniform of a caption's candidate, drawn up front from its own stream: (C * B, K + 1)
        u = torch.cat([per_sample_rand(candidate_seeds(seeds, k), (c.n_components + 1,), device=dev)
                       for k in range(n_candidates)])
        rep = lambda z: z.repeat(n_candidates, *([1] * (z.dim() - 1)))  # noqa: E731
        tokens, mask, emb = rep(text_tokens), rep(text_mask), rep(text_embed)
        lo, hi = int(dot_range[0] * c.n_dot_buckets), max(int(dot_range[0] * c.n_dot_buckets) + 1,
                                                           int(round(dot_range[1] * c.n_dot_buckets)))
        dot = (lo + (u[:, 0] * (hi - lo)).long()).clamp_(0, c.n_dot_buckets - 1)
        n = tokens.shape[0]
        steps_k = range(c.n_components)
        if progress:
            from tqdm.auto import tqdm

            steps_k = tqdm(steps_k, desc="ar prior", leave=False)
        if guidance != 1.0:  # [cond rows; uncond rows], combined u + s (c - u) on the logits
            drop = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]).to(dev)
            tokens, mask, emb, dot2 = (torch.cat([v, v]) for v in (tokens, mask, emb, dot))
        else:
            drop, dot2 = None, dot
        codes = torch.zeros(n, 0, dtype=torch.long, device=dev)
        if kv_cache:  # the prefix runs once, then every code is one position against the growing cache
            seq, seq_mask = self._prefix(tokens, mask, emb, dot2, drop)
            h, cache = self.transformer.prefill(seq, key_padding_mask=~seq_mask, grow=True)
        with packed_linears(self):  # one position per code: few-row linears, weights packed once (CPU)
            for k in steps_k:
                if kv_cache:
                    if k:
                        last = codes[:, -1] + (k - 1) * c.n_buckets
                        h = self.transformer(self.code_emb(last if drop is None else torch.cat([last, last]))[:, None],
                                             cache=cache)
                    logits = self.head(h[:, -1])
                else:
                    cc = codes if drop is None else torch.cat([codes, codes])
                    logits = self(cc, tokens, mask, emb, dot2, drop)[:, -1]
                if drop is not None:
                    cond, uncond = logits.chunk(2)
                    logits = uncond + guidance * (cond - uncond)
                codes = torch.cat([codes, sample_categorical(logits, u[:, k + 1], temperature)[:, None]], dim=1)
        return select_best(self.quantizer.decode(codes).view(n_candidates, b, -1), text_embed)
