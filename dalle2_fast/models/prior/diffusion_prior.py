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

The same network is diffusers' ``PriorTransformer`` (Karlo, Kandinsky 2.1 / 2.2, Stable
unCLIP; :mod:`dalle2_fast.interop.prior_transformer`); their conventions are config fields
whose defaults are ours: ``embed_norm='mean_std'`` (per-dimension ``clip_mean`` / ``clip_std``
buffers instead of one scale), ``raw_embeddings`` (CLIP's unnormalised z_t in and z_i out),
``uncond='empty_prompt'`` (the unconditional branch is the empty caption's encoding, passed as
``null_text``, instead of learned nulls), ``x0_clamp`` (the guided x0 clamped at every step),
``sampling`` (sampler, spacing) and the architecture options ``time_embed_dim``, ``time_act``,
``input_norm``, ``embed_proj_norm``, ``query_token``.
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
from dalle2_fast.diffusion.conventions import SamplingConfig
from dalle2_fast.models.prior._v1 import convert_v1_diffusion_prior_config, convert_v1_state_dict
from dalle2_fast.models.prior.conditioning import (TextConditioning, batch_of, candidate_seeds, repeat_batch,
                                                   select_best, text_fields)
from dalle2_fast.nn.embeddings import timestep_embedding
from dalle2_fast.nn.kv_cache import KVCache
from dalle2_fast.nn.packed_linear import packed_linears
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
    # architecture options (diffusers PriorTransformer's; defaults: ours)
    time_embed_dim: int | None = None  # hidden width of the timestep MLP (None: width)
    time_act: str = "silu"             # its activation: 'silu' | 'gelu'
    input_norm: bool = False           # LayerNorm on the sequence before the blocks (norm_in_type='layer')
    embed_proj_norm: bool = False      # LayerNorm on z_t before its projection (embedding_proj_norm_type)
    query_token: bool = True           # output read at a learned final query token ('prd'); False: at z_i's token
    # conventions (module docstring)
    embed_norm: str = "scale"          # 'scale' (embed_scale buffer) | 'mean_std' (clip_mean/clip_std buffers)
    raw_embeddings: bool = False       # z_t in / z_i out unnormalised (CLIP's raw embeddings)
    uncond: str = "learned"            # CFG's unconditional text: 'learned' nulls | 'empty_prompt' (null_text)
    x0_clamp: float | None = None      # clamp the guided predicted x0 to [-c, c] at every step (None: no clamp)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)


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
        _check_conventions(c)
        self.diffusion = GaussianDiffusion.from_config(c.diffusion)
        self.text = TextConditioning(c.text_width, c.text_len, c.clip_dim, c.width,
                                     learned_null=c.uncond == "learned", embed_norm=c.embed_proj_norm)
        hid = c.time_embed_dim or c.width
        act = nn.SiLU() if c.time_act == "silu" else nn.GELU()
        self.time_mlp = nn.Sequential(nn.Linear(c.width, hid), act, nn.Linear(hid, c.width))
        self.x_proj = nn.Linear(c.clip_dim, c.width)
        self.query = nn.Parameter(torch.randn(c.width) * 0.02) if c.query_token else None
        self.transformer = Transformer(c.width, c.layers, c.heads, c.text_len + 3 + int(c.query_token), causal=True,
                                       input_norm=c.input_norm)
        self.out = nn.Linear(c.width, c.clip_dim)
        if c.embed_norm == "mean_std":
            if embed_scale is not None:
                raise ValueError("DiffusionPrior: embed_scale applies to embed_norm='scale', not 'mean_std'")
            self.register_buffer("clip_mean", torch.zeros(c.clip_dim))
            self.register_buffer("clip_std", torch.ones(c.clip_dim))
            return
        scale = math.sqrt(c.clip_dim) if embed_scale is None else float(embed_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"DiffusionPrior: embed_scale must be a finite number > 0, got {embed_scale}")
        self.register_buffer("embed_scale", torch.tensor(scale))

    @classmethod
    def from_diffusers(cls, path, scheduler: dict | None = None, dtype: torch.dtype = torch.float32) -> "DiffusionPrior":
        """A diffusers ``PriorTransformer`` (Karlo, Kandinsky 2.1 / 2.2, Stable unCLIP): its folder or
        a pipeline folder holding ``prior/`` (:mod:`dalle2_fast.interop.prior_transformer`)."""
        from dalle2_fast.interop.prior_transformer import prior_from_diffusers

        return prior_from_diffusers(path, scheduler=scheduler, dtype=dtype)

    @property
    def null_prompt(self) -> str | None:
        """The caption whose encoding is the unconditional branch ('' for ``uncond='empty_prompt'``;
        pass it as ``null_text`` to :meth:`sample`), or None (learned nulls)."""
        return "" if self.config.uncond == "empty_prompt" else None

    def to_latent(self, z: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (B, D) -> the diffusion space (x0)."""
        if self.config.embed_norm == "mean_std":
            return (z - self.clip_mean.to(z.dtype)) / self.clip_std.to(z.dtype)
        return z * self.embed_scale

    def from_latent(self, x: torch.Tensor) -> torch.Tensor:
        """The diffusion space -> CLIP image embeddings (B, D): raw (``raw_embeddings``) or unit-norm."""
        x = x.float()
        if self.config.embed_norm == "mean_std":
            x = x * self.clip_std.float() + self.clip_mean.float()
        return x if self.config.raw_embeddings else F.normalize(x, dim=-1)

    def _text_in(self, text_embed: torch.Tensor) -> torch.Tensor:
        return text_embed * self.embed_scale if self.config.embed_norm == "scale" else text_embed

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
        if self.config.embed_norm != "scale":
            raise ValueError("DiffusionPrior.fit_embed_scale: this prior normalises per dimension "
                             "(embed_norm='mean_std'); set its clip_mean / clip_std buffers instead")
        s = float(1.0 / image_embeds.float().std().clamp_min(1e-8))
        self.embed_scale.fill_(s)
        return s

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text_tokens: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, text_embed: torch.Tensor | None = None,
                drop: torch.Tensor | None = None, prefix: KVCache | None = None) -> torch.Tensor:
        """Predicted x0 (scaled z_i): (B, D).

        x_t: (B, D) noised embedding in the diffusion space; t: (B,) timesteps; text_tokens:
        (B, L, W); text_mask: (B, L) bool True = real token; text_embed: (B, D) z_t (unit-norm, or
        raw with ``raw_embeddings``); drop: (B,) bool, True = replace the text by the null
        conditioning (learned nulls only). prefix: instead of the four text arguments, their
        :meth:`prefix_cache` (the same text for many calls: only the trailing tokens run).
        """
        b, d = x_t.shape
        if d != self.config.clip_dim:
            raise ValueError(f"DiffusionPrior: x_t must be (B, {self.config.clip_dim}), got {tuple(x_t.shape)}")
        tim = self.time_mlp(timestep_embedding(t, self.config.width))[:, None]
        x = self.x_proj(x_t)[:, None]
        parts = [tim.to(x.dtype), x]  # the trailing tokens: [timestep, noised z_i, (query)]
        if self.query is not None:
            parts.append(self.query.to(x.dtype).expand(b, 1, -1))
        if prefix is not None:
            if any(v is not None for v in (text_tokens, text_mask, text_embed, drop)):
                raise ValueError("DiffusionPrior: pass the text (text_tokens, text_mask, text_embed, drop) or its "
                                 "prefix cache (prefix), not both")
            if prefix.position != self.config.text_len + 1:
                raise ValueError(f"DiffusionPrior: prefix must cache the {self.config.text_len} text tokens and z_t "
                                 f"(position {self.config.text_len + 1}), got position {prefix.position}")
            h = self.transformer(torch.cat(parts, dim=1), cache=prefix, last=1)  # (B, 1, width): the output token
            return self.out(h[:, -1])
        if text_tokens is None or text_mask is None or text_embed is None:
            raise ValueError("DiffusionPrior: pass text_tokens, text_mask and text_embed (or a prefix cache)")
        tok, mask, emb = self.text(text_tokens, text_mask, self._text_in(text_embed), drop)
        seq = torch.cat([p.to(x.dtype) for p in [tok, emb] + parts], dim=1)  # (B, L + 3 or 4, width)
        full_mask = torch.cat([mask, mask.new_ones(b, seq.shape[1] - mask.shape[1])], dim=1)  # True = real
        h = self.transformer(seq, key_padding_mask=~full_mask)
        return self.out(h[:, -1])  # the query token, or z_i's token without one

    def prefix_cache(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, text_embed: torch.Tensor,
                     drop: torch.Tensor | None = None, compact: bool = True) -> KVCache:
        """The causal prefix [text tokens, z_t] run once: the keys and values of its tokens at every
        layer (frozen), the ``prefix`` of :meth:`forward` for every step of a sampling call.
        Arguments as :meth:`forward`'s. compact: run only the real tokens (padding masked out by
        ``text_mask``), gathered to the front with their own positions and the rows padded to the
        longest one (:class:`~dalle2_fast.nn.KVCache`'s compacted prefix): the same outputs, and a
        caption of n real tokens in an L-token slot costs n + 1 tokens of prefill, not L + 1 (on
        the CPU also in a batch with longer captions: rows of one length run together)."""
        tok, mask, emb = self.text(text_tokens, text_mask, self._text_in(text_embed), drop)
        seq = torch.cat([tok, emb.to(tok.dtype)], dim=1)  # (B, L + 1, width)
        real = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1).to(torch.bool)  # True = real
        lengths = real.sum(1)
        n = int(lengths.max())
        if not compact or int(lengths.min()) == real.shape[1]:  # nothing padded
            return self.transformer.prefill(seq, key_padding_mask=~real)[1]
        # each row's real tokens (z_t last among them) in their order, then its padding, cut at the longest row
        idx = torch.sort((~real).to(torch.uint8), dim=1, stable=True).indices[:, :n]  # (B, n) source positions
        seq = seq.gather(1, idx[..., None].expand(-1, -1, seq.shape[-1]))
        if seq.device.type != "cpu" or int(lengths.sum()) > 0.8 * lengths.numel() * n:
            return self.transformer.prefill(seq, key_padding_mask=~real.gather(1, idx), positions=idx)[1]
        # on the CPU the work is per token: rows of very different lengths run in groups of one
        # length (no padded token computed; their projections and MLPs together, one GEMM per
        # weight), assembled into one cache padded to the longest
        groups = [(lengths == m).nonzero().flatten() for m in lengths.unique().tolist()]
        caches = self.transformer.prefill_parts([seq[r, :int(lengths[r[0]])] for r in groups],
                                                [idx[r, :int(lengths[r[0]])] for r in groups],
                                                position=self.config.text_len + 1)
        return KVCache.from_rows(list(zip(groups, caches)), seq.shape[0])

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
        x0 = self.to_latent(zi)
        draws = Draws.of(batch, x0.shape[0], x0.device)
        t = draws.randint("t", self.diffusion.num_timesteps)
        noise = draws.randn("noise", x0.shape[1:], dtype=x0.dtype)
        drop = draws.bernoulli("text_drop", self.config.cond_drop_prob)
        kw = {"text_tokens": batch["text_tokens"], "text_mask": batch["text_mask"],
              "text_embed": batch["text_embed"], "drop": drop if self.config.uncond == "learned" else None}
        terms = self.diffusion.training_losses(self, x0, t, noise=noise, model_kwargs=kw)
        return {k: v.mean() for k, v in terms.items()}

    @torch.no_grad()
    def sample(self, text, seeds: Sequence[int], *, steps: int | str | Sequence[int] | None = None,
               guidance: float = 1.0, n_candidates: int | None = None, eta: float | None = None,
               sampler: str | None = None, progress: bool = False, null_text=None,
               prefix_cache: bool = True) -> torch.Tensor:
        """CLIP image embeddings z_i: (B, D), one per caption (unit-norm, or raw with
        ``raw_embeddings``); z_i of caption i depends only on ``seeds[i]``.

        text: the captions' encoding, any object with ``.tokens`` (B, L, W), ``.mask`` (B, L)
        and ``.embed`` (B, D) (and ``.raw_embed`` for ``raw_embeddings``: the CLIP adapter's
        ``TextEncoding``). steps: the respacing vocabulary (an int under ``config.sampling``'s
        spacing, "ddimN", section counts; None: every step of ``self.diffusion``). guidance:
        classifier-free guidance scale on the predicted x0 (1: conditional only). Of
        ``n_candidates`` draws (default ``config.n_candidates``) the one with the largest
        z_i . z_t is kept. sampler / eta: default ``config.sampling``. null_text: the encoding of
        :attr:`null_prompt` (batch 1 or B), required for guidance with ``uncond='empty_prompt'``.
        prefix_cache: run the text prefix once per call (:meth:`prefix_cache`; the same result to
        float tolerance) instead of the whole sequence at every step.
        """
        _, _, embed = text_fields(text, raw=self.config.raw_embeddings)
        cands = self.sample_candidates(text, seeds, steps=steps, guidance=guidance, n_candidates=n_candidates,
                                       eta=eta, sampler=sampler, progress=progress, null_text=null_text,
                                       prefix_cache=prefix_cache)
        return select_best(cands, embed)

    def _null_kwargs(self, null_text, dev) -> dict:
        if self.config.uncond == "learned":
            return {"drop": torch.ones(1, dtype=torch.bool, device=dev)}
        if null_text is None:
            raise ValueError("DiffusionPrior.sample: this prior's unconditional branch is the empty prompt's encoding "
                             "(uncond='empty_prompt'): pass null_text=clip.encode_text(['']) for guidance != 1")
        tok, mask, emb = text_fields(null_text, raw=self.config.raw_embeddings)
        return {"text_tokens": tok, "text_mask": mask, "text_embed": emb}

    @torch.no_grad()
    def sample_candidates(self, text, seeds: Sequence[int], *, steps: int | str | Sequence[int] | None = None,
                          guidance: float = 1.0, n_candidates: int | None = None, eta: float | None = None,
                          sampler: str | None = None, progress: bool = False, null_text=None,
                          prefix_cache: bool = True) -> torch.Tensor:
        """All draws: (n_candidates, B, D) (unit-norm, or raw with ``raw_embeddings``); candidate
        c of caption i depends only on ``seeds[i]`` and c. Arguments as :meth:`sample`."""
        c = self.config
        tokens, mask, embed = text_fields(text, raw=c.raw_embeddings)
        b, d = embed.shape[0], c.clip_dim
        seeds = check_seeds(seeds, b)
        n_cand = c.n_candidates if n_candidates is None else n_candidates
        if isinstance(n_cand, bool) or not isinstance(n_cand, int) or n_cand < 1:
            raise ValueError(f"DiffusionPrior.sample: n_candidates must be an int >= 1, got {n_candidates!r}")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise ValueError(f"DiffusionPrior.sample: guidance must be a finite number, got {guidance!r}")
        sampler, eta, _ = c.sampling.resolve(sampler, eta, None)
        all_seeds = [s for k in range(n_cand) for s in candidate_seeds(seeds, k)]  # candidate-major
        dev = embed.device
        kw = {"text_tokens": tokens, "text_mask": mask, "text_embed": embed}
        if c.uncond == "learned":
            kw["drop"] = torch.zeros(b, dtype=torch.bool, device=dev)
        # the text is the same at every step and for every candidate: its prefix runs once (or, with
        # prefix_cache=False, the whole sequence runs at every step)
        rep = lambda z: repeat_batch(z, n_cand)  # noqa: E731  (candidate-major rows)
        kw = {"prefix": rep(self.prefix_cache(**kw))} if prefix_cache else {k: rep(v) for k, v in kw.items()}
        denoiser = self
        if guidance != 1.0:  # uncond rows: the same inputs with the text dropped / the empty prompt
            null = self._null_kwargs(null_text, dev)
            if c.uncond == "learned" and prefix_cache:  # the learned nulls replace the text: any row will do
                null = dict(text_tokens=tokens[:1], text_mask=mask[:1], text_embed=embed[:1], **null)
            if prefix_cache:
                null = {"prefix": self.prefix_cache(**null)}
            null = {k: v if batch_of(v) == 1 else rep(v) for k, v in null.items()}
            denoiser = ClassifierFreeGuidance(self, float(guidance), null)
        if c.x0_clamp is not None:
            denoiser = ClampedX0(denoiser, c.x0_clamp)
        with packed_linears(self):  # every step's linears run a few rows: weights packed once (CPU)
            x = run_sampler(sampler, denoiser, self.diffusion, (n_cand * b, d), steps=c.sampling.steps(steps),
                            eta=eta, model_kwargs=kw, seeds=all_seeds, progress=progress, device=dev)
        return self.from_latent(x).view(n_cand, b, d)


class ClampedX0:
    """The denoiser's (guided) x0 prediction clamped to [-bound, bound]: diffusers'
    ``clip_sample_range`` / Karlo's ``denoised_fn`` for an x0-predicting prior. No
    ``forward_pair``: the guidance combine happens before the clamp, as in both."""

    def __init__(self, denoiser, bound: float):
        self.denoiser, self.bound = denoiser, float(bound)

    def __call__(self, x, t, **kw):
        return self.denoiser(x, t, **kw).clamp(-self.bound, self.bound)


_EMBED_NORMS = ("scale", "mean_std")
_UNCONDS = ("learned", "empty_prompt")


def _check_conventions(c: DiffusionPriorConfig) -> None:
    who = "DiffusionPriorConfig"
    if c.embed_norm not in _EMBED_NORMS:
        raise ValueError(f"{who}.embed_norm must be one of {_EMBED_NORMS}, got {c.embed_norm!r}")
    if c.uncond not in _UNCONDS:
        raise ValueError(f"{who}.uncond must be one of {_UNCONDS}, got {c.uncond!r}")
    if c.uncond == "empty_prompt" and c.cond_drop_prob:
        raise ValueError(f"{who}: uncond='empty_prompt' has no learned null text to train with: set "
                         f"cond_drop_prob=0 (got {c.cond_drop_prob})")
    if c.time_act not in ("silu", "gelu"):
        raise ValueError(f"{who}.time_act must be 'silu' or 'gelu', got {c.time_act!r}")
    if c.time_embed_dim is not None and c.time_embed_dim < 1:
        raise ValueError(f"{who}.time_embed_dim must be None or >= 1, got {c.time_embed_dim}")
    if c.x0_clamp is not None and not (math.isfinite(c.x0_clamp) and c.x0_clamp > 0):
        raise ValueError(f"{who}.x0_clamp must be None or a finite number > 0, got {c.x0_clamp}")
    if c.x0_clamp is not None and c.diffusion.mean_type != "x0":
        raise ValueError(f"{who}.x0_clamp clamps the network's x0 output: needs diffusion.mean_type='x0'")
