"""The unCLIP decoder P(x | z_i, y) (Ramesh et al. 2022, Sec. 2.1; GLIDE-style conditioning).

An ADM U-Net with learned variance, conditioned on the CLIP image embedding z_i twice:
projected and added to the timestep embedding (the U-Net's ``cond``), and projected into
``unet.cond_tokens`` (4) extra context tokens concatenated to the text encoder's outputs, which
every attention block cross-attends to (both done by :class:`~dalle2_fast.models.unet.UNet`).
The "text encoder outputs" here are CLIP's own token features (:class:`dalle2_fast.models.clip.TextEncoding`)
through a learned projection.

Classifier-free guidance: in training z_i is replaced by zeros with probability
``clip_drop_prob`` (10%) and the caption is dropped (all its tokens masked) with probability
``text_drop_prob`` (50%); sampling combines conditional and unconditional outputs in one batched
forward (``dalle2_fast.diffusion.ClassifierFreeGuidance``). Without a caption (variations) the
text is masked and z_i alone conditions the image.

Karlo's decoder (Kakao Brain's unCLIP reproduction, diffusers' ``UNet2DConditionModel`` +
``UnCLIPTextProjModel``) is the same network with other conventions, each a config field whose
default is ours: ``text_proj_order='linear_norm'`` (the caption tokens projected, then
LayerNorm), ``text_embed_to_time`` (the caption's CLIP embedding z_t projected and added to the
time embedding too), ``null_image_embed='learned'`` (a learned z_i for the unconditional branch
instead of zeros), ``uncond='empty_prompt'`` (the unconditional caption is the empty prompt's
encoding, ``null_text``, instead of all tokens masked; also the caption of variations),
``raw_embeddings`` (z_i and z_t unnormalised) and ``sampling`` (ancestral steps, x0 clipped).

``text_transformer`` (default None: the path above) gives the decoder GLIDE's own text
transformer instead of the one projection (:mod:`dalle2_fast.models.decoder_text`): trained
with the decoder over the caption's CLIP token features, its output sequence is the U-Net's
caption context and its final token is added to the time embedding.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.diffusion import (FROM_CONFIG, ClassifierFreeGuidance, DiffusionConfig, GaussianDiffusion,
                                   SamplingConfig, SplitGuidance, ddim_invert, respace, run_sampler)
from dalle2_fast.diffusion.repaint import inpaint_sampling
from dalle2_fast.models.decoder_text import DecoderTextTransformer, TextTransformerConfig
from dalle2_fast.models.unet import UNet, UNetConfig, convert_v1_unet_state_dict
from dalle2_fast.seeding import Draws, check_seeds


def _default_unet() -> UNetConfig:
    return UNetConfig(image_size=32, in_channels=3, model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attention_resolutions=(16, 8), num_head_channels=32, learn_sigma=True,
                      use_scale_shift_norm=True, resblock_updown=True, cond_dim=64, context_dim=128,
                      cond_tokens=4)


def _default_decoder_diffusion() -> DiffusionConfig:
    return DiffusionConfig(schedule="cosine", num_timesteps=1000, mean_type="eps", var_type="learned_range",
                           loss="hybrid")


def _default_sampling() -> SamplingConfig:
    return SamplingConfig(sampler="ddim", eta=1.0, clip="dynamic")


_ORDERS = ("norm_linear", "linear_norm")
_NULL_IMAGE = ("zeros", "learned")
_UNCOND = ("masked", "empty_prompt")


@dataclass(frozen=True)
class DecoderConfig:
    unet: UNetConfig = field(default_factory=_default_unet)  # cond_dim = clip_dim, context_dim, cond_tokens set
    diffusion: DiffusionConfig = field(default_factory=_default_decoder_diffusion)
    clip_dim: int = 64
    text_width: int = 128        # W of the CLIP token features
    text_len: int = 24
    clip_drop_prob: float = 0.1
    text_drop_prob: float = 0.5
    # conventions (module docstring); defaults are ours
    text_proj_order: str = "norm_linear"  # caption tokens: LayerNorm then Linear | 'linear_norm' (Karlo)
    text_embed_to_time: bool = False      # also add Linear(z_t) to the time embedding
    null_image_embed: str = "zeros"       # z_i of the unconditional branch: zeros | 'learned'
    uncond: str = "masked"                # unconditional caption: all tokens masked | 'empty_prompt' (null_text)
    raw_embeddings: bool = False          # z_i / z_t unnormalised CLIP embeddings
    sampling: SamplingConfig = field(default_factory=_default_sampling)
    # mask-conditioned (GLIDE inpainting): the known image (zeros in the hole) and the keep mask
    # as 4 extra input channels (unet.low_res_channels = 4, at the decoder's own size)
    inpaint: bool = False
    # GLIDE's text transformer trained with the decoder (None: the caption tokens through text_proj)
    text_transformer: TextTransformerConfig | None = None


@register_model("unclip_decoder")
class UnCLIPDecoder(Pretrained, nn.Module):
    """``decoder(x_t, t, image_embed, text_tokens, text_mask[, text_embed])`` -> U-Net output
    (B, 2*3 or 3, H, W).

    image_embed: (B, D) z_i (unit-norm, or raw with ``raw_embeddings``; the null value = dropped);
    text_tokens: (B, L, W); text_mask: (B, L) bool, True on real tokens (all False = no caption);
    text_embed: (B, D) the caption's z_t, with ``text_embed_to_time`` only.
    """

    config_class = DecoderConfig

    def __init__(self, config: DecoderConfig):
        super().__init__()
        c = self.config = config
        u = c.unet
        if u.cond_dim != c.clip_dim:
            raise ValueError(f"DecoderConfig: unet.cond_dim must equal clip_dim ({c.clip_dim}), got {u.cond_dim}")
        if not u.context_dim or not u.cond_tokens:
            raise ValueError("DecoderConfig: unet.context_dim and unet.cond_tokens (the paper's 4) must be set: "
                             "z_i is projected into extra context tokens")
        if u.learn_sigma != (c.diffusion.var_type == "learned_range"):
            raise ValueError("DecoderConfig: unet.learn_sigma must match diffusion.var_type == 'learned_range'")
        for name, val, known in (("text_proj_order", c.text_proj_order, _ORDERS),
                                 ("null_image_embed", c.null_image_embed, _NULL_IMAGE), ("uncond", c.uncond, _UNCOND)):
            if val not in known:
                raise ValueError(f"DecoderConfig.{name} must be one of {known}, got {val!r}")
        if c.inpaint != (u.low_res_channels == 4):
            raise ValueError("DecoderConfig: inpaint=True needs unet.low_res_channels=4 (masked image + mask) and "
                             f"a plain decoder none; got inpaint={c.inpaint}, low_res_channels={u.low_res_channels}")
        if c.uncond == "empty_prompt" and c.text_drop_prob:
            raise ValueError("DecoderConfig: uncond='empty_prompt' trains no masked-caption branch: set text_drop_prob=0")
        self.unet = UNet(u)
        self.text_xf = None
        if c.text_transformer is not None:  # GLIDE's text transformer replaces the one projection
            self.text_xf = DecoderTextTransformer(c.text_transformer, c.text_width, c.text_len, u.context_dim,
                                                  4 * u.model_channels)
            self.text_proj = None
        elif c.text_proj_order == "norm_linear":
            self.text_proj = nn.Sequential(nn.LayerNorm(c.text_width), nn.Linear(c.text_width, u.context_dim))
        else:
            self.text_proj = nn.Sequential(nn.Linear(c.text_width, u.context_dim), nn.LayerNorm(u.context_dim))
        self.text_time = nn.Linear(c.clip_dim, 4 * u.model_channels) if c.text_embed_to_time else None
        self.null_image = nn.Parameter(torch.zeros(c.clip_dim)) if c.null_image_embed == "learned" else None
        self.diffusion = GaussianDiffusion.from_config(c.diffusion)

    @property
    def null_prompt(self) -> str | None:
        """The caption whose encoding is the unconditional branch ('' for ``uncond='empty_prompt'``,
        pass it as ``null_text``), or None (all tokens masked)."""
        return "" if self.config.uncond == "empty_prompt" else None

    def null_image_embed(self, like: torch.Tensor) -> torch.Tensor:
        """z_i of the unconditional branch, (1, D): zeros or the learned one."""
        if self.null_image is None:
            return torch.zeros_like(like[:1])
        return self.null_image.to(like.dtype)[None]

    @classmethod
    def _upgrade_state_dict(cls, state: dict, config) -> dict:
        """Files with the U-Net's v1 attention-block keys (the shipped weights) load unchanged."""
        return convert_v1_unet_state_dict(state, prefix="unet.")

    def caption(self, text_tokens, text_mask):
        """(the U-Net's caption context (B, L, context_dim), the text transformer's final-token term
        of the time embedding (B, 4 * model_channels) or None) of a caption's tokens."""
        if self.text_xf is not None:
            return self.text_xf(text_tokens, text_mask)
        return self.text_proj(text_tokens), None

    def forward(self, x, t, image_embed, text_tokens=None, text_mask=None, text_embed=None, context=None,
                inpaint_image=None, caption_emb=None):
        """Model output for x (B, 3, S, S) at t (B,): z_i image_embed (B, D), the caption's
        text_tokens (B, L, W) and text_mask (B, L) bool True = real, or instead of those two their
        :meth:`context_cache` (``context``: the U-Net's context keys/values, projected once per
        sampling call); text_embed (B, D) z_t with ``text_embed_to_time``; ``inpaint_image``
        (B, 4, S, S) for a mask-conditioned decoder (:meth:`inpaint_condition`); ``caption_emb``:
        with a text transformer and ``context``, the final-token term cached beside it."""
        extra = None
        if self.text_time is not None:
            if text_embed is None:
                raise ValueError("UnCLIPDecoder: this decoder adds the caption's z_t to the time embedding "
                                 "(text_embed_to_time): pass text_embed (B, D)")
            extra = self.text_time(text_embed)
        if (caption_emb is not None) != (self.text_xf is not None and context is not None):
            raise ValueError("UnCLIPDecoder: caption_emb goes with a context cache of a decoder with a text "
                             "transformer, and only there")
        if self.config.inpaint != (inpaint_image is not None):
            raise ValueError("UnCLIPDecoder: inpaint_image (B, 4, S, S) is given iff the decoder is mask-conditioned "
                             f"(config.inpaint={self.config.inpaint})")
        if context is not None:
            if text_tokens is not None or text_mask is not None:
                raise ValueError("UnCLIPDecoder: pass the caption (text_tokens, text_mask) or its context cache "
                                 "(context), not both")
            extra = _add(extra, caption_emb)
            return self.unet(x, t, cond=image_embed, context_kv=context, emb=extra, low_res=inpaint_image)
        if text_tokens is None or text_mask is None:
            raise ValueError("UnCLIPDecoder: pass text_tokens and text_mask (or their context cache)")
        # text context (B, L, context_dim), padding mask True = padded; the U-Net prepends the
        # cond_tokens CLIP tokens (never padded) and adds cond (+ the projected z_t, + the text
        # transformer's final token) to the time embedding
        ctx, fin = self.caption(text_tokens, text_mask)
        extra = _add(extra, fin)
        return self.unet(x, t, cond=image_embed, context=ctx, context_mask=~text_mask.to(torch.bool), emb=extra,
                         low_res=inpaint_image)

    @staticmethod
    def inpaint_condition(known: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The conditioning of a mask-conditioned decoder: (known * keep, keep), (B, 4, S, S);
        ``keep`` (B or 1, 1, S, S) is 1 on known pixels."""
        keep = keep.to(known.dtype).expand(known.shape[0], 1, *known.shape[-2:])
        return torch.cat([known * keep, keep], dim=1)

    def context_cache(self, image_embed, text_tokens, text_mask):
        """The U-Net's context keys/values of (z_i's tokens, the projected caption) at every
        attention block (:meth:`UNet.context_cache <dalle2_fast.models.unet.UNet.context_cache>`):
        the ``context`` of :meth:`forward` for a whole sampling loop. Batch-1 arguments broadcast."""
        return self._context(image_embed, text_tokens, text_mask)[0]

    def _context(self, image_embed, text_tokens, text_mask):
        """(:meth:`context_cache`, the text transformer's final-token term or None), from one pass
        of the caption through :meth:`caption`."""
        n = max(v.shape[0] for v in (image_embed, text_tokens, text_mask))
        grow = lambda v: v.expand(n, *v.shape[1:]) if v.shape[0] == 1 else v  # noqa: E731
        ctx, fin = self.caption(grow(text_tokens), grow(text_mask))
        return self.unet.context_cache(grow(image_embed), ctx, ~grow(text_mask).to(torch.bool)), fin

    def _cached_kwargs(self, kw: dict, fill: dict | None = None) -> dict:
        """Sampling kwargs with the caption replaced by its context cache; ``fill``: kwargs to take
        what kw lacks from (the conditional rows', for an unconditional branch)."""
        src = {**(fill or {}), **kw}
        out = {k: v for k, v in kw.items() if k not in ("text_tokens", "text_mask")}
        out["context"], fin = self._context(src["image_embed"], src["text_tokens"], src["text_mask"])
        if fin is not None:  # the text transformer's final-token term, cached beside the context
            out["caption_emb"] = fin
        return out

    @property
    def image_size(self) -> int:
        """Side of the images this decoder draws (the base resolution of the cascade)."""
        return self.config.unet.image_size

    def _kwargs(self, image_embed, text_tokens=None, text_mask=None, text_embed=None, null_text=None):
        b, c = image_embed.shape[0], self.config
        if text_tokens is None and c.uncond == "empty_prompt":  # no caption: the empty prompt's
            text_tokens, text_mask, text_embed = self._null_fields(null_text, b)
        elif text_tokens is None:  # no caption: every token masked
            text_tokens = image_embed.new_zeros(b, c.text_len, c.text_width)
            text_mask = torch.zeros(b, c.text_len, dtype=torch.bool, device=image_embed.device)
            text_embed = image_embed.new_zeros(b, c.clip_dim) if self.text_time is not None else None
        if text_tokens.shape != (b, c.text_len, c.text_width):
            raise ValueError(f"UnCLIPDecoder: text tokens must be ({b}, {c.text_len}, {c.text_width}), got "
                             f"{tuple(text_tokens.shape)}")
        if text_mask is None or text_mask.shape != (b, c.text_len):
            raise ValueError(f"UnCLIPDecoder: text_mask must be ({b}, {c.text_len}) bool (True on real tokens), got "
                             f"{None if text_mask is None else tuple(text_mask.shape)}")
        kw = {"image_embed": image_embed, "text_tokens": text_tokens, "text_mask": text_mask.to(torch.bool)}
        if self.text_time is not None:
            if text_embed is None or text_embed.shape != (b, c.clip_dim):
                raise ValueError(f"UnCLIPDecoder: text_embed must be ({b}, {c.clip_dim}) (the caption's z_t), got "
                                 f"{None if text_embed is None else tuple(text_embed.shape)}")
            kw["text_embed"] = text_embed
        return kw

    def _null_fields(self, null_text, b: int):
        """(tokens, mask, z_t) of the empty prompt, expanded to batch b."""
        if null_text is None:
            raise ValueError("UnCLIPDecoder: this decoder's unconditional caption is the empty prompt's encoding "
                             "(uncond='empty_prompt'): pass null_text=clip.encode_text([''])")
        tok, mask, emb = self._text(null_text)
        grow = lambda v: v if v is None or v.shape[0] == b else v.expand(b, *v.shape[1:])  # noqa: E731
        return grow(tok), grow(mask), grow(emb)

    def _text(self, text):
        """(tokens, mask, z_t) of a caption encoding (None: no caption)."""
        if text is None:
            return None, None, None
        emb = None
        if self.text_time is not None:
            emb = getattr(text, "raw_embed", None) if self.config.raw_embeddings else text.embed
            if emb is None:
                raise ValueError("UnCLIPDecoder: this decoder reads CLIP's raw text embedding: the encoding has no "
                                 ".raw_embed (encode the prompts with ClipAdapter.encode_text)")
        return text.tokens, text.mask, emb

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Hybrid loss (MSE on eps + lambda VLB for the variance) with CFG dropping.

        batch: ``image`` (B, 3, S, S) in [-1, 1], ``image_embed`` (B, D) unit-norm z_i, optional
        ``text_tokens`` (B, L, W) and ``text_mask`` (B, L) (absent: no caption), optional ``seeds`` /
        ``generator``. Per item: z_i dropped with ``clip_drop_prob``, the caption with
        ``text_drop_prob``, the timestep and the noise — all from the batch's draws. A
        mask-conditioned decoder also needs ``fill`` (B, 1, S, S), 1 = the hole."""
        x0, zi = batch["image"], batch["image_embed"]
        b, dev = x0.shape[0], x0.device
        kw = self._kwargs(zi, batch.get("text_tokens"), batch.get("text_mask"), batch.get("text_embed"))
        if self.config.inpaint:
            if "fill" not in batch:
                raise ValueError("UnCLIPDecoder.loss: a mask-conditioned decoder needs batch['fill'] (B, 1, S, S)")
            kw["inpaint_image"] = self.inpaint_condition(x0, 1.0 - batch["fill"].to(x0.dtype))
        draws = Draws.of(batch, b, dev)
        drop_clip = draws.bernoulli("clip_drop", self.config.clip_drop_prob)
        drop_text = draws.bernoulli("text_drop", self.config.text_drop_prob)
        kw["image_embed"] = torch.where(drop_clip[:, None], self.null_image_embed(zi).expand_as(zi), zi)
        kw["text_mask"] = kw["text_mask"] & ~drop_text[:, None]
        t = draws.randint("t", self.diffusion.num_timesteps)
        noise = draws.randn("noise", x0.shape[1:], x0.dtype)
        terms = self.diffusion.training_losses(self, x0, t, noise=noise, model_kwargs=kw)
        return {k: v.mean() for k, v in terms.items()}

    def _null_branches(self, kw: dict, null_text) -> tuple[dict, dict]:
        """(kwargs over ``kw`` that drop the caption and keep z_i, kwargs that drop both)."""
        cap = {}
        if self.config.uncond == "masked":
            cap["text_mask"] = torch.zeros_like(kw["text_mask"][:1])
        else:
            tok, mask, emb = self._null_fields(null_text, 1 if self._batch1(null_text) else kw["text_mask"].shape[0])
            cap.update({"text_tokens": tok, "text_mask": mask.to(torch.bool)})
            if "text_embed" in kw:
                cap["text_embed"] = emb
        return cap, {"image_embed": self.null_image_embed(kw["image_embed"]), **cap}

    def guided(self, guidance: float, kw: dict, null_text=None, text_guidance: float | None = None):
        """The denoiser sampling uses: the decoder itself, classifier-free guidance over (z_i,
        caption) against (null z_i, null caption) with scale ``guidance``, or, when
        ``text_guidance`` differs from it and a caption is given, :class:`SplitGuidance` with
        ``guidance`` on z_i and ``text_guidance`` on the caption (three branches)."""
        split = text_guidance is not None and text_guidance != guidance and bool(kw["text_mask"].any())
        if guidance == 1.0 and not split:
            return self
        cap, null = self._null_branches(kw, null_text)
        return SplitGuidance(self, guidance, text_guidance, cap, null) if split else \
            ClassifierFreeGuidance(self, guidance, null)

    def _denoiser(self, guidance: float, kw: dict, null_text, context_cache: bool, text_guidance=None):
        """(denoiser, model kwargs) of a sampling loop; with ``context_cache`` the caption enters as
        the U-Net's context keys/values, computed once here for the conditional and null branches."""
        g = self.guided(guidance, kw, null_text, text_guidance)
        if not context_cache:
            return g, kw
        cached = self._cached_kwargs(kw)
        if g is self:
            return self, cached
        first = {k: kw[k][:1] for k in ("image_embed", "text_tokens", "text_mask")}
        null = self._cached_kwargs(g.null_kwargs, fill=first)
        if isinstance(g, SplitGuidance):  # the caption-dropped branch keeps every row's z_i
            return SplitGuidance(self, g.scale_a, g.scale_b, self._cached_kwargs(g.first_kwargs, fill=kw), null), cached
        return ClassifierFreeGuidance(self, guidance, null), cached

    @staticmethod
    def _batch1(null_text) -> bool:
        return null_text is not None and null_text.tokens.shape[0] == 1

    @torch.no_grad()
    def sample(self, image_embed: torch.Tensor, text=None, *, seeds: Sequence[int], steps: int | str | None = 50,
               guidance: float = 3.0, sampler: str | None = None, eta: float | None = None, clip=FROM_CONFIG,
               x_T: torch.Tensor | None = None, progress: bool = False, null_text=None, known=None, mask=None,
               jumps=None, inpaint_image=None, context_cache: bool = True,
               text_guidance: float | None = None) -> torch.Tensor:
        """Images (B, 3, S, S) in [-1, 1] for z_i (B, D) and an optional caption encoding (``.tokens``
        (B, L, W), ``.mask`` (B, L)); image i depends only on seeds[i]. ``steps`` in the respacing
        vocabulary; classifier-free guidance ``guidance`` (1 = off). ``x_T``: start from this latent
        (e.g. from :meth:`invert`, then use ``eta=0``) instead of seeded noise. ``sampler``, ``eta``
        and ``clip`` default to ``config.sampling``; ours: DDIM with ``eta=1`` (the DDPM posterior
        variance, per-image seeded noise) and dynamic thresholding of x0 (Saharia et al. 2022) — on
        the shipped shapes decoder they raised the caption match of new single-object prompts from
        62% (eta 0, static clip) to 80% (seed-1 selection set,
        benchmarks/results/cpu-xeon-2core/unclip-shipped/). ``null_text``: the encoding of
        :attr:`null_prompt` (batch 1 or B), for ``uncond='empty_prompt'``. ``context_cache``: the
        U-Net's context keys/values projected once per call (:meth:`context_cache`; the same images
        to float tolerance) instead of at every step in every attention block. Inpainting: ``known``
        (B or 1, 3, S, S) in [-1, 1] and ``mask`` (B or 1, 1 or 3, S, S), 1 = keep the known pixel,
        blended in every fused step; ``jumps`` = (jump_length, jump_n_sample) adds RePaint's
        resampling (``diffusion.repaint.inpaint_sampling``). A mask-conditioned decoder takes
        ``inpaint_image`` (B, 4, S, S) = :meth:`inpaint_condition` (known, keep). ``text_guidance``:
        a separate scale for the caption, ``guidance`` then scaling z_i alone (:meth:`guided`;
        None or equal to ``guidance``: the one-scale path)."""
        b = image_embed.shape[0]
        seeds = check_seeds(seeds, b)
        sampler, eta, clip = self.config.sampling.resolve(sampler, eta, clip)
        sampler, eta, inpaint = inpaint_sampling(sampler, eta, known, mask, jumps)
        kw = self._kwargs(image_embed, *self._text(text), null_text=null_text)
        if inpaint_image is not None:
            kw["inpaint_image"] = inpaint_image
        s = self.image_size
        start = (b, 3, s, s) if x_T is None else x_T
        denoiser, kw = self._denoiser(guidance, kw, null_text, context_cache, text_guidance)
        return run_sampler(sampler, denoiser, self.diffusion, start,
                           steps=self.config.sampling.steps(steps), eta=eta, model_kwargs=kw, seeds=seeds, clip=clip,
                           progress=progress, device=image_embed.device, **inpaint)

    @torch.no_grad()
    def invert(self, images: torch.Tensor, image_embed: torch.Tensor, text=None, *, steps: int | str = 50,
               guidance: float = 1.0, progress: bool = False, null_text=None,
               text_guidance: float | None = None) -> torch.Tensor:
        """DDIM inversion (eta = 0): the x_T that :meth:`sample` with the same ``steps``, ``guidance``
        (and ``text_guidance``) and ``eta=0, clip=None`` maps back to ``images`` (B, 3, S, S) in
        [-1, 1]. Used for variations from the input image and text-diff edits (Ramesh et al. Sec. 3.3)."""
        s = self.image_size
        if images.dim() != 4 or images.shape[1:] != (3, s, s):
            raise ValueError(f"UnCLIPDecoder.invert: images must be (B, 3, {s}, {s}), got {tuple(images.shape)}")
        kw = self._kwargs(image_embed, *self._text(text), null_text=null_text)
        denoiser, kw = self._denoiser(guidance, kw, null_text, True, text_guidance)
        return ddim_invert(denoiser, respace(self.diffusion, self.config.sampling.steps(steps)),
                           images, model_kwargs=kw, progress=progress)


def _add(a, b):
    return b if a is None else a if b is None else a + b


def widen_for_inpainting(decoder: UnCLIPDecoder) -> UnCLIPDecoder:
    """A mask-conditioned copy of a trained decoder (GLIDE's recipe): the same weights, the input
    convolution widened by the 4 conditioning channels with zero weights, so that it starts as
    the original model and fine-tuning learns to use the known pixels."""
    from dataclasses import replace

    c = decoder.config
    if c.inpaint:
        raise ValueError("widen_for_inpainting: the decoder is already mask-conditioned")
    wide = UnCLIPDecoder(replace(c, inpaint=True, unet=replace(c.unet, low_res_channels=4)))
    new = wide.state_dict()
    for k, v in decoder.state_dict().items():
        if new[k].shape == v.shape:
            new[k] = v
        else:  # the first convolution: (C, 3, k, k) -> (C, 7, k, k), the new input channels zero
            w = torch.zeros_like(new[k])
            w[:, : v.shape[1]] = v
            new[k] = w
    wide.load_state_dict(new)
    return wide.to(next(decoder.parameters()).device)
