"""diffusers' ``UNet2DConditionModel`` / ``UNet2DModel`` (the ADM-style U-Nets of Karlo's decoder
and super-resolution models) -> our :class:`~dalle2_fast.models.unet.UNet`: a config mapping and a
rename table.

Supported blocks (what unCLIP checkpoints use): ``ResnetDownsampleBlock2D`` /
``ResnetUpsampleBlock2D`` (BigGAN up/down ResBlocks: our ``resblock_updown``),
``SimpleCrossAttnDownBlock2D`` / ``SimpleCrossAttnUpBlock2D`` / ``UNetMidBlock2DSimpleCrossAttn``
(GroupNorm, self-attention over the pixels whose keys/values also hold the projected context
tokens, first: our ``AttentionBlock`` in 'concat' mode), and ``UNetMidBlock2D`` without attention
(``add_attention=False``). Anything else is refused with the supported list.

Tensor transforms: their separate ``to_q`` / ``to_k`` / ``to_v`` (and ``add_k_proj`` /
``add_v_proj``) rows stacked into our fused ``to_qkv`` (``to_context_kv``); everything else is a
rename (ResnetBlock2D ``time_emb_proj`` -> ``emb_proj``, ``conv_shortcut`` -> ``skip``, ...).
"""
from __future__ import annotations

from dalle2_fast.checkpoint import CheckpointError
from dalle2_fast.interop._io import Rule, Source, cat0, same
from dalle2_fast.models.unet import UNetConfig

_DOWN = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}
_UP = {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True}
_MID = {"UNetMidBlock2DSimpleCrossAttn": True, "UNetMidBlock2D": False}
_SHIFT = {"scale_shift": True, "default": False}
# settings whose other values change the network: (config key, required value)
_FIXED = {"act_fn": "silu", "flip_sin_to_cos": True, "freq_shift": 0, "time_embedding_type": "positional",
          "only_cross_attention": False, "dual_cross_attention": False, "center_input_sample": False,
          "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "time_embedding_act_fn": None,
          "timestep_post_act": None, "encoder_hid_dim": None, "addition_embed_type": None, "conv_in_kernel": 3,
          "conv_out_kernel": 3, "mid_block_scale_factor": 1, "time_cond_proj_dim": None, "norm_eps": 1e-5,
          "mid_block_only_cross_attention": None, "num_class_embeds": None, "encoder_hid_dim_type": None}


def _refuse(who: str, what: str) -> CheckpointError:
    return CheckpointError(f"{who}: {what} is not supported by this importer (supported: down blocks {list(_DOWN)}, "
                           f"up blocks {list(_UP)}, mid blocks {list(_MID)})")


def unet_config(cfg: dict, who: str, *, cond_dim: int | None = None, cond_tokens: int = 0,
                low_res_channels: int | None = None) -> tuple[UNetConfig, list[bool]]:
    """(our UNetConfig, whether each level has attention) for a diffusers U-Net config dict.
    ``cond_dim`` / ``cond_tokens``: the unCLIP decoder's CLIP-embedding conditioning (held by
    diffusers' ``UnCLIPTextProjModel``, outside the U-Net); ``low_res_channels``: a
    super-resolution model's conditioning channels (its ``in_channels`` include them)."""
    for k, want in _FIXED.items():
        got = cfg.get(k, want)
        if isinstance(want, float) and isinstance(got, (int, float)):
            ok = abs(float(got) - want) < 1e-12
        else:
            ok = got == want
        if not ok:
            raise CheckpointError(f"{who}: config {k}={got!r} is not supported (this importer needs {want!r})")
    down, up = list(cfg.get("down_block_types", ())), list(cfg.get("up_block_types", ()))
    if not down or len(down) != len(up):
        raise CheckpointError(f"{who}: down_block_types and up_block_types must be non-empty and as long, got "
                              f"{down} and {up}")
    for b in down:
        if b not in _DOWN:
            raise _refuse(who, f"down block {b!r}")
    for b in up:
        if b not in _UP:
            raise _refuse(who, f"up block {b!r}")
    attn = [_DOWN[b] for b in down]
    if [_UP[b] for b in reversed(up)] != attn:
        raise CheckpointError(f"{who}: up blocks {up} do not mirror down blocks {down} (attention at the same levels)")
    mid = cfg.get("mid_block_type", "UNetMidBlock2D")
    if mid not in _MID:
        raise _refuse(who, f"mid block {mid!r}")
    if mid == "UNetMidBlock2D" and cfg.get("add_attention", True):
        raise _refuse(who, "UNetMidBlock2D with attention (add_attention=True)")
    if _MID[mid] != any(attn):
        raise CheckpointError(f"{who}: mid block {mid!r} with attention {_MID[mid]} but levels with attention {attn}")
    shift = cfg.get("resnet_time_scale_shift", "default")
    if shift not in _SHIFT:
        raise CheckpointError(f"{who}: resnet_time_scale_shift={shift!r} (supported: {list(_SHIFT)})")
    boc = [int(c) for c in cfg["block_out_channels"]]
    if len(boc) != len(down):
        raise CheckpointError(f"{who}: block_out_channels {boc} does not match {len(down)} levels")
    mc = boc[0]
    if cfg.get("time_embedding_dim") not in (None, 4 * mc):
        raise CheckpointError(f"{who}: time_embedding_dim={cfg['time_embedding_dim']} (only 4 * block_out_channels[0])")
    lpb = cfg.get("layers_per_block", 2)
    if not isinstance(lpb, int):
        raise CheckpointError(f"{who}: layers_per_block must be one int, got {lpb!r}")
    ahd = cfg.get("attention_head_dim", 8)
    if any(attn) and not isinstance(ahd, int):
        raise CheckpointError(f"{who}: attention_head_dim must be one int, got {ahd!r}")
    size = int(cfg["sample_size"] if not isinstance(cfg["sample_size"], (list, tuple)) else cfg["sample_size"][0])
    in_ch = int(cfg["in_channels"]) - (low_res_channels or 0)
    out = int(cfg.get("out_channels", cfg["in_channels"]))
    learn_sigma = out == 2 * in_ch
    ctx = cfg.get("cross_attention_dim") if any(attn) else None
    ucfg = UNetConfig(
        image_size=size, in_channels=in_ch, out_channels=in_ch if learn_sigma else out, model_channels=mc,
        channel_mult=tuple(c / mc if c % mc else c // mc for c in boc), num_res_blocks=lpb,
        attention_resolutions=tuple(size // 2**i for i, a in enumerate(attn) if a),
        num_head_channels=ahd if any(attn) else None, learn_sigma=learn_sigma,
        use_scale_shift_norm=_SHIFT[shift], resblock_updown=True, num_groups=int(cfg.get("norm_num_groups", 32)),
        cond_dim=cond_dim, context_dim=int(ctx) if ctx else None, cond_tokens=cond_tokens,
        low_res_channels=low_res_channels)
    return ucfg, attn


def _res(ours: str, theirs: str, src: Source) -> dict[str, Rule]:
    names = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2"}
    if f"{theirs}.conv_shortcut.weight" in src:
        names["skip"] = "conv_shortcut"
    return {f"{ours}.{a}.{s}": ((f"{theirs}.{b}.{s}",), same) for a, b in names.items() for s in ("weight", "bias")}


def _attn(ours: str, theirs: str) -> dict[str, Rule]:
    out: dict[str, Rule] = {}
    for s in ("weight", "bias"):
        out[f"{ours}.norm.{s}"] = ((f"{theirs}.group_norm.{s}",), same)
        out[f"{ours}.attn.to_qkv.{s}"] = (tuple(f"{theirs}.to_{p}.{s}" for p in "qkv"), cat0)
        out[f"{ours}.attn.to_context_kv.{s}"] = ((f"{theirs}.add_k_proj.{s}", f"{theirs}.add_v_proj.{s}"), cat0)
        out[f"{ours}.attn.to_out.{s}"] = ((f"{theirs}.to_out.0.{s}",), same)
    return out


def _plain(ours: str, theirs: str) -> dict[str, Rule]:
    return {f"{ours}.{s}": ((f"{theirs}.{s}",), same) for s in ("weight", "bias")}


def unet_rules(levels_attn: list[bool], num_res_blocks: int, src: Source, prefix: str = "",
               mid_attention: bool | None = None) -> dict[str, Rule]:
    """Rules (our key -> their keys) for our UNet's trunk (time embedding, blocks, head), our keys
    under ``prefix``. ``mid_attention``: whether the middle block keeps an attention layer (our
    upsamplers replace it by an identity); default: any level has attention."""
    p = prefix
    r: dict[str, Rule] = {}
    r.update(_plain(f"{p}time_embed.0", "time_embedding.linear_1"))
    r.update(_plain(f"{p}time_embed.2", "time_embedding.linear_2"))
    r.update(_plain(f"{p}input_blocks.0.0", "conv_in"))
    k, n = 1, len(levels_attn)
    for i, a in enumerate(levels_attn):
        for j in range(num_res_blocks):
            r.update(_res(f"{p}input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}", src))
            if a:
                r.update(_attn(f"{p}input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}"))
            k += 1
        if i != n - 1:
            r.update(_res(f"{p}input_blocks.{k}.0", f"down_blocks.{i}.downsamplers.0", src))
            k += 1
    mid_attn = any(levels_attn) if mid_attention is None else mid_attention
    r.update(_res(f"{p}middle_block.0", "mid_block.resnets.0", src))
    if mid_attn:
        r.update(_attn(f"{p}middle_block.1", "mid_block.attentions.0"))
    r.update(_res(f"{p}middle_block.2", "mid_block.resnets.1", src))
    k = 0
    for i, a in enumerate(reversed(levels_attn)):
        for j in range(num_res_blocks + 1):
            r.update(_res(f"{p}output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}", src))
            if a:
                r.update(_attn(f"{p}output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}"))
            if i != n - 1 and j == num_res_blocks:
                r.update(_res(f"{p}output_blocks.{k}.{2 if a else 1}", f"up_blocks.{i}.upsamplers.0", src))
            k += 1
    r.update(_plain(f"{p}out_norm", "conv_norm_out"))
    r.update(_plain(f"{p}out_conv", "conv_out"))
    return r


def context_tokens_rows(w, n_tokens: int):
    """diffusers' / Karlo's ``clip_extra_context_tokens_proj`` output is read channel-major
    ((B, C * n) -> (B, C, n) -> tokens); ours token-major ((B, n * C) -> (B, n, C)): rows
    c * n + k -> k * C + c, for the weight (n C, D) and the bias (n C,)."""
    c = w.shape[0] // n_tokens
    return w.reshape(c, n_tokens, *w.shape[1:]).transpose(0, 1).reshape(w.shape)


__all__ = ["unet_config", "unet_rules", "context_tokens_rows"]
