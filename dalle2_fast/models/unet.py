"""One configurable U-Net for the DDPM family.

- DDPM (Ho et al. 2020): GroupNorm ResBlocks with the time embedding added, attention at 16x16,
  fixed variance (``learn_sigma=False``).
- Improved DDPM (Nichol & Dhariwal 2021): ``learn_sigma=True`` doubles the output channels
  (eps and the interpolation ``v`` of Eq. 15), multi-head attention at 16 and 8.
- ADM (Dhariwal & Nichol 2021): wider / deeper, attention at 32, 16, 8 with ``num_heads`` or
  ``num_head_channels``, AdaGN (``use_scale_shift_norm``), BigGAN up/down ResBlocks
  (``resblock_updown``), class conditioning (a label embedding added to the time embedding),
  dropout.
- Super-resolution (ADM upsamplers, SR3-style): ``low_res_channels`` concatenates the
  low-resolution image, bilinearly upsampled to x's size, to the input.
- unCLIP decoder conditioning (Ramesh et al. 2022, Sec. 2.1, following GLIDE): a vector
  ``cond`` (B, cond_dim) projected and added to the time embedding and (``cond_tokens`` > 0)
  projected into that many extra context tokens, prepended to the context tokens
  (B, T, context_dim) that every attention block attends to besides its own tokens.

The layout (input_blocks / middle_block / output_blocks, skip connections popped in reverse)
is guided-diffusion's, so its checkpoints load with a key rename and a few tensor transforms
(:mod:`dalle2_fast.interop.guided_diffusion`).

State-dict layout v2 (this version): an attention block holds ``norm`` and ``attn``
(:class:`dalle2_fast.nn.Attention`: ``attn.to_qkv``, ``attn.to_context_kv``, ``attn.to_out``).
Checkpoints written before (v1: ``qkv``, ``context_kv``, ``proj_out`` directly on the block, the
same tensors) load through :func:`convert_v1_unet_state_dict`, applied by ``_upgrade_state_dict``.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.nn.adagn import AdaGN
from dalle2_fast.nn.embeddings import timestep_embedding
from dalle2_fast.nn.kv_cache import KVCache
from dalle2_fast.nn.unet_blocks import AttentionBlock, Downsample, ResBlock, TimestepSequential, Upsample, _zero

# v1 -> v2 attention-block keys: <block>.{qkv,context_kv,proj_out}.* -> <block>.attn.{to_qkv,...}.*
_V1_ATTN = {"qkv": "attn.to_qkv", "context_kv": "attn.to_context_kv", "proj_out": "attn.to_out"}
_V1_KEY = re.compile(r"^((?:input_blocks|middle_block|output_blocks)\.(?:.*\.)?)"
                     r"(qkv|context_kv|proj_out)\.(weight|bias)$")


def convert_v1_unet_state_dict(state: dict, prefix: str = "") -> dict:
    """A :class:`UNet` state dict of layout v1 (attention blocks with ``qkv``, ``context_kv``,
    ``proj_out`` Linear layers of their own) -> layout v2 (those layers inside ``attn``, an
    :class:`~dalle2_fast.nn.Attention`: ``to_qkv``, ``to_context_kv``, ``to_out``). The tensors
    are the same objects (v1 already used the [q|k|v][head][c] channel order); only keys under
    ``prefix`` + the U-Net's blocks change, so v2 dicts, other prefixes and the classifier's
    ``pool.qkv`` pass through untouched (the function is idempotent). Pure: returns a new dict."""
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            m = _V1_KEY.match(key[len(prefix):])
            if m is not None:
                key = f"{prefix}{m.group(1)}{_V1_ATTN[m.group(2)]}.{m.group(3)}"
        if key in out:
            raise KeyError(f"convert_v1_unet_state_dict: {key!r} appears in both the old and the new layout")
        out[key] = value
    return out


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet` (stored with every checkpoint).

    attention_resolutions are feature-map sizes in pixels (e.g. (32, 16, 8) at image_size 64),
    like guided-diffusion's flags. out_channels defaults to in_channels and is doubled by
    learn_sigma. num_head_channels, when set, overrides num_heads. low_res_channels: channels of
    the ``low_res`` image a super-resolution model is conditioned on (None: not an upsampler).
    """

    image_size: int = 32
    in_channels: int = 3
    out_channels: int | None = None
    model_channels: int = 128
    channel_mult: tuple[float, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 1
    num_head_channels: int | None = None
    num_heads_upsample: int | None = None
    dropout: float = 0.0
    learn_sigma: bool = False
    num_classes: int | None = None
    use_scale_shift_norm: bool = False
    resblock_updown: bool = False
    conv_resample: bool = True
    num_groups: int = 32
    cond_dim: int | None = None
    context_dim: int | None = None
    cond_tokens: int = 0
    low_res_channels: int | None = None
    use_checkpoint: bool = False

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        validate_trunk(self, "UNetConfig")
        for name in ("out_channels", "num_classes", "cond_dim", "context_dim", "low_res_channels",
                     "num_head_channels", "num_heads_upsample"):
            val = getattr(self, name)
            if val is not None and (not isinstance(val, int) or val < 1):
                raise ValueError(f"UNetConfig: {name} must be None or a positive int, got {val!r}")
        if not isinstance(self.cond_tokens, int) or self.cond_tokens < 0:
            raise ValueError(f"UNetConfig: cond_tokens must be an int >= 0, got {self.cond_tokens!r}")
        if self.cond_tokens and not (self.cond_dim and self.context_dim):
            raise ValueError(f"UNetConfig: cond_tokens={self.cond_tokens} needs both cond_dim and context_dim set")

    @property
    def final_out_channels(self) -> int:
        """Channels of the network output: out_channels (or in_channels), x2 with learn_sigma."""
        base = self.out_channels if self.out_channels is not None else self.in_channels
        return base * (2 if self.learn_sigma else 1)

    def replace(self, **changes) -> "UNetConfig":
        """A copy with ``changes`` (unknown field names raise TypeError)."""
        return dataclasses.replace(self, **changes)


def validate_trunk(cfg, who: str) -> None:
    """Checks shared by the U-Net and the encoder-only classifier configs."""
    pos = {"image_size": cfg.image_size, "in_channels": cfg.in_channels, "model_channels": cfg.model_channels,
           "num_res_blocks": cfg.num_res_blocks, "num_heads": cfg.num_heads, "num_groups": cfg.num_groups}
    for name, val in pos.items():
        if not isinstance(val, int) or val < 1:
            raise ValueError(f"{who}: {name} must be a positive int, got {val!r}")
    if not cfg.channel_mult or any(m <= 0 for m in cfg.channel_mult):
        raise ValueError(f"{who}: channel_mult must be non-empty positive numbers, got {cfg.channel_mult}")
    down = 2 ** (len(cfg.channel_mult) - 1)
    if cfg.image_size % down:
        raise ValueError(
            f"{who}: image_size ({cfg.image_size}) must be divisible by 2^(len(channel_mult)-1) = {down}"
        )
    sizes = {cfg.image_size // 2**i for i in range(len(cfg.channel_mult))}
    bad = [r for r in cfg.attention_resolutions if r not in sizes]
    if bad:
        raise ValueError(f"{who}: attention_resolutions {bad} are not feature-map sizes of this net {sorted(sizes)}")
    for m in cfg.channel_mult:
        ch = int(m * cfg.model_channels)
        if ch % cfg.num_groups:
            raise ValueError(
                f"{who}: channels {ch} (= {m} * model_channels) must be divisible by num_groups ({cfg.num_groups})"
            )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"{who}: dropout must be in [0, 1), got {cfg.dropout}")


def _attn(cfg, ch: int, num_heads: int, context_dim=None) -> AttentionBlock:
    return AttentionBlock(ch, num_heads, cfg.num_head_channels, cfg.num_groups, context_dim)


def build_encoder(cfg, emb_dim: int, context_dim=None):
    """The U-Net's down path and middle block (shared with the noisy classifier).

    Returns (input_blocks, middle_block, channels of each input block's output, final ds).
    """
    res_kw = dict(dropout=cfg.dropout, num_groups=cfg.num_groups, use_scale_shift_norm=cfg.use_scale_shift_norm)
    attn_ds = {cfg.image_size // r for r in cfg.attention_resolutions}
    ch = int(cfg.channel_mult[0] * cfg.model_channels)
    in_ch = cfg.in_channels + (getattr(cfg, "low_res_channels", None) or 0)  # SR: x and upsampled low_res
    blocks = nn.ModuleList([TimestepSequential([nn.Conv2d(in_ch, ch, 3, padding=1)])])
    chans, ds = [ch], 1
    for level, mult in enumerate(cfg.channel_mult):
        for _ in range(cfg.num_res_blocks):
            out = int(mult * cfg.model_channels)
            layers = [ResBlock(ch, emb_dim, out, **res_kw)]
            ch = out
            if ds in attn_ds:
                layers.append(_attn(cfg, ch, cfg.num_heads, context_dim))
            blocks.append(TimestepSequential(layers))
            chans.append(ch)
        if level != len(cfg.channel_mult) - 1:
            down = ResBlock(ch, emb_dim, ch, updown="down", **res_kw) if cfg.resblock_updown else Downsample(
                ch, cfg.conv_resample
            )
            blocks.append(TimestepSequential([down]))
            chans.append(ch)
            ds *= 2
    middle = TimestepSequential(
        [ResBlock(ch, emb_dim, ch, **res_kw), _attn(cfg, ch, cfg.num_heads, context_dim),
         ResBlock(ch, emb_dim, ch, **res_kw)]
    )
    return blocks, middle, chans, ds


def time_embed_mlp(model_channels: int) -> nn.Sequential:
    emb_dim = 4 * model_channels
    return nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))


@register_model("unet")
class UNet(nn.Module, Pretrained):
    """``UNet(config)(x, t, y=None, cond=None, context=None, context_mask=None, low_res=None, emb=None)``.

    x: (B, in_channels, S, S); t: (B,) timesteps (int or float); y: (B,) int64 labels when
    ``num_classes``; cond: (B, cond_dim) when ``cond_dim``; context: (B, T, context_dim) and
    context_mask: (B, T) bool (True = padded token) when ``context_dim``; low_res:
    (B, low_res_channels, h, w) when ``low_res_channels`` (upsampled bilinearly to S x S; used
    as is when already S x S); emb: optional (B, 4 * model_channels) added to the conditioning
    embedding (e.g. the unCLIP decoder's projected caption embedding).
    Returns (B, final_out_channels, S, S).
    """

    config_class = UNetConfig

    def __init__(self, config: UNetConfig):
        super().__init__()
        if not isinstance(config, UNetConfig):
            raise TypeError(f"UNet: config must be a UNetConfig, got {type(config).__name__}")
        self.config = cfg = config
        mc, emb_dim = cfg.model_channels, 4 * cfg.model_channels
        self.time_embed = time_embed_mlp(mc)
        self.label_emb = nn.Embedding(cfg.num_classes, emb_dim) if cfg.num_classes else None
        self.cond_proj = nn.Linear(cfg.cond_dim, emb_dim) if cfg.cond_dim else None
        self.cond_to_tokens = nn.Linear(cfg.cond_dim, cfg.cond_tokens * cfg.context_dim) if cfg.cond_tokens else None
        self.input_blocks, self.middle_block, chans, ds = build_encoder(cfg, emb_dim, cfg.context_dim)
        attn_ds = {cfg.image_size // r for r in cfg.attention_resolutions}
        heads_up = cfg.num_heads_upsample if cfg.num_heads_upsample is not None else cfg.num_heads
        res_kw = dict(dropout=cfg.dropout, num_groups=cfg.num_groups, use_scale_shift_norm=cfg.use_scale_shift_norm)
        ch = chans[-1]
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                out = int(mc * mult)
                layers = [ResBlock(ch + chans.pop(), emb_dim, out, **res_kw)]
                ch = out
                if ds in attn_ds:
                    layers.append(_attn(cfg, ch, heads_up, cfg.context_dim))
                if level and i == cfg.num_res_blocks:
                    layers.append(
                        ResBlock(ch, emb_dim, ch, updown="up", **res_kw)
                        if cfg.resblock_updown
                        else Upsample(ch, cfg.conv_resample)
                    )
                    ds //= 2
                self.output_blocks.append(TimestepSequential(layers))
        self.out_norm = AdaGN(ch, cfg.num_groups, act="silu")
        self.out_conv = _zero(nn.Conv2d(int(cfg.channel_mult[0] * mc), cfg.final_out_channels, 3, padding=1))
        self.set_checkpointing(cfg.use_checkpoint)
        if cfg.context_dim:  # each attention block's layer in a context cache (context_cache)
            for i, blk in enumerate(m for m in self.modules() if isinstance(m, AttentionBlock)):
                blk.cache_index = i

    def set_checkpointing(self, enabled: bool) -> None:
        """Turn activation (gradient) checkpointing of every block on or off."""
        for m in self.modules():
            if isinstance(m, TimestepSequential):
                m.use_checkpoint = bool(enabled)

    def embed(self, t, y=None, cond=None, extra=None) -> torch.Tensor:
        """The conditioning embedding (B, 4 * model_channels): time + label + cond (+ extra)."""
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)
        if self.cond_proj is not None:
            emb = emb + self.cond_proj(cond)
        if extra is not None:
            if extra.shape != emb.shape:
                raise ValueError(f"UNet: emb must be (B, 4 * model_channels) = {tuple(emb.shape)}, "
                                 f"got {tuple(extra.shape)}")
            emb = emb + extra
        return emb

    def _check(self, x, t, y, cond, context, context_mask, low_res) -> None:
        cfg = self.config
        if x.dim() != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet: x must be (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        down = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[2] % down or x.shape[3] % down:
            raise ValueError(f"UNet: x's height and width must be divisible by {down}, got {tuple(x.shape[2:])}")
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"UNet: t must be (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        if (y is None) != (cfg.num_classes is None):
            raise ValueError(f"UNet: y must be given iff num_classes is set (num_classes={cfg.num_classes})")
        if y is not None and (y.shape != (x.shape[0],) or y.dtype not in (torch.int64, torch.int32)):
            raise ValueError(f"UNet: y must be (B,) integer labels, got {tuple(y.shape)} {y.dtype}")
        if (cond is None) != (cfg.cond_dim is None):
            raise ValueError(f"UNet: cond must be given iff cond_dim is set (cond_dim={cfg.cond_dim})")
        if cond is not None and cond.shape != (x.shape[0], cfg.cond_dim):
            raise ValueError(
                f"UNet: cond must be (B, cond_dim) = {(x.shape[0], cfg.cond_dim)}, got {tuple(cond.shape)}"
            )
        if context is not None:
            if cfg.context_dim is None:
                raise ValueError("UNet: context given but the model has no context_dim")
            if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[2] != cfg.context_dim:
                raise ValueError(
                    f"UNet: context must be (B, T, context_dim) with B={x.shape[0]}, "
                    f"context_dim={cfg.context_dim}, got {tuple(context.shape)}"
                )
        if (low_res is None) != (cfg.low_res_channels is None):
            raise ValueError(f"UNet: low_res must be given iff low_res_channels is set ({cfg.low_res_channels})")
        if low_res is not None and (low_res.dim() != 4 or low_res.shape[:2] != (x.shape[0], cfg.low_res_channels)):
            raise ValueError(f"UNet: low_res must be (B, {cfg.low_res_channels}, h, w), got {tuple(low_res.shape)}")
        if context_mask is not None and (context is None or context_mask.shape != context.shape[:2]):
            raise ValueError(
                f"UNet: context_mask must be (B, T) matching context, got {tuple(context_mask.shape)}"
            )

    def _context(self, cond, context, context_mask):
        """The attention blocks' context: [cond_tokens tokens of cond; context] and its mask."""
        if self.cond_to_tokens is not None:  # unCLIP: the CLIP embedding as extra context tokens
            tokens = self.cond_to_tokens(cond).view(cond.shape[0], self.config.cond_tokens, -1)  # (B, Tc, ctx)
            if context is not None:
                if context_mask is not None:
                    keep = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
                    context_mask = torch.cat([keep, context_mask.to(torch.bool)], dim=1)
                tokens = torch.cat([tokens, context.to(tokens.dtype)], dim=1)
            context = tokens
        return context, context_mask

    def context_cache(self, cond=None, context=None, context_mask=None) -> KVCache:
        """Every attention block's keys/values of the context (the ``cond_tokens`` tokens of cond and
        ``context``, arguments as :meth:`forward`'s), projected once: pass it as ``context_kv`` to
        every call of a sampling loop instead of ``context`` / ``context_mask`` (the same result to
        float tolerance; ``cond`` is still needed there for the embedding)."""
        if not self.config.context_dim:
            raise ValueError("UNet.context_cache: the model has no context (context_dim is unset)")
        if self.cond_to_tokens is not None and (cond is None or cond.dim() != 2):
            raise ValueError(f"UNet.context_cache: cond must be (B, {self.config.cond_dim}) (the cond tokens are "
                             f"part of the context), got {None if cond is None else tuple(cond.shape)}")
        context, context_mask = self._context(cond, context, context_mask)
        if context is None:
            raise ValueError("UNet.context_cache: no context given")
        blocks = sorted((m for m in self.modules() if isinstance(m, AttentionBlock)), key=lambda m: m.cache_index)
        return KVCache([blk.attn.context_kv(context, context_mask) for blk in blocks])

    def forward(self, x, t, y=None, cond=None, context=None, context_mask=None, low_res=None, emb=None,
                context_kv: KVCache | None = None):
        """Arguments in the class docstring; context_kv: :meth:`context_cache` instead of ``context``
        and ``context_mask``."""
        if context_kv is not None:
            if context is not None or context_mask is not None:
                raise ValueError("UNet: pass context (and context_mask) or its cache (context_kv), not both")
            if context_kv.batch != x.shape[0]:
                raise ValueError(f"UNet: context_kv holds batch {context_kv.batch}, x has batch {x.shape[0]}")
        self._check(x, t, y, cond, context, context_mask, low_res)
        emb = self.embed(t, y, cond, emb)
        context, context_mask = (context_kv, None) if context_kv is not None else self._context(cond, context,
                                                                                                 context_mask)
        if low_res is not None:
            up = low_res.to(x.dtype)
            if up.shape[-2:] != x.shape[-2:]:  # already x's size: upsampled outside (e.g. bicubic)
                up = F.interpolate(up, size=x.shape[-2:], mode="bilinear")  # (B, Cl, H, W)
            x = torch.cat([x, up], dim=1)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context, context_mask)
            hs.append(h)
        h = self.middle_block(h, emb, context, context_mask)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context, context_mask)
        return self.out_conv(self.out_norm(h))

    @classmethod
    def _upgrade_state_dict(cls, state: dict, config) -> dict:
        """Checkpoints of layout v1 (see the module docstring) load unchanged."""
        return convert_v1_unet_state_dict(state)

    @classmethod
    def from_guided_diffusion(cls, state_dict_or_path, **flags) -> "UNet":
        """Load a guided-diffusion (ADM) checkpoint given its published flags; see
        :func:`dalle2_fast.interop.guided_diffusion.unet_from_openai`."""
        from dalle2_fast.interop.guided_diffusion import unet_from_openai

        return unet_from_openai(state_dict_or_path, flags, source="guided")

    @classmethod
    def from_improved_diffusion(cls, state_dict_or_path, **flags) -> "UNet":
        """Load an improved-diffusion checkpoint given its published flags (its U-Net is
        guided-diffusion's with no resblock_updown, legacy attention order, heads by count).

        Note for samplers: improved-diffusion defaults to ``rescale_timesteps=True``, i.e. its
        models were trained on t * 1000 / diffusion_steps (a float), not the integer step."""
        from dalle2_fast.interop.guided_diffusion import unet_from_openai

        return unet_from_openai(state_dict_or_path, flags, source="improved")

    def to_guided_diffusion_state_dict(self, use_new_attention_order: bool = False) -> dict:
        """This model's weights in guided-diffusion's key layout (and, by default, its legacy
        qkv layout; pass ``use_new_attention_order=True`` for models built with that flag)."""
        from dalle2_fast.interop.guided_diffusion import to_openai_state_dict

        return to_openai_state_dict(self, use_new_attention_order)
