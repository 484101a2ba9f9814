"""Load and export OpenAI's guided-diffusion / improved-diffusion U-Net and classifier weights.

Flags are the published ones (the MODEL_FLAGS / CLASSIFIER_FLAGS of the READMEs), applied on
top of each project's argparse defaults exactly as its scripts do; the diffusion flags that
often ride along (diffusion_steps, noise_schedule, ...) are accepted and ignored; any other
name is an error. in_channels, out_channels and the class count are read off the weights.

The mapping is a rename table plus three explicit tensor transforms (our modules keep one
layout each; ``_key_map`` pairs every key of ours with theirs and the two transforms):
- renames: ResBlock ``in_layers.0/.2``, ``emb_layers.1``, ``out_layers.0/.3``,
  ``skip_connection`` <-> ``norm1``, ``conv1``, ``emb_proj``, ``norm2``, ``conv2``, ``skip``;
  ``Downsample.op`` <-> ``conv``; AttentionBlock ``qkv``, ``encoder_kv``, ``proj_out`` <->
  ``attn.to_qkv``, ``attn.to_context_kv``, ``attn.to_out``; head ``out.0`` / ``out.2`` <->
  ``out_norm`` / ``out_conv``; classifier ``out.2`` attention pool (``qkv_proj``, ``c_proj``)
  or ``out.3`` (adaptive) <-> ``pool`` (``qkv``, ``proj``).
- conv1d <-> linear: their 1x1 Conv1d weight (out, in, 1) <-> our Linear weight (out, in);
  the pool's positional_embedding (C, T+1) <-> ours (T+1, C).
- head-major <-> part-major: their legacy order (``use_new_attention_order=False``, all of
  improved-diffusion, and GLIDE / unCLIP's ``QKVAttention`` including its ``encoder_kv``) lays
  the fused projection's channels out as [head][part][c]; ours is always [part][head][c]
  (parts = q, k, v or k, v): rows are permuted on the way (:func:`attention_from_guided`).
improved-diffusion's U-Net is guided-diffusion's with no resblock_updown, legacy attention and
heads given by count only; its default channel_mult differs (it also has 32x32: (1, 2, 2, 2)).
Its diffusion defaults to ``rescale_timesteps=True`` (the model sees t * 1000 / T); guided-
diffusion's to False: the sampler, not the network, must reproduce that.
"""
from __future__ import annotations

import os

import torch

from dalle2_fast.models.classifier import ClassifierConfig, NoisyClassifier
from dalle2_fast.models.unet import UNet, UNetConfig
from dalle2_fast.nn.unet_blocks import AttentionBlock, AttentionPool2d, Downsample, ResBlock

_DIFFUSION_FLAGS = {"diffusion_steps", "noise_schedule", "timestep_respacing", "use_kl", "predict_xstart",
                    "rescale_timesteps", "rescale_learned_sigmas", "sigma_small"}
_GUIDED_DEFAULTS = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
                        num_head_channels=-1, attention_resolutions="16,8", channel_mult="", dropout=0.0,
                        class_cond=False, use_checkpoint=False, use_scale_shift_norm=True, resblock_updown=False,
                        use_fp16=False, use_new_attention_order=False, learn_sigma=False)
_IMPROVED_DEFAULTS = dict(image_size=64, num_channels=128, num_res_blocks=2, num_heads=4, num_heads_upsample=-1,
                          attention_resolutions="16,8", dropout=0.0, learn_sigma=False, class_cond=False,
                          use_checkpoint=False, use_scale_shift_norm=True, channel_mult="")
_SR_DEFAULTS = dict(large_size=256, small_size=64, num_channels=128, num_res_blocks=2, num_heads=4,
                    num_heads_upsample=-1, num_head_channels=-1, attention_resolutions="16,8", dropout=0.0,
                    class_cond=False, use_checkpoint=False, use_scale_shift_norm=True, resblock_updown=False,
                    use_fp16=False, learn_sigma=False)
_CLASSIFIER_DEFAULTS = dict(image_size=64, classifier_use_fp16=False, classifier_width=128, classifier_depth=2,
                            classifier_attention_resolutions="32,16,8", classifier_use_scale_shift_norm=True,
                            classifier_resblock_updown=True, classifier_pool="attention")
_GUIDED_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
_SR_MULT = {512: (1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4)}
_IMPROVED_MULT = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}


def load_state_dict(state_dict_or_path) -> dict:
    """A state dict, or a path to a .pt (read with ``weights_only=True``) / .safetensors file."""
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        path = os.fspath(state_dict_or_path)
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        sd = torch.load(path, map_location="cpu", weights_only=True)
    else:
        sd = state_dict_or_path
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise TypeError("state_dict_or_path: expected a dict of tensors or a path to one")
    return sd


def _merge_flags(flags: dict, defaults: dict, who: str) -> dict:
    unknown = sorted(set(flags) - set(defaults) - _DIFFUSION_FLAGS)
    if unknown:
        raise TypeError(f"{who}: unknown flags {unknown}; known: {sorted(defaults)}")
    return {**defaults, **{k: v for k, v in flags.items() if k in defaults}}


def _csv(value, who: str, name: str) -> tuple:
    if isinstance(value, str):
        return tuple(float(v) if "." in v else int(v) for v in value.split(",") if v.strip())
    if isinstance(value, (tuple, list)):
        return tuple(value)
    raise TypeError(f"{who}: {name} must be a comma-separated string or a tuple, got {value!r}")


def _mult(f: dict, table: dict, who: str) -> tuple:
    if f["channel_mult"] not in ("", None, ()):
        return _csv(f["channel_mult"], who, "channel_mult")
    if f["image_size"] not in table:
        raise ValueError(f"{who}: no default channel_mult for image_size {f['image_size']}; known {sorted(table)}")
    return table[f["image_size"]]


def _need(sd: dict, key: str, who: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"{who}: the state dict has no {key!r}; is it a guided/improved-diffusion checkpoint?")
    return sd[key]


def unet_config_from_flags(flags: dict, sd: dict, source: str = "guided") -> tuple[UNetConfig, bool]:
    """(UNetConfig, use_new_attention_order) for published flags and the weights they go with.

    guided-diffusion's super-resolution flags (``large_size`` / ``small_size``, the SuperResModel
    checkpoints) give a UNet with ``low_res_channels`` = in_channels (x and low_res concatenated)."""
    who = f"UNet.from_{source}_diffusion"
    sr = source == "guided" and "large_size" in flags
    defaults = _SR_DEFAULTS if sr else _GUIDED_DEFAULTS if source == "guided" else _IMPROVED_DEFAULTS
    f = _merge_flags(flags, defaults, who)
    if sr:
        if f["large_size"] not in _SR_MULT:
            raise ValueError(f"{who}: large_size must be one of {sorted(_SR_MULT)}, got {f['large_size']}")
        f["image_size"], mult = f["large_size"], _SR_MULT[f["large_size"]]
    else:
        mult = _mult(f, _GUIDED_MULT if source == "guided" else _IMPROVED_MULT, who)
    in_ch = _need(sd, "input_blocks.0.0.weight", who).shape[1]
    low_res = None
    if sr:
        if in_ch % 2:
            raise ValueError(f"{who}: a super-resolution checkpoint has an even number of input channels, got {in_ch}")
        in_ch = low_res = in_ch // 2
    out_ch = _need(sd, "out.2.weight", who).shape[0]
    k = 2 if f["learn_sigma"] else 1
    if out_ch % k:
        raise ValueError(f"{who}: learn_sigma=True but the checkpoint has {out_ch} output channels (odd)")
    if f["class_cond"] != ("label_emb.weight" in sd):
        raise ValueError(f"{who}: class_cond={f['class_cond']} but label_emb.weight is "
                         f"{'present' if 'label_emb.weight' in sd else 'absent'} in the checkpoint")
    hc = f.get("num_head_channels", -1)
    hu = f["num_heads_upsample"]
    cfg = UNetConfig(
        image_size=f["image_size"], in_channels=in_ch, out_channels=out_ch // k, model_channels=f["num_channels"],
        channel_mult=mult, num_res_blocks=f["num_res_blocks"],
        attention_resolutions=_csv(f["attention_resolutions"], who, "attention_resolutions"),
        num_heads=f["num_heads"], num_head_channels=None if hc == -1 else hc,
        num_heads_upsample=None if hu == -1 else hu, dropout=float(f["dropout"]), learn_sigma=bool(f["learn_sigma"]),
        num_classes=sd["label_emb.weight"].shape[0] if f["class_cond"] else None,
        use_scale_shift_norm=bool(f["use_scale_shift_norm"]), resblock_updown=bool(f.get("resblock_updown", False)),
        low_res_channels=low_res, use_checkpoint=bool(f["use_checkpoint"]),
    )
    return cfg, bool(f.get("use_new_attention_order", False))


def classifier_config_from_flags(flags: dict, sd: dict) -> ClassifierConfig:
    """ClassifierConfig for guided-diffusion's published classifier flags and weights."""
    who = "NoisyClassifier.from_guided_diffusion"
    f = _merge_flags(flags, _CLASSIFIER_DEFAULTS, who)
    if f["image_size"] not in _GUIDED_MULT:
        raise ValueError(f"{who}: image_size must be one of {sorted(_GUIDED_MULT)}, got {f['image_size']}")
    pool = f["classifier_pool"]
    head = {"attention": "out.2.c_proj.bias", "adaptive": "out.3.bias"}
    if pool not in head:
        raise ValueError(f"{who}: classifier_pool must be 'attention' or 'adaptive', got {pool!r}")
    return ClassifierConfig(
        image_size=f["image_size"], num_classes=_need(sd, head[pool], who).shape[0],
        in_channels=_need(sd, "input_blocks.0.0.weight", who).shape[1], model_channels=f["classifier_width"],
        channel_mult=_GUIDED_MULT[f["image_size"]], num_res_blocks=f["classifier_depth"],
        attention_resolutions=_csv(f["classifier_attention_resolutions"], who, "classifier_attention_resolutions"),
        num_head_channels=64, use_scale_shift_norm=bool(f["classifier_use_scale_shift_norm"]),
        resblock_updown=bool(f["classifier_resblock_updown"]), pool=pool,
    )


# ---- key / tensor mapping -------------------------------------------------------------------
_RES = {"norm1": "in_layers.0", "conv1": "in_layers.2", "emb_proj": "emb_layers.1", "norm2": "out_layers.0",
        "conv2": "out_layers.3", "skip": "skip_connection"}
# their attention-block layer -> (ours inside the block, parts of a fused projection; 0 = not fused)
_ATTN = {"qkv": ("attn.to_qkv", 3), "encoder_kv": ("attn.to_context_kv", 2), "proj_out": ("attn.to_out", 0)}


def _conv1d(w):  # our Linear weight (out, in) -> their Conv1d weight (out, in, 1); biases pass
    return w[..., None] if w.dim() == 2 else w


def _unconv1d(w):
    return w[..., 0] if w.dim() == 3 else w


def _swap_head_part(w: torch.Tensor, first: int, second: int) -> torch.Tensor:
    """Rows (first, second, c) -> (second, first, c) of a fused projection (weight or bias)."""
    return w.reshape(first, second, -1, *w.shape[1:]).transpose(0, 1).reshape(w.shape)


def _fused(parts: int, heads: int, head_major: bool):
    """(ours -> theirs, theirs -> ours) for one tensor of an attention projection with ``parts``
    fused parts (0: a plain projection); ``head_major``: theirs is [head][part][c]."""
    if not parts or not head_major:
        return _conv1d, _unconv1d
    return (lambda w: _conv1d(_swap_head_part(w, parts, heads)),  # [part][head] -> [head][part]
            lambda w: _swap_head_part(_unconv1d(w), heads, parts))  # [head][part] -> [part][head]


def attention_from_guided(state: dict, heads: int, head_major: bool) -> dict:
    """One guided-diffusion / GLIDE / unCLIP ``AttentionBlock``'s projections -> the state dict
    of our :class:`~dalle2_fast.nn.Attention` (``context_mode='concat'``).

    state: ``qkv.{weight,bias}`` (conv1d (3C, C, 1)), ``proj_out.*`` (C, C, 1), optionally
    ``encoder_kv.*`` (2C, Ce, 1), keys relative to the block (its ``norm.*`` is ignored: the
    norm lives outside the attention). head_major: their channel order is [head][part][c]
    (``use_new_attention_order=False``, improved-diffusion, GLIDE) rather than [part][head][c]."""
    out = {}
    for theirs, (ours, parts) in _ATTN.items():
        for s in ("weight", "bias"):
            if f"{theirs}.{s}" in state:
                out[f"{ours[len('attn.'):]}.{s}"] = _fused(parts, heads, head_major)[1](state[f"{theirs}.{s}"])
    return out


def _same(w):
    return w


def _key_map(model, new_order: bool, export: bool = True) -> dict:
    """our key -> (their key, ours->theirs fn, theirs->ours fn). ``export=False`` (importing a
    GLIDE / unCLIP-style checkpoint): conditioning layers and cross-attention are allowed; their
    keys pass through under our names (the caller renames the checkpoint's own names first)."""
    out = {}
    prefix_map, special = {}, {}
    if export and getattr(model, "cond_proj", None) is not None:
        raise ValueError("to_guided_diffusion_state_dict: guided-diffusion has no embedding-vector "
                         "conditioning (cond_dim); this model cannot be exported to its layout")
    top = {"out_norm": "out.0", "out_conv": "out.2"}
    if isinstance(model, NoisyClassifier):
        top = {"out_norm": "out.0", "pool": "out.2" if model.config.pool == "attention" else "out.3"}
    prefix_map.update({k + ".": v + "." for k, v in top.items()})
    for name, m in model.named_modules():
        p = name + "."
        if isinstance(m, ResBlock):
            prefix_map.update({p + a + ".": p + b + "." for a, b in _RES.items()})
        elif isinstance(m, Downsample):
            prefix_map[p + "conv."] = p + "op."
        elif isinstance(m, AttentionBlock):
            if export and m.attn.context_dim is not None:
                raise ValueError("to_guided_diffusion_state_dict: guided-diffusion has no cross-attention "
                                 "(context_dim); this model cannot be exported to its layout")
            for theirs, (ours, parts) in _ATTN.items():
                fwd, inv = _fused(parts, m.num_heads, head_major=not new_order)
                for s in ("weight", "bias"):
                    special[f"{p}{ours}.{s}"] = (f"{p}{theirs}.{s}", fwd, inv)
        elif isinstance(m, AttentionPool2d):
            t = prefix_map[p]
            special[p + "positional_embedding"] = (t + "positional_embedding", lambda w: w.t(), lambda w: w.t())
            for s in ("weight", "bias"):
                special[p + "qkv." + s] = (t + "qkv_proj." + s, _conv1d, _unconv1d)
                special[p + "proj." + s] = (t + "c_proj." + s, _conv1d, _unconv1d)
    for key in model.state_dict():
        if key in special:
            out[key] = special[key]
            continue
        theirs = key
        for a in sorted(prefix_map, key=len, reverse=True):
            if key.startswith(a):
                theirs = prefix_map[a] + key[len(a):]
                break
        out[key] = (theirs, _same, _same)
    return out


def to_openai_state_dict(model, use_new_attention_order: bool = False) -> dict:
    """Our model's weights in guided-diffusion's key and tensor layout."""
    sd = model.state_dict()
    kmap = _key_map(model, use_new_attention_order)
    return {t: fwd(sd[k].detach().clone()).contiguous() for k, (t, fwd, _) in kmap.items()}


def openai_to_ours(model, sd: dict, new_order: bool, who: str) -> tuple[dict, dict]:
    """(our state dict, our key -> their key) for guided-diffusion / GLIDE-layout weights ``sd``
    of ``model``'s architecture (every key present, shapes checked, nothing left over)."""
    kmap = _key_map(model, new_order, export=False)
    expected = {t for t, _, _ in kmap.values()}
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise KeyError(f"{who}: checkpoint does not match these flags: missing {missing[:5]}"
                       f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                       f"{'...' if len(unexpected) > 5 else ''}")
    ours = {}
    own = model.state_dict()
    for k, (t, _, inv) in kmap.items():
        v = inv(sd[t])
        if v.shape != own[k].shape:
            raise ValueError(f"{who}: {t} has shape {tuple(sd[t].shape)}, these flags expect one matching "
                             f"{tuple(own[k].shape)}")
        ours[k] = v
    return ours, {k: t for k, (t, _, _) in kmap.items()}


def load_openai_into(model, sd: dict, new_order: bool, who: str):
    """Copy guided-diffusion-layout weights ``sd`` into ``model`` (strict, shape-checked)."""
    ours, _ = openai_to_ours(model, sd, new_order, who)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in ours.items()}, strict=True)
    return model


def unet_from_openai(state_dict_or_path, flags: dict, source: str = "guided") -> UNet:
    """Build our UNet for the published ``flags`` and load the checkpoint into it."""
    sd = load_state_dict(state_dict_or_path)
    cfg, new_order = unet_config_from_flags(flags, sd, source)
    return load_openai_into(UNet(cfg), sd, new_order, f"UNet.from_{source}_diffusion")


def classifier_from_openai(state_dict_or_path, flags: dict) -> NoisyClassifier:
    """Build our NoisyClassifier for guided-diffusion's classifier flags and load it."""
    sd = load_state_dict(state_dict_or_path)
    cfg = classifier_config_from_flags(flags, sd)
    return load_openai_into(NoisyClassifier(cfg), sd, False, "NoisyClassifier.from_guided_diffusion")
