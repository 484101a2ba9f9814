"""The unCLIP diffusion prior P(z_i | y) (Ramesh et al. 2022, Sec. 2.1).

A decoder-only transformer with a causal mask over the sequence
``[encoded text tokens (L), z_t, timestep embedding, noised z_i, final query]``; the output at the
final query predicts the *unnoised* z_i directly (mean-squared error on x0, Eq. 2 of the paper).
The process is the diffusion core's ``GaussianDiffusion`` (by default cosine, 1000 steps, x0
prediction, fixed-small variance, L_simple), sampled by the core's samplers (DDIM by default)
with ``ClassifierFreeGuidance`` wrapping the network: the unconditional rows are the same call
with the ``drop`` kwarg set, which swaps the text (tokens and z_t) for learned null values — the
values the network was trained on with probability ``cond_drop_prob``.

Embeddings are scaled to unit variance by the ``embed_scale`` buffer: sqrt(D) for unit-norm
CLIP embeddings unless given to the constructor or fitted on data (:meth:`fit_embed_scale`);
the config is never changed. Sampling draws ``n_candidates`` (2, as in the paper) embeddings per
caption and keeps the one with the larger dot product with z_t.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.diffusion import ClassifierFreeGuidance, DiffusionConfig, GaussianDiffusion, run_sampler
from dalle2_fast.models.prior._v1 import convert_v1_diffusion_prior_config, convert_v1_state_dict
from dalle2_fast.models.prior.conditioning import TextConditioning, candidate_seeds, select_best, text_fields
from dalle2_fast.nn.embeddings import timestep_embedding
from dalle2_fast.nn.transformer import Transformer
from dalle2_fast.seeding import Draws, check_seeds


def prior_diffusion_config() -> DiffusionConfig:
    """The prior's process: cosine schedule, 1000 steps, x0 prediction, fixed-small variance, L_simple."""
    return DiffusionConfig(schedule="cosine", num_timesteps=1000, mean_type="x0", var_type="fixed_small",
                           loss="simple")


@dataclass(frozen=True)
class DiffusionPriorConfig:
    clip_dim: int = 64          # D, CLIP embedding size
    text_width: int = 128       # W of CLIP text token features
    text_len: int = 24          # L, CLIP context length
    width: int = 256
    layers: int = 4
    heads: int = 4
    cond_drop_prob: float = 0.1
    n_candidates: int = 2       # default best-of-n at sampling
    diffusion: DiffusionConfig = field(default_factory=prior_diffusion_config)


_BATCH_KEYS = ("image_embed", "text_tokens", "text_mask", "text_embed")


@register_model("unclip_diffusion_prior")
class DiffusionPrior(Pretrained, nn.Module):
    """Network of the prior, with its process as ``self.diffusion``; see the module docstring.

    embed_scale: the initial scale of the embeddings (None: sqrt(clip_dim)); a fitted or loaded
    value lives in the ``embed_scale`` buffer."""

    config_class = DiffusionPriorConfig

    def __init__(self, config: DiffusionPriorConfig, embed_scale: float | None = None):
        super().__init__()
        c = self.config = config
        if not 0.0 <= c.cond_drop_prob <= 1.0:
            raise ValueError(f"DiffusionPriorConfig.cond_drop_prob must be in [0, 1], got {c.cond_drop_prob}")
        if c.n_candidates < 1:
            raise ValueError(f"DiffusionPriorConfig.n_candidates must be >= 1, got {c.n_candidates}")
        if c.diffusion.var_type == "learned_range":
            raise ValueError("DiffusionPriorConfig.diffusion.var_type='learned_range' needs variance outputs, "
                             "and the prior outputs D values only: use 'fixed_small' or 'fixed_large'")
        self.diffusion = GaussianDiffusion.from_config(c.diffusion)
        self.text = TextConditioning(c.text_width, c.text_len, c.clip_dim, c.width)
        self.time_mlp = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.x_proj = nn.Linear(c.clip_dim, c.width)
        self.query = nn.Parameter(torch.randn(c.width) * 0.02)
        self.transformer = Transformer(c.width, c.layers, c.heads, c.text_len + 4, causal=True)
        self.out = nn.Linear(c.width, c.clip_dim)
        scale = math.sqrt(c.clip_dim) if embed_scale is None else float(embed_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"DiffusionPrior: embed_scale must be a finite number > 0, got {embed_scale}")
        self.register_buffer("embed_scale", torch.tensor(scale))

    # ---- checkpoints written before the redesign ------------------------------------------------
    @classmethod
    def _upgrade_config(cls, d: dict) -> dict:
        return convert_v1_diffusion_prior_config(d)

    @classmethod
    def _upgrade_state_dict(cls, state: dict, config: DiffusionPriorConfig) -> dict:
        return convert_v1_state_dict(state)

    @torch.no_grad()
    def fit_embed_scale(self, image_embeds: torch.Tensor) -> float:
        """Set the ``embed_scale`` buffer so the training image embeddings (N, D) have unit
        variance per coordinate; returns it."""
        s = float(1.0 / image_embeds.float().std().clamp_min(1e-8))
        self.embed_scale.fill_(s)
        return s

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                text_embed: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted x0 (scaled z_i): (B, D).

        x_t: (B, D) noised scaled embedding; t: (B,) timesteps; text_tokens: (B, L, W);
        text_mask: (B, L) bool True = real token; text_embed: (B, D) unit-norm z_t;
        drop: (B,) bool, True = replace the text by the null conditioning.
        """
        b, d = x_t.shape
        if d != self.config.clip_dim:
            raise ValueError(f"DiffusionPrior: x_t must be (B, {self.config.clip_dim}), got {tuple(x_t.shape)}")
        tok, mask, emb = self.text(text_tokens, text_mask, text_embed * self.embed_scale, drop)
        tim = self.time_mlp(timestep_embedding(t, self.config.width))[:, None]
        x = self.x_proj(x_t)[:, None]
        q = self.query.to(x.dtype).expand(b, 1, -1)
        seq = torch.cat([tok, emb, tim, x, q], dim=1)  # (B, L + 4, width)
        full_mask = torch.cat([mask, mask.new_ones(b, 4)], dim=1)  # (B, L + 4), True = real
        h = self.transformer(seq, key_padding_mask=~full_mask)
        return self.out(h[:, -1])

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """L_simple on x0 at a uniformly drawn step: {'loss', 'mse'} (means over the batch).

        batch: ``image_embed`` (B, D) unit-norm z_i, ``text_tokens`` (B, L, W), ``text_mask``
        (B, L) bool True = real, ``text_embed`` (B, D) z_t; optional ``seeds`` (ItemSeeds) or
        ``generator``, from which the step ("t"), the noise ("noise") and the text drop for
        classifier-free guidance ("text_drop") are drawn per item.
        """
        missing = [k for k in _BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"DiffusionPrior.loss: batch is missing {missing} (needs {list(_BATCH_KEYS)})")
        zi = batch["image_embed"]
        if zi.dim() != 2 or zi.shape[1] != self.config.clip_dim:
            raise ValueError(f"DiffusionPrior.loss: image_embed must be (B, {self.config.clip_dim}), "
                             f"got {tuple(zi.shape)}")
        x0 = zi * self.embed_scale
        draws = Draws.of(batch, x0.shape[0], x0.device)
        t = draws.randint("t", self.diffusion.num_timesteps)
        noise = draws.randn("noise", x0.shape[1:], dtype=x0.dtype)
        drop = draws.bernoulli("text_drop", self.config.cond_drop_prob)
        kw = {"text_tokens": batch["text_tokens"], "text_mask": batch["text_mask"],
              "text_embed": batch["text_embed"], "drop": drop}
        terms = self.diffusion.training_losses(self, x0, t, noise=noise, model_kwargs=kw)
        return {k: v.mean() for k, v in terms.items()}

    @torch.no_grad()
    def sample(self, text, seeds: Sequence[int], *, steps: int | str | Sequence[int] | None = None,
               guidance: float = 1.0, n_candidates: int | None = None, eta: float = 0.0, sampler: str = "ddim",
               progress: bool = False) -> torch.Tensor:
        """Unit-norm image embeddings z_i: (B, D), one per caption; z_i of caption i depends only
        on ``seeds[i]``.

        text: the captions' encoding, any object with ``.tokens`` (B, L, W), ``.mask`` (B, L)
        and ``.embed`` (B, D) (the CLIP adapter's ``TextEncoding``). steps: the respacing
        vocabulary (an int, "ddimN", section counts; None: every step of ``self.diffusion``).
        guidance: classifier-free guidance scale on the predicted x0 (1: conditional only).
        Of ``n_candidates`` draws (default ``config.n_candidates``) the one with the largest
        z_i . z_t is kept. sampler: 'ddim' (with ``eta``), 'ddpm' or 'dpmpp'.
        """
        _, _, embed = text_fields(text)
        cands = self.sample_candidates(text, seeds, steps=steps, guidance=guidance, n_candidates=n_candidates,
                                       eta=eta, sampler=sampler, progress=progress)
        return select_best(cands, embed)

    @torch.no_grad()
    def sample_candidates(self, text, seeds: Sequence[int], *, steps: int | str | Sequence[int] | None = None,
                          guidance: float = 1.0, n_candidates: int | None = None, eta: float = 0.0,
                          sampler: str = "ddim", progress: bool = False) -> torch.Tensor:
        """All draws, unit-norm: (n_candidates, B, D); candidate c of caption i depends only on
        ``seeds[i]`` and c. Arguments as :meth:`sample`."""
        tokens, mask, embed = text_fields(text)
        b, d = embed.shape[0], self.config.clip_dim
        seeds = check_seeds(seeds, b)
        n_cand = self.config.n_candidates if n_candidates is None else n_candidates
        if isinstance(n_cand, bool) or not isinstance(n_cand, int) or n_cand < 1:
            raise ValueError(f"DiffusionPrior.sample: n_candidates must be an int >= 1, got {n_candidates!r}")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise ValueError(f"DiffusionPrior.sample: guidance must be a finite number, got {guidance!r}")
        all_seeds = [s for c in range(n_cand) for s in candidate_seeds(seeds, c)]  # candidate-major
        rep = lambda z: z.repeat(n_cand, *([1] * (z.dim() - 1)))  # noqa: E731
        dev = embed.device
        kw = {"text_tokens": rep(tokens), "text_mask": rep(mask), "text_embed": rep(embed),
              "drop": torch.zeros(n_cand * b, dtype=torch.bool, device=dev)}
        denoiser = self
        if guidance != 1.0:  # uncond rows: the same inputs with the text dropped
            denoiser = ClassifierFreeGuidance(self, float(guidance),
                                              {"drop": torch.ones(1, dtype=torch.bool, device=dev)})
        x = run_sampler(sampler, denoiser, self.diffusion, (n_cand * b, d), steps=steps, eta=eta, model_kwargs=kw,
                        seeds=all_seeds, progress=progress, device=dev)
        return F.normalize(x.float(), dim=-1).view(n_cand, b, d)
