"""A diffusers ``UnCLIPPipeline`` folder (Karlo v1 alpha's published layout) -> our
:class:`~dalle2_fast.pipeline.UnCLIPPipeline`, converted once (then ``save_pretrained`` writes
our format).

The folder: ``model_index.json``; ``prior/`` (PriorTransformer), ``text_proj/``
(UnCLIPTextProjModel), ``decoder/`` (UNet2DConditionModel), ``super_res_first/`` and
``super_res_last/`` (UNet2DModel), ``prior_scheduler/``, ``decoder_scheduler/``,
``super_res_scheduler/`` (UnCLIPScheduler), ``text_encoder/`` (CLIPTextModelWithProjection) and
``tokenizer/`` (CLIPTokenizer); weights as safetensors or ``.bin`` (read weights-only).

What becomes what (every convention an explicit config field, see each model's docstring):

- prior -> :class:`DiffusionPrior` (:mod:`~dalle2_fast.interop.prior_transformer`);
- decoder + text_proj -> :class:`UnCLIPDecoder`: the U-Net (:mod:`~dalle2_fast.interop.diffusers_unet`);
  ``clip_image_embeddings_project_to_time_embeddings`` -> ``unet.cond_proj``;
  ``clip_extra_context_tokens_proj`` -> ``unet.cond_to_tokens`` (rows reordered: theirs reads
  the tokens channel-major); ``encoder_hidden_states_proj`` + ``text_encoder_hidden_states_norm``
  -> ``text_proj`` (Linear then LayerNorm: ``text_proj_order='linear_norm'``);
  ``embedding_proj`` -> ``text_time`` (``text_embed_to_time``);
  ``learned_classifier_free_guidance_embeddings`` -> ``null_image`` (``null_image_embed='learned'``);
  the empty prompt as the unconditional caption; raw CLIP embeddings;
- super_res_first + super_res_last -> one :class:`UnCLIPUpsampler` with ``unet`` and ``unet_last``
  (``last_step_unet``), the low-res image upsampled bicubic + antialias outside the network;
- each scheduler -> the stage's process and sampling conventions
  (:mod:`~dalle2_fast.interop.diffusers_schedulers`);
- text_encoder + tokenizer -> a text-only :class:`ClipAdapter` (:mod:`~dalle2_fast.interop.hf_clip_text`);
- the pipeline's defaults: diffusers' ``UnCLIPPipeline.__call__`` defaults (25 prior steps,
  25 decoder steps, 7 super-resolution steps, guidance 4 and 8).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from dalle2_fast.checkpoint import CheckpointError
from dalle2_fast.interop._io import Rule, Source, assign, component_weights, convert, empty_model, read_json, same
from dalle2_fast.interop.diffusers_schedulers import image_stage_conventions
from dalle2_fast.interop.diffusers_unet import context_tokens_rows, unet_config, unet_rules
from dalle2_fast.models.decoder import DecoderConfig, UnCLIPDecoder
from dalle2_fast.models.upsampler import UnCLIPUpsampler, UpsamplerConfig

COMPONENTS = ("prior", "decoder", "text_proj", "super_res_first", "super_res_last", "prior_scheduler",
              "decoder_scheduler", "super_res_scheduler", "text_encoder", "tokenizer")
DEFAULTS = dict(prior_steps=25, decoder_steps=25, upsampler_steps=7, prior_guidance=4.0, decoder_guidance=8.0)


def is_diffusers_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / "model_index.json").is_file()


def check_layout(path: Path) -> dict:
    """model_index.json of an unCLIP folder, with every component folder present."""
    who = "UnCLIPPipeline.from_diffusers"
    if not path.is_dir():
        raise FileNotFoundError(f"{who}: {path} is not a directory")
    if not (path / "model_index.json").is_file():
        raise CheckpointError(f"{who}: {path} has no model_index.json (expected a diffusers UnCLIPPipeline folder: "
                              f"model_index.json and {', '.join(c + '/' for c in COMPONENTS)})")
    index = read_json(path / "model_index.json", who)
    cls = index.get("_class_name")
    missing = [c for c in COMPONENTS if c not in index or not (path / c).is_dir()]
    if cls != "UnCLIPPipeline" or missing:
        raise CheckpointError(f"{who}: {path} is a {cls!r} folder missing {missing}: expected a diffusers "
                              f"UnCLIPPipeline folder with {', '.join(c + '/' for c in COMPONENTS)} (Karlo's layout)")
    return index


def _sched(path: Path, name: str) -> dict:
    return read_json(path / name / "scheduler_config.json", f"UnCLIPPipeline.from_diffusers {name}")


def _plain(ours: str, theirs: str) -> dict[str, Rule]:
    return {f"{ours}.{s}": ((f"{theirs}.{s}",), same) for s in ("weight", "bias")}


def decoder_from_diffusers(decoder: Path, text_proj: Path, scheduler: dict, text_len: int,
                           dtype: torch.dtype = torch.float32) -> UnCLIPDecoder:
    """Our decoder from a ``UNet2DConditionModel`` folder and its ``UnCLIPTextProjModel`` folder."""
    who = str(decoder)
    cfg, tp = read_json(decoder / "config.json", who), read_json(text_proj / "config.json", str(text_proj))
    if cfg.get("class_embed_type") != "identity":
        raise CheckpointError(f"{who}: class_embed_type={cfg.get('class_embed_type')!r}: an unCLIP decoder adds the "
                              "text projection's embedding through class_embed_type='identity'")
    D, n_tok = int(tp.get("clip_embeddings_dim", 768)), int(tp.get("clip_extra_context_tokens", 4))
    ucfg, attn = unet_config(cfg, who, cond_dim=D, cond_tokens=n_tok)
    if int(tp["time_embed_dim"]) != 4 * ucfg.model_channels or int(tp["cross_attention_dim"]) != ucfg.context_dim:
        raise CheckpointError(f"{text_proj}: time_embed_dim {tp['time_embed_dim']} / cross_attention_dim "
                              f"{tp['cross_attention_dim']} do not match the decoder (4 * {ucfg.model_channels}, "
                              f"{ucfg.context_dim})")
    diffusion, sampling = image_stage_conventions(scheduler, f"{who} scheduler")
    if (diffusion.var_type == "learned_range") != ucfg.learn_sigma:
        raise CheckpointError(f"{who}: out_channels {cfg.get('out_channels')} vs the scheduler's variance_type "
                              f"{diffusion.var_type}: a learned-range variance needs 2 x in_channels outputs")
    c = DecoderConfig(unet=ucfg, diffusion=diffusion, clip_dim=D, text_width=D, text_len=text_len,
                      text_drop_prob=0.0, text_proj_order="linear_norm", text_embed_to_time=True,
                      null_image_embed="learned", uncond="empty_prompt", raw_embeddings=True, sampling=sampling)
    src = Source(component_weights(decoder, who), who)
    rules = unet_rules(attn, ucfg.num_res_blocks, src, prefix="unet.")
    state = convert(src, rules)
    src.check_all_used()
    tsrc = Source(component_weights(text_proj, str(text_proj)), str(text_proj))
    trules: dict[str, Rule] = {}
    trules.update(_plain("unet.cond_proj", "clip_image_embeddings_project_to_time_embeddings"))
    for s in ("weight", "bias"):
        trules[f"unet.cond_to_tokens.{s}"] = ((f"clip_extra_context_tokens_proj.{s}",),
                                              lambda w: context_tokens_rows(w, n_tok))
    trules.update(_plain("text_proj.0", "encoder_hidden_states_proj"))
    trules.update(_plain("text_proj.1", "text_encoder_hidden_states_norm"))
    trules.update(_plain("text_time", "embedding_proj"))
    trules["null_image"] = (("learned_classifier_free_guidance_embeddings",), same)
    state.update(convert(tsrc, trules))
    tsrc.check_all_used()
    names = {k: ", ".join(v[0]) for k, v in {**rules, **trules}.items()}
    model = empty_model(lambda: UnCLIPDecoder(c))
    return assign(model, state, f"{decoder} + {text_proj}", names, dtype=dtype).eval()


_SAME_ARCH = ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "in_channels",
              "out_channels", "resnet_time_scale_shift", "norm_num_groups", "add_attention", "mid_block_type")


def upsampler_from_diffusers(first: Path, last: Path | None, scheduler: dict, low_res: int,
                             dtype: torch.dtype = torch.float32) -> UnCLIPUpsampler:
    """Our upsampler from ``super_res_first`` (every step but the last) and ``super_res_last``
    (None: the first model runs every step) UNet2DModel folders."""
    who = str(first)
    cfg = read_json(first / "config.json", who)
    if last is not None:
        lcfg = read_json(last / "config.json", str(last))
        diff = [k for k in _SAME_ARCH if cfg.get(k) != lcfg.get(k)]
        if diff:
            raise CheckpointError(f"{last}: the last-step model's architecture differs from {first}'s in {diff}")
    in_ch = int(cfg["in_channels"])
    if in_ch % 2:
        raise CheckpointError(f"{who}: a super-resolution model takes x and the upsampled image: in_channels must be "
                              f"even, got {in_ch}")
    ucfg, attn = unet_config(cfg, who, low_res_channels=in_ch // 2)
    if any(attn):
        raise CheckpointError(f"{who}: attention in a super-resolution model is not supported (convolutions only)")
    diffusion, sampling = image_stage_conventions(scheduler, f"{who} scheduler")
    if diffusion.var_type == "learned_range" or ucfg.learn_sigma:
        raise CheckpointError(f"{who}: a learned variance in the super-resolution model is not supported")
    c = UpsamplerConfig(unet=ucfg, diffusion=diffusion, low_res=low_res, high_res=ucfg.image_size,
                        low_res_upsample="bicubic_antialias", last_step_unet=last is not None, sampling=sampling)
    state, names = {}, {}
    for folder, prefix in ((first, "unet."), (last, "unet_last.")):
        if folder is None:
            continue
        src = Source(component_weights(folder, str(folder)), str(folder))
        rules = unet_rules(attn, ucfg.num_res_blocks, src, prefix=prefix, mid_attention=False)
        state.update(convert(src, rules))
        src.check_all_used()
        names.update({k: f"{folder.name}/{', '.join(v[0])}" for k, v in rules.items()})
    model = empty_model(lambda: UnCLIPUpsampler(c))
    return assign(model, state, who, names, dtype=dtype).eval()


def pipeline_parts_from_diffusers(path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> dict:
    """The stages of our pipeline from a diffusers UnCLIPPipeline folder (module docstring):
    {'clip', 'prior', 'decoder', 'upsamplers', 'defaults'} (``UnCLIPPipeline.from_diffusers``
    assembles them)."""
    from dalle2_fast.interop.hf_clip_text import clip_from_transformers
    from dalle2_fast.interop.prior_transformer import prior_from_diffusers

    path = Path(path)
    check_layout(path)
    clip = clip_from_transformers(path / "text_encoder", path / "tokenizer", dtype=dtype)
    prior = prior_from_diffusers(path / "prior", scheduler=_sched(path, "prior_scheduler"), dtype=dtype)
    if prior.config.text_len != clip.context_length or prior.config.clip_dim != clip.embed_dim:
        raise CheckpointError(f"{path}: prior (text_len {prior.config.text_len}, D {prior.config.clip_dim}) and "
                              f"text_encoder (context {clip.context_length}, D {clip.embed_dim}) do not match")
    decoder = decoder_from_diffusers(path / "decoder", path / "text_proj", _sched(path, "decoder_scheduler"),
                                     clip.context_length, dtype)
    up = upsampler_from_diffusers(path / "super_res_first", path / "super_res_last", _sched(path, "super_res_scheduler"),
                                  decoder.image_size, dtype)
    return {"clip": clip, "prior": prior, "decoder": decoder, "upsamplers": [up], "defaults": dict(DEFAULTS)}


__all__ = ["pipeline_parts_from_diffusers", "decoder_from_diffusers", "upsampler_from_diffusers", "is_diffusers_folder",
           "check_layout", "COMPONENTS", "DEFAULTS"]
