"""The DALLE2-pytorch diffusion prior (LAION's open replication of unCLIP's prior), on our layers.

A causal transformer over ``[text encodings (max_text_len), z_t (n_text), timestep (n_time),
noised z_i (n_image), learned query]``; the output at the query predicts the unnoised, scaled
image embedding (x0 prediction, L2 loss). What differs from :class:`DiffusionPrior` and is
reproduced here, each an explicit config field:

- attention is multi-query (one key/value head) with a learned null key/value, rotary positions
  on the first min(32, dim_head) channels and a T5 relative position bias
  (:class:`dalle2_fast.nn.MultiQueryAttention`); ``attention='cosine'``: cosine-similarity logits
  at scale 16 (DALLE2-pytorch >= 1.4.3), ``'pb_relax'``: dot-product logits / sqrt(dim_head)
  with the position bias times 128 (0.23.3 .. 1.4.2, CogView's PB-relax, whose rescaling
  multiplies the bias); sandwich gain-only LayerNorms, a SwiGLU feed-forward (with a LayerNorm
  after the activation when ``normformer``), a final "stable" LayerNorm and a bias-free output
  projection;
- text tokens are CLIP's final-layer features of width ``dim`` fed without projection; padding
  positions (``text_mask`` False) are replaced by learned per-position tokens;
- z_t enters unscaled (unit norm); z_i is L2-normalised and scaled by sqrt(dim)
  (``image_embed_scale``) for the diffusion; samples are returned divided by that scale (not
  re-normalised unless ``sampling_final_clamp_l2norm``);
- classifier-free guidance (``null_conditioning``, DALLE2-pytorch >= 1.9.0): the unconditional
  rows replace the text tokens, z_t AND the noised z_i by learned null values. Earlier releases
  have no unconditional branch (their dropout masked nothing), so guidance != 1 is refused;
- time is a learned embedding per step (``num_timesteps``) or, with ``num_timesteps=None``,
  a sin/cos embedding through a 3-layer SiLU MLP;
- sampling: ``steps`` below the trained count run DALLE2-pytorch's DDIM (timesteps
  ``int(linspace(-1, T, steps + 1))``, updates with ``alphas_cumprod_prev``; eta = 1 by default,
  as there), ``steps=T`` runs ancestral DDPM; best of ``n_candidates`` by cosine with z_t.

Load DALLE2-pytorch checkpoints with :func:`dalle2_fast.interop.dalle2_pytorch.load_laion_prior`.
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
from dalle2_fast.models.prior.conditioning import candidate_seeds, repeat_batch, text_fields
from dalle2_fast.nn.kv_cache import KVCache, KVLayer
from dalle2_fast.nn.mq_attention import GainLayerNorm, MultiQueryAttention
from dalle2_fast.nn.packed_linear import packed_linears
from dalle2_fast.nn.positional import RelativePositionBias
from dalle2_fast.seeding import Draws, check_seeds

ATTENTION = {"cosine": ("cosine", 16.0, 1.0), "pb_relax": ("dot", None, 128.0)}  # similarity, scale, bias_scale


def laion_diffusion_config(num_timesteps: int = 1000, schedule: str = "cosine") -> DiffusionConfig:
    return DiffusionConfig(schedule=schedule, num_timesteps=num_timesteps, mean_type="x0", var_type="fixed_small",
                           loss="simple")


@dataclass(frozen=True)
class LaionPriorConfig:
    """Network (DALLE2-pytorch's ``DiffusionPriorNetwork`` arguments), conventions and sampling
    defaults (its ``DiffusionPrior`` arguments); defaults are LAION's ViT-L/14 prior."""

    dim: int = 768                   # CLIP embedding width = text token width = model width
    depth: int = 24
    heads: int = 32
    dim_head: int = 64
    ff_mult: float = 4.0
    max_text_len: int = 77
    num_timesteps: int | None = 1000  # learned time embedding; None: sin/cos + MLP
    num_time_embeds: int = 1
    num_image_embeds: int = 1
    num_text_embeds: int = 1
    norm_in: bool = False
    norm_out: bool = True
    final_proj: bool = True
    normformer: bool = False
    rotary_emb: bool = True
    attention: str = "cosine"        # 'cosine' (>= 1.4.3) | 'pb_relax' (0.23.3 .. 1.4.2)
    null_conditioning: bool = True   # learned null text/image values for CFG (>= 1.9.0)
    condition_on_text_encodings: bool = True
    image_embed_scale: float | None = None  # None: sqrt(dim)
    cond_drop_prob: float = 0.1      # text dropout in training (CFG)
    image_cond_drop_prob: float | None = None  # None: cond_drop_prob
    sample_timesteps: int | None = 64  # default steps; None: every trained step
    n_candidates: int = 2
    sampling_clamp_l2norm: bool = False
    sampling_final_clamp_l2norm: bool = False
    source: str = ""                 # provenance, e.g. "dalle2-pytorch 1.15.6"
    diffusion: DiffusionConfig = field(default_factory=laion_diffusion_config)


class _FeedForward(nn.Module):
    """LN -> Linear(dim, 2 inner) -> SwiGLU (x * silu(gate)) -> [LN] -> Linear(inner, dim)."""

    def __init__(self, dim: int, mult: float, normformer: bool):
        super().__init__()
        inner = int(mult * dim)
        self.norm = GainLayerNorm(dim)
        self.proj_in = nn.Linear(dim, 2 * inner, bias=False)
        self.post_norm = GainLayerNorm(inner) if normformer else None
        self.proj_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(self.norm(x)).chunk(2, dim=-1)
        h = h * F.silu(gate)
        return self.proj_out(self.post_norm(h) if self.post_norm is not None else h)


class _Block(nn.Module):
    def __init__(self, c: LaionPriorConfig):
        super().__init__()
        sim, scale, bias_scale = ATTENTION[c.attention]
        self.attn = MultiQueryAttention(c.dim, c.heads, c.dim_head, similarity=sim, scale=scale,
                                        bias_scale=bias_scale, rot_dim=min(32, c.dim_head) if c.rotary_emb else 0)
        self.ff = _FeedForward(c.dim, c.ff_mult, c.normformer)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, past: KVLayer | None = None) -> torch.Tensor:
        x = x + self.attn(x, bias, past)
        return x + self.ff(x)


def _check(c: LaionPriorConfig) -> None:
    if c.attention not in ATTENTION:
        raise ValueError(f"LaionPriorConfig.attention must be one of {sorted(ATTENTION)}, got {c.attention!r}")
    for name in ("dim", "depth", "heads", "dim_head", "max_text_len", "num_time_embeds", "num_image_embeds",
                 "num_text_embeds", "n_candidates"):
        if int(getattr(c, name)) < 1:
            raise ValueError(f"LaionPriorConfig.{name} must be >= 1, got {getattr(c, name)}")
    if c.diffusion.mean_type != "x0" or c.diffusion.var_type == "learned_range":
        raise ValueError(f"LaionPriorConfig.diffusion: the prior predicts x0 with a fixed variance, got mean_type="
                         f"{c.diffusion.mean_type!r}, var_type={c.diffusion.var_type!r}")
    if c.num_timesteps is not None and c.num_timesteps != c.diffusion.num_timesteps:
        raise ValueError(f"LaionPriorConfig: num_timesteps={c.num_timesteps} (time embeddings) != "
                         f"diffusion.num_timesteps={c.diffusion.num_timesteps}")
    for name in ("cond_drop_prob", "image_cond_drop_prob"):
        p = getattr(c, name)
        if p is not None and not 0.0 <= p <= 1.0:
            raise ValueError(f"LaionPriorConfig.{name} must be in [0, 1], got {p}")


@register_model("laion_diffusion_prior")
class LaionDiffusionPrior(Pretrained, nn.Module):
    """The network with its process as ``self.diffusion``; see the module docstring."""

    config_class = LaionPriorConfig

    def __init__(self, config: LaionPriorConfig):
        super().__init__()
        _check(config)
        c = self.config = config
        self.diffusion = GaussianDiffusion.from_config(c.diffusion)
        self.embed_scale = float(c.image_embed_scale or math.sqrt(c.dim))
        self.to_text_embeds = nn.Linear(c.dim, c.dim * c.num_text_embeds) if c.num_text_embeds > 1 else None
        self.to_image_embeds = nn.Linear(c.dim, c.dim * c.num_image_embeds) if c.num_image_embeds > 1 else None
        if c.num_timesteps is not None:
            self.time_embed = nn.Embedding(c.num_timesteps, c.dim * c.num_time_embeds)
        else:  # DALLE2-pytorch's MLP(dim, dim * n): two hidden layers of 2 * (dim * n), SiLU
            hid = 2 * c.dim * c.num_time_embeds
            self.time_embed = nn.Sequential(nn.Linear(c.dim, hid), nn.SiLU(), nn.Linear(hid, hid), nn.SiLU(),
                                            nn.Linear(hid, c.dim * c.num_time_embeds))
        self.learned_query = nn.Parameter(torch.randn(c.dim))
        self.null_text_encodings = nn.Parameter(torch.randn(1, c.max_text_len, c.dim))  # learned padding
        if c.null_conditioning:
            self.null_text_embeds = nn.Parameter(torch.randn(1, c.num_text_embeds, c.dim))
            self.null_image_embed = nn.Parameter(torch.randn(1, c.dim))
        self.init_norm = GainLayerNorm(c.dim) if c.norm_in else None
        self.rel_pos_bias = RelativePositionBias(c.heads)
        self.blocks = nn.ModuleList(_Block(c) for _ in range(c.depth))
        self.norm = GainLayerNorm(c.dim, stable=True) if c.norm_out else None
        self.project_out = nn.Linear(c.dim, c.dim, bias=False) if c.final_proj else None

    @property
    def seq_len(self) -> int:
        c = self.config
        return c.max_text_len + c.num_text_embeds + c.num_time_embeds + c.num_image_embeds + 1

    def _time(self, t: torch.Tensor, dtype) -> torch.Tensor:
        c = self.config
        if c.num_timesteps is not None:
            return self.time_embed(t.long()).to(dtype)
        half = c.dim // 2  # sin/cos with frequencies exp(-log(1e4) i / (half - 1)), sin first
        f = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
        arg = t.float()[:, None] * f[None]
        return self.time_embed(torch.cat((arg.sin(), arg.cos()), dim=-1)).to(dtype)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text_tokens: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, text_embed: torch.Tensor | None = None,
                drop: torch.Tensor | None = None, image_drop: torch.Tensor | None = None,
                prefix: KVCache | None = None) -> torch.Tensor:
        """Predicted x0 (scaled z_i): (B, dim).

        x_t: (B, dim); t: (B,) timesteps; text_tokens: (B, L, dim) CLIP token features (L <=
        max_text_len is padded, longer is cut); text_mask: (B, L) bool, True = real token;
        text_embed: (B, dim) unit-norm z_t; drop / image_drop: (B,) bool, True = use the null
        text / null image embedding (image_drop None: = drop). Needs ``null_conditioning``.
        prefix: instead of the text arguments and ``drop``, their :meth:`prefix_cache` (the same
        text for many calls: only the trailing tokens run; ``image_drop`` still applies)."""
        c = self.config
        B = x_t.shape[0]
        if x_t.dim() != 2 or x_t.shape[1] != c.dim:
            raise ValueError(f"LaionDiffusionPrior: x_t must be (B, {c.dim}), got {tuple(x_t.shape)}")
        if prefix is None:
            if text_tokens is None or text_mask is None or text_embed is None:
                raise ValueError("LaionDiffusionPrior: pass text_tokens, text_mask and text_embed (or a prefix cache)")
            image_drop = drop if image_drop is None else image_drop
            self._check_drop(drop, image_drop)
            x = torch.cat((self._text_part(text_tokens, text_mask, text_embed, drop, x_t.dtype),
                           self._trailing_part(x_t, t, image_drop)), dim=1)  # (B, S, dim)
            bias = self.rel_pos_bias(x.shape[1], x.shape[1] + 1)  # (H, S, S + 1): keys are [null; tokens]
            for blk in self.blocks:
                x = blk(x, bias)
        else:
            if any(v is not None for v in (text_tokens, text_mask, text_embed, drop)):
                raise ValueError("LaionDiffusionPrior: pass the text (text_tokens, text_mask, text_embed, drop) or "
                                 "its prefix cache (prefix), not both")
            n_pre = c.max_text_len + c.num_text_embeds
            if len(prefix) != c.depth or prefix.length != n_pre:
                raise ValueError(f"LaionDiffusionPrior: prefix must cache {n_pre} tokens in {c.depth} layers, got "
                                 f"{prefix.length} in {len(prefix)}")
            self._check_drop(None, image_drop)
            x = self._trailing_part(x_t, t, image_drop)
            bias = self.rel_pos_bias(x.shape[1], n_pre + x.shape[1] + 1, k_offset=n_pre)  # rows n_pre.. of the full
            for blk, past in zip(self.blocks, prefix.layers):
                x = blk(x, bias, past)
        return self._out(x)[:, -1]

    def prefix_cache(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, text_embed: torch.Tensor,
                     drop: torch.Tensor | None = None) -> KVCache:
        """The causal prefix [text tokens, z_t] run once: its keys/values at every layer (frozen),
        the ``prefix`` of :meth:`forward` for every step of a sampling call. Arguments as
        :meth:`forward`'s (``drop`` replaces the text by the null text)."""
        self._check_drop(drop, None)
        x = self._text_part(text_tokens, text_mask, text_embed, drop, self.learned_query.dtype)
        cache = KVCache.empty(len(self.blocks), grow=True)
        bias = self.rel_pos_bias(x.shape[1], x.shape[1] + 1)
        for blk, past in zip(self.blocks, cache.layers):
            x = blk(x, bias, past)
        return cache.freeze()

    def _check_drop(self, drop, image_drop) -> None:
        if not self.config.null_conditioning and any(d is not None and bool(d.any()) for d in (drop, image_drop)):
            raise ValueError("LaionDiffusionPrior: this prior has no unconditional branch (null_conditioning="
                             "False: DALLE2-pytorch < 1.9.0 trained none), so nothing can be dropped")

    def _text_part(self, text_tokens, text_mask, text_embed, drop, dt) -> torch.Tensor:
        """The prefix tokens [text encodings (max_text_len), z_t (n_text)]: (B, P, dim), normed."""
        c = self.config
        B = text_embed.shape[0]
        if text_tokens.dim() != 3 or text_tokens.shape[0] != B or text_tokens.shape[2] != c.dim:
            raise ValueError(f"LaionDiffusionPrior: text_tokens must be (B={B}, L, {c.dim}), got "
                             f"{tuple(text_tokens.shape)}")
        if tuple(text_mask.shape) != tuple(text_tokens.shape[:2]):
            raise ValueError(f"LaionDiffusionPrior: text_mask must be {tuple(text_tokens.shape[:2])}, got "
                             f"{tuple(text_mask.shape)}")
        te = text_embed.to(dt)
        te = (self.to_text_embeds(te) if self.to_text_embeds is not None else te).view(B, c.num_text_embeds, c.dim)
        L = c.max_text_len
        if c.condition_on_text_encodings:
            tok, mask = text_tokens[:, :L].to(dt), text_mask[:, :L].to(torch.bool)
            tok = F.pad(tok, (0, 0, 0, L - tok.shape[1]))
            mask = F.pad(mask, (0, L - mask.shape[1]), value=False)
        else:
            tok, mask = te.new_zeros(B, L, c.dim), torch.zeros(B, L, dtype=torch.bool, device=te.device)
        if drop is not None and c.null_conditioning:
            keep = ~drop.to(torch.bool).view(B, 1)
            mask = mask & keep
            te = torch.where(keep[..., None], te, self.null_text_embeds.to(dt))
        tok = torch.where(mask[..., None], tok, self.null_text_encodings.to(dt))
        x = torch.cat((tok, te), dim=1)
        return x if self.init_norm is None else self.init_norm(x)

    def _trailing_part(self, x_t, t, image_drop) -> torch.Tensor:
        """The tokens after the prefix [timestep (n_time), noised z_i (n_image), query]: (B, S, dim), normed."""
        c = self.config
        B, dt = x_t.shape[0], x_t.dtype
        img = x_t if self.to_image_embeds is None else self.to_image_embeds(x_t)
        img = img.view(B, c.num_image_embeds, c.dim)
        if image_drop is not None and c.null_conditioning:
            img = torch.where(~image_drop.to(torch.bool).view(B, 1, 1), img, self.null_image_embed.to(dt))
        time = self._time(t, dt).view(B, c.num_time_embeds, c.dim)
        q = self.learned_query.to(dt).expand(B, 1, c.dim)
        x = torch.cat((time, img, q), dim=1)
        return x if self.init_norm is None else self.init_norm(x)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        return x if self.project_out is None else self.project_out(x)

    # ---- training ------------------------------------------------------------------------------
    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """L2 on x0 at a uniformly drawn step, with independent text / image dropout for CFG:
        {'loss', 'mse'}. batch: ``image_embed`` (B, dim) z_i (unit norm), ``text_tokens``, ``text_mask``,
        ``text_embed``; optional ``seeds`` / ``generator`` (draws "t", "noise", "text_drop",
        "image_drop")."""
        missing = [k for k in ("image_embed", "text_tokens", "text_mask", "text_embed") if k not in batch]
        if missing:
            raise ValueError(f"LaionDiffusionPrior.loss: batch is missing {missing}")
        c = self.config
        x0 = batch["image_embed"].float() * self.embed_scale  # as given (CLIP's are unit-norm), as DALLE2-pytorch
        draws = Draws.of(batch, x0.shape[0], x0.device)
        t = draws.randint("t", self.diffusion.num_timesteps)
        noise = draws.randn("noise", x0.shape[1:], dtype=x0.dtype)
        kw = {"text_tokens": batch["text_tokens"], "text_mask": batch["text_mask"], "text_embed": batch["text_embed"]}
        if c.null_conditioning:
            kw["drop"] = draws.bernoulli("text_drop", c.cond_drop_prob)
            p_img = c.cond_drop_prob if c.image_cond_drop_prob is None else c.image_cond_drop_prob
            kw["image_drop"] = draws.bernoulli("image_drop", p_img)
        terms = self.diffusion.training_losses(self, x0, t, noise=noise, model_kwargs=kw)
        return {k: v.mean() for k, v in terms.items()}

    # ---- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, text, seeds: Sequence[int], *, steps: int | str | None = None, guidance: float = 1.0,
               n_candidates: int | None = None, eta: float | None = None, sampler: str = "ddim",
               progress: bool = False, prefix_cache: bool = True) -> torch.Tensor:
        """Image embeddings (B, dim) in CLIP's units (the sample divided by the embedding scale),
        the best of ``n_candidates`` per caption by cosine with z_t; caption i depends only on
        ``seeds[i]``. text: an encoding with ``.tokens`` (B, L, dim), ``.mask``, ``.embed``.
        steps: an int (None: ``config.sample_timesteps``); with ``sampler='ddim'`` fewer than the
        trained steps run DALLE2-pytorch's DDIM (eta default 1, as there) and all of them run
        DDPM; 'ddpm' / 'dpmpp' take the respacing vocabulary. prefix_cache: run the text prefix
        once per call (:meth:`prefix_cache`; the same result to float tolerance) instead of the
        whole sequence at every step."""
        cands = self.sample_candidates(text, seeds, steps=steps, guidance=guidance, n_candidates=n_candidates,
                                       eta=eta, sampler=sampler, progress=progress, prefix_cache=prefix_cache)
        _, _, embed = text_fields(text)
        sim = (F.normalize(cands, dim=-1) * F.normalize(embed.float(), dim=-1)[None]).sum(-1)  # (C, B)
        return cands[sim.argmax(0), torch.arange(cands.shape[1], device=cands.device)]

    @torch.no_grad()
    def sample_candidates(self, text, seeds: Sequence[int], *, steps: int | str | None = None,
                          guidance: float = 1.0, n_candidates: int | None = None, eta: float | None = None,
                          sampler: str = "ddim", progress: bool = False, prefix_cache: bool = True) -> torch.Tensor:
        """All draws (n_candidates, B, dim); candidate c of caption i depends on ``seeds[i]`` and c."""
        c = self.config
        tokens, mask, embed = text_fields(text)
        b = embed.shape[0]
        seeds = check_seeds(seeds, b)
        n_cand = c.n_candidates if n_candidates is None else n_candidates
        if isinstance(n_cand, bool) or not isinstance(n_cand, int) or n_cand < 1:
            raise ValueError(f"LaionDiffusionPrior.sample: n_candidates must be an int >= 1, got {n_candidates!r}")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise ValueError(f"LaionDiffusionPrior.sample: guidance must be a finite number, got {guidance!r}")
        if guidance != 1.0 and not c.null_conditioning:
            raise ValueError("LaionDiffusionPrior.sample: guidance needs an unconditional branch, and this prior "
                             "has none (DALLE2-pytorch < 1.9.0 trained none; its guidance was a no-op): use 1")
        T = self.diffusion.num_timesteps
        steps = (c.sample_timesteps or T) if steps is None else steps
        all_seeds = [s for k in range(n_cand) for s in candidate_seeds(seeds, k)]
        rep = lambda z: repeat_batch(z, n_cand)  # noqa: E731  (candidate-major rows)
        dev = embed.device
        yes = lambda n, v: torch.full((n,), v, dtype=torch.bool, device=dev)  # noqa: E731
        denoiser = self
        if prefix_cache:  # the text is the same at every step and for every candidate: its prefix runs once
            kw = {"prefix": rep(self.prefix_cache(tokens, mask, embed))}
            if guidance != 1.0:  # the null text replaces any caption's: one row, broadcast
                kw["image_drop"] = yes(n_cand * b, False)
                null = {"prefix": self.prefix_cache(tokens[:1], mask[:1], embed[:1], drop=yes(1, True)),
                        "image_drop": yes(1, True)}
                denoiser = ClassifierFreeGuidance(self, float(guidance), null)
        else:
            kw = {"text_tokens": rep(tokens), "text_mask": rep(mask), "text_embed": rep(embed)}
            if guidance != 1.0:
                kw["drop"] = yes(n_cand * b, False)
                denoiser = ClassifierFreeGuidance(self, float(guidance), {"drop": yes(1, True)})
        if c.sampling_clamp_l2norm:
            denoiser = _L2Clamp(denoiser, self.embed_scale)
        shape = (n_cand * b, c.dim)
        common = dict(model_kwargs=kw, seeds=all_seeds, progress=progress, device=dev)
        with packed_linears(self):  # every step runs a few rows: weights packed once (CPU)
            if sampler == "ddim" and isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps < T:
                times = torch.linspace(-1.0, T, steps + 1)[:-1].int().flip(0)  # DALLE2-pytorch's DDIM timesteps
                x = run_sampler("ddim", denoiser, self.diffusion, shape, eta=1.0 if eta is None else eta,
                                timesteps=times[times >= 0], abar_shift=-1, **common)
            elif sampler == "ddim" and steps == T:
                x = run_sampler("ddpm", denoiser, self.diffusion, shape, **common)
            elif sampler in ("ddpm", "dpmpp") and eta is None:
                x = run_sampler(sampler, denoiser, self.diffusion, shape, steps=steps, **common)
            else:
                raise ValueError(f"LaionDiffusionPrior.sample: sampler must be 'ddim' with an int 1 <= steps <= {T}, "
                                 f"or 'ddpm' / 'dpmpp' (no eta) with any respacing; got sampler={sampler!r}, "
                                 f"steps={steps!r}, eta={eta!r}")
        if c.sampling_final_clamp_l2norm:
            x = F.normalize(x, dim=-1) * self.embed_scale
        return (x.float() / self.embed_scale).view(n_cand, b, c.dim)


class _L2Clamp:
    """Wraps a denoiser: its x0 prediction L2-normalised and rescaled at every step
    (DALLE2-pytorch's ``sampling_clamp_l2norm``; after the guidance combine)."""

    def __init__(self, denoiser, scale: float):
        self.denoiser, self.scale = denoiser, scale

    def __call__(self, x, t, **kw):
        return F.normalize(self.denoiser(x, t, **kw), dim=-1) * self.scale


__all__ = ["LaionDiffusionPrior", "LaionPriorConfig", "laion_diffusion_config", "ATTENTION"]
