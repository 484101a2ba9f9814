"""Kakao Brain's original Karlo v1 alpha checkpoints (PyTorch Lightning files) -> our stages.

Files (their published names): ``prior-ckpt-step=01000000-of-01000000.ckpt``,
``decoder-ckpt-step=01000000-of-01000000.ckpt``, ``improved-sr-ckpt-step=1.2M.ckpt`` and
``ViT-L-14_stats.th`` (the (mean, std) of CLIP ViT-L/14 image embeddings). Each is read with
``torch.load(weights_only=True)``; the weights are the checkpoint's ``state_dict``.

Architectures (Karlo's configs ``prior_1B_vit_l.yaml``, ``decoder_900M_vit_l.yaml``,
``improved_sr_64_256_1.4B.yaml``; sizes read from the tensors where they can be, the rest is
:data:`KARLO`):

- prior (``model.*``): Karlo's ``PriorTransformer`` (text_ctx 77, width 2048, 20 layers, 32
  heads, final LayerNorm, CLIP dim 768); its fused ``c_qkv`` is head-major ([head][q|k|v][c]),
  reordered to our [q|k|v][head][c]. It is diffusers' PriorTransformer with Karlo's names
  (diffusers' ``scripts/convert_kakao_brain_unclip_to_diffusers.py`` is the key correspondence).
- decoder (``model.*``): a guided-diffusion U-Net (our guided-diffusion importer, head-major
  ``qkv`` and ``encoder_kv``: :func:`dalle2_fast.interop.guided_diffusion.openai_to_ours`) plus
  ``clip_emb`` (-> ``unet.cond_proj``), ``clip_tok_proj`` (-> ``unet.cond_to_tokens``, rows
  reordered: read channel-major), ``text_seq_proj`` (Linear then LayerNorm -> ``text_proj``),
  ``text_feat_proj`` (-> ``text_time``) and ``cf_param`` (-> ``null_image``).
- super-resolution (``model_first_steps.*``, ``model_last_step.*``): two attention-free
  guided-diffusion U-Nets (additive time embedding or AdaGN, read from the tensors), the second
  for the last step; the 64 px image is upsampled bicubic + antialias outside them.

Sampling as Karlo's own code does (which is not quite diffusers'): ``timestep_respacing``
through guided-diffusion's ``space_timesteps`` (our 'even' spacing), ancestral steps, the
prior's x0 clamped to [-10, 10] (its ``denoised_fn``; diffusers' scheduler uses 5), the
decoder's and upsampler's x0 clipped to [-1, 1]; defaults 25 / 25 / 7 steps, guidance 4 / 8.

Lightning files also hold non-tensor entries; a pickled global outside the weights-only
allow-list is refused with its name (:class:`~dalle2_fast.interop._io.UnsafeCheckpointError`).
Tensors outside the model's namespace (optimizer states, EMA copies under other prefixes) and
Karlo's non-weight buffers are ignored; an unknown tensor inside it is an error.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from dalle2_fast.checkpoint import CheckpointError
from dalle2_fast.diffusion import DiffusionConfig, SamplingConfig
from dalle2_fast.interop._io import Rule, Source, assign, convert, empty_model, same, torch_load
from dalle2_fast.interop.diffusers_unet import context_tokens_rows
from dalle2_fast.interop.guided_diffusion import _swap_head_part, openai_to_ours
from dalle2_fast.models.decoder import DecoderConfig, UnCLIPDecoder
from dalle2_fast.models.prior import DiffusionPrior, DiffusionPriorConfig
from dalle2_fast.models.unet import UNetConfig
from dalle2_fast.models.upsampler import UnCLIPUpsampler, UpsamplerConfig

# Karlo v1 alpha's published hyperparameters that the tensors do not show (configs named above)
KARLO = {
    "prior_heads": 32, "prior_x0_clamp": 10.0,
    "decoder": dict(image_size=64, num_res_blocks=3, attention_resolutions="32,16,8", num_head_channels=64,
                    cond_tokens=4, text_len=77),
    "sr": dict(image_size=256, low_res=64, num_res_blocks=3, channel_mult="1,2,3,4"),
    "defaults": dict(prior_steps=25, decoder_steps=25, upsampler_steps=7, prior_guidance=4.0, decoder_guidance=8.0),
}
FILES = {"prior": "prior-ckpt*.ckpt", "decoder": "decoder-ckpt*.ckpt", "sr": "improved-sr-ckpt*.ckpt",
         "stats": "*stats.th"}
_IGNORED = ("clip_mean", "clip_std", "causal_mask", "cf_token", "cf_mask")  # Karlo's non-weight buffers


def _cosine(mean_type: str, var_type: str) -> DiffusionConfig:
    return DiffusionConfig(schedule="cosine", num_timesteps=1000, mean_type=mean_type, var_type=var_type,
                           loss="hybrid" if var_type == "learned_range" else "simple")


def _model_state(path: Path, prefix: str, what: str) -> Source:
    """The tensors under ``prefix`` of a Lightning checkpoint, prefix stripped."""
    blob = torch_load(path, what)
    sd = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{what}: {path} holds no state dict (expected a Lightning checkpoint with "
                              f"'state_dict')")
    out = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)}
    if not out:
        raise CheckpointError(f"{what}: {path} has no tensors under {prefix!r} (is it the right Karlo file?)")
    return Source({k: v for k, v in out.items() if k.split(".")[-1] not in _IGNORED}, f"{path} ({prefix}*)")


def load_clip_stats(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean (D,), std (D,)) from ``ViT-L-14_stats.th`` (a pickled (mean, std) pair of tensors)."""
    stats = torch_load(Path(path), "Karlo CLIP statistics")
    if (not isinstance(stats, (tuple, list)) or len(stats) != 2
            or not all(isinstance(t, torch.Tensor) for t in stats)):
        raise CheckpointError(f"{path}: expected a (clip_mean, clip_std) pair of tensors")
    mean, std = (t.float().reshape(-1) for t in stats)
    if mean.shape != std.shape or bool((std <= 0).any()):
        raise CheckpointError(f"{path}: clip_mean {tuple(mean.shape)} / clip_std {tuple(std.shape)} must match and "
                              "std be > 0")
    return mean, std


def _plain(ours: str, theirs: str) -> dict[str, Rule]:
    return {f"{ours}.{s}": ((f"{theirs}.{s}",), same) for s in ("weight", "bias")}


def prior_from_karlo(ckpt: str | os.PathLike, stats: str | os.PathLike, heads: int = KARLO["prior_heads"],
                     dtype: torch.dtype = torch.float32) -> DiffusionPrior:
    """Our prior from Karlo's prior checkpoint and CLIP statistics (module docstring)."""
    src = _model_state(Path(ckpt), "model.", "Karlo prior")
    pos = src.state.get("positional_embedding")
    if pos is None or "clip_img_proj.weight" not in src:
        raise CheckpointError(f"{src.where}: missing tensor 'model.positional_embedding' or 'model.clip_img_proj' "
                              "(not a Karlo prior checkpoint)")
    width, text_len = pos.shape[-1], pos.shape[-2] - 4
    D = src.state["clip_img_proj.weight"].shape[1]
    layers = len({k.split(".")[2] for k in src.state if k.startswith("transformer.resblocks.")})
    if "final_ln.weight" not in src:
        raise CheckpointError(f"{src.where}: missing tensor 'model.final_ln.weight' (xf_final_ln=False priors are "
                              "not supported)")
    c = DiffusionPriorConfig(
        clip_dim=D, text_width=src.state["text_enc_proj.weight"].shape[1], text_len=text_len, width=width,
        layers=layers, heads=heads, cond_drop_prob=0.0, n_candidates=1, diffusion=_cosine("x0", "fixed_small"),
        embed_norm="mean_std", raw_embeddings=True, uncond="empty_prompt", x0_clamp=KARLO["prior_x0_clamp"],
        sampling=SamplingConfig(sampler="ddpm", spacing="even"))
    r: dict[str, Rule] = {}
    r.update(_plain("time_mlp.0", "time_embed.0"))
    r.update(_plain("time_mlp.2", "time_embed.2"))
    r.update(_plain("x_proj", "clip_img_proj"))
    r.update(_plain("text.emb_proj", "text_emb_proj"))
    r.update(_plain("text.tok_proj", "text_enc_proj"))
    r["transformer.pos"] = (("positional_embedding",), lambda t: t.reshape(t.shape[-2], t.shape[-1]))
    r["query"] = (("prd_emb",), lambda t: t.reshape(t.shape[-1]))
    for i in range(layers):
        o, t = f"transformer.blocks.{i}", f"transformer.resblocks.{i}"
        r.update(_plain(f"{o}.ln1", f"{t}.ln_1"))
        r.update(_plain(f"{o}.ln2", f"{t}.ln_2"))
        for s in ("weight", "bias"):  # [head][q|k|v][c] -> [q|k|v][head][c]
            r[f"{o}.attn.to_qkv.{s}"] = ((f"{t}.attn.c_qkv.{s}",), lambda w: _swap_head_part(w, heads, 3))
        r.update(_plain(f"{o}.attn.to_out", f"{t}.attn.c_proj"))
        r.update(_plain(f"{o}.mlp.0", f"{t}.mlp.c_fc"))
        r.update(_plain(f"{o}.mlp.2", f"{t}.mlp.c_proj"))
    r.update(_plain("transformer.ln", "final_ln"))
    r.update(_plain("out", "out_proj"))
    state = convert(src, r)
    src.check_all_used()
    mean, std = load_clip_stats(stats)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    state["clip_mean"], state["clip_std"] = mean, std
    names = {k: "model." + ", model.".join(v[0]) for k, v in r.items()}
    return assign(empty_model(lambda: DiffusionPrior(c)), state, src.where, names).eval()


def _unet_config(src: Source, flags: dict, who: str) -> UNetConfig:
    """Our UNetConfig from guided-diffusion flags (Karlo's published values, overridable); the
    width, channels, variance outputs and AdaGN-vs-additive time embedding read from the tensors."""
    for k in ("input_blocks.0.0.weight", "out.2.weight", "input_blocks.1.0.emb_layers.1.weight",
              "input_blocks.1.0.out_layers.3.weight"):
        if k not in src:
            raise CheckpointError(f"{src.where}: missing tensor {k!r} (not a guided-diffusion-layout U-Net)")
    st = src.state
    f = {"num_channels": st["input_blocks.0.0.weight"].shape[0],
         "use_scale_shift_norm": st["input_blocks.1.0.emb_layers.1.weight"].shape[0]
         == 2 * st["input_blocks.1.0.out_layers.3.weight"].shape[0],
         "resblock_updown": True, "use_new_attention_order": False, **flags}
    sd = {"input_blocks.0.0.weight": st["input_blocks.0.0.weight"], "out.2.weight": st["out.2.weight"]}
    from dalle2_fast.interop.guided_diffusion import unet_config_from_flags

    cfg, _ = unet_config_from_flags(f, sd, "guided")
    return cfg


def decoder_from_karlo(ckpt: str | os.PathLike, flags: dict | None = None, text_len: int = KARLO["decoder"]["text_len"],
                       dtype: torch.dtype = torch.float32) -> UnCLIPDecoder:
    """Our decoder from Karlo's decoder checkpoint (module docstring). ``flags``: guided-diffusion
    flags overriding Karlo's published ones (image_size 64, num_res_blocks 3, attention at
    32,16,8, 64 channels per head); ``text_len``: the CLIP context length (77)."""
    src = _model_state(Path(ckpt), "model.", "Karlo decoder")
    k = KARLO["decoder"]
    for key in ("clip_emb.weight", "clip_tok_proj.weight", "text_seq_proj.0.weight", "text_feat_proj.weight",
                "cf_param"):
        if key not in src:
            raise CheckpointError(f"{src.where}: missing tensor 'model.{key}' (not a Karlo decoder checkpoint)")
    D = src.state["clip_emb.weight"].shape[1]
    ctx, text_width = src.state["text_seq_proj.0.weight"].shape
    base = dict(image_size=k["image_size"], num_res_blocks=k["num_res_blocks"],
                attention_resolutions=k["attention_resolutions"], num_head_channels=k["num_head_channels"],
                learn_sigma=True)
    unet = _unet_config(src, {**base, **(flags or {})}, src.where)
    unet = unet.replace(cond_dim=D, context_dim=ctx, cond_tokens=k["cond_tokens"])
    c = DecoderConfig(unet=unet, diffusion=_cosine("eps", "learned_range" if unet.learn_sigma else "fixed_small"),
                      clip_dim=D, text_width=text_width, text_len=text_len, text_drop_prob=0.0,
                      text_proj_order="linear_norm", text_embed_to_time=True, null_image_embed="learned",
                      uncond="empty_prompt", raw_embeddings=True,
                      sampling=SamplingConfig(sampler="ddpm", clip="static", spacing="even"))
    r: dict[str, Rule] = {}
    r.update(_plain("text_proj.0", "text_seq_proj.0"))
    r.update(_plain("text_proj.1", "text_seq_proj.1"))
    r.update(_plain("text_time", "text_feat_proj"))
    r["null_image"] = (("cf_param",), same)
    state = convert(src, r)
    gd = {key: src.take(key) for key in list(src.state) if key not in src.taken}
    gd["cond_proj.weight"], gd["cond_proj.bias"] = gd.pop("clip_emb.weight"), gd.pop("clip_emb.bias")
    gd["cond_to_tokens.weight"] = context_tokens_rows(gd.pop("clip_tok_proj.weight"), k["cond_tokens"])
    gd["cond_to_tokens.bias"] = context_tokens_rows(gd.pop("clip_tok_proj.bias"), k["cond_tokens"])
    model = empty_model(lambda: UnCLIPDecoder(c))
    ours, names = openai_to_ours(model.unet, gd, new_order=False, who=src.where)
    state.update({f"unet.{key}": v for key, v in ours.items()})
    names = {**{f"unet.{a}": f"model.{b}" for a, b in names.items()},
             **{a: "model." + ", model.".join(b[0]) for a, b in r.items()}}
    return assign(model, state, src.where, names, dtype=dtype).eval()


def upsampler_from_karlo(ckpt: str | os.PathLike, flags: dict | None = None, low_res: int = KARLO["sr"]["low_res"],
                         dtype: torch.dtype = torch.float32) -> UnCLIPUpsampler:
    """Our 64 -> 256 upsampler (both networks) from Karlo's super-resolution checkpoint;
    ``flags`` override Karlo's published ones (image_size 256, channel_mult 1,2,3,4, 3 res blocks)."""
    k = KARLO["sr"]
    parts = {}
    for prefix in ("model_first_steps.", "model_last_step."):
        src = _model_state(Path(ckpt), prefix, "Karlo super-resolution")
        # their middle block is [res, res]; ours keeps the (removed) attention's slot: [res, -, res]
        src.state = {(key.replace("middle_block.1.", "middle_block.2.", 1) if key.startswith("middle_block.1.")
                      else key): v for key, v in src.state.items()}
        parts[prefix] = src
    first = parts["model_first_steps."]
    base = dict(image_size=k["image_size"], channel_mult=k["channel_mult"], num_res_blocks=k["num_res_blocks"],
                attention_resolutions="", learn_sigma=False)
    unet = _unet_config(first, {**base, **(flags or {})}, first.where)  # in_channels: x and the upsampled image
    if unet.in_channels % 2:
        raise CheckpointError(f"{first.where}: a super-resolution U-Net takes x and the upsampled image: even input "
                              f"channels expected, got {unet.in_channels}")
    unet = unet.replace(in_channels=unet.in_channels // 2, low_res_channels=unet.in_channels // 2)
    c = UpsamplerConfig(unet=unet, diffusion=_cosine("eps", "fixed_small"), low_res=low_res,
                        high_res=unet.image_size, low_res_upsample="bicubic_antialias", last_step_unet=True,
                        sampling=SamplingConfig(sampler="ddpm", clip="static", spacing="even"))
    model = empty_model(lambda: UnCLIPUpsampler(c))
    state, names = {}, {}
    for (prefix, src), (name, net) in zip(parts.items(), (("unet", model.unet), ("unet_last", model.unet_last))):
        gd = {key: src.take(key) for key in list(src.state)}
        ours, nm = openai_to_ours(net, gd, new_order=False, who=src.where)
        state.update({f"{name}.{key}": v for key, v in ours.items()})
        names.update({f"{name}.{a}": f"{prefix}{b}" for a, b in nm.items()})
    return assign(model, state, str(ckpt), names, dtype=dtype).eval()


def find_files(folder: str | os.PathLike) -> dict[str, Path]:
    """The four Karlo files in ``folder`` by their published names (one each)."""
    folder = Path(folder)
    out, problems = {}, []
    for key, pattern in FILES.items():
        hits = sorted(folder.glob(pattern))
        if len(hits) != 1:
            problems.append(f"{pattern!r}: {'none' if not hits else [h.name for h in hits]}")
        else:
            out[key] = hits[0]
    if problems:
        raise CheckpointError(f"Karlo checkpoints: {folder} must hold exactly one file for each of "
                              f"{list(FILES.values())}; found {'; '.join(problems)}")
    return out


def is_karlo_folder(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return folder.is_dir() and all(len(list(folder.glob(p))) == 1 for p in FILES.values())


def _text_encoder(folder: Path, given) -> "object":
    from dalle2_fast.interop.hf_clip_text import clip_from_transformers
    from dalle2_fast.models.clip import ClipAdapter

    path = Path(given) if given is not None else None
    if path is None:
        for cand in (folder / "text_encoder", folder / "ViT-L-14.pt"):
            if cand.exists():
                path = cand
                break
    if path is None:
        raise FileNotFoundError(f"Karlo checkpoints: no CLIP text encoder: pass text_encoder= (a transformers "
                                f"CLIPTextModelWithProjection folder of CLIP ViT-L/14, or an OpenAI / open_clip "
                                f"ViT-L/14 weights file), or put one at {folder / 'text_encoder'}")
    if path.is_dir() and (path / "config.json").is_file():
        return clip_from_transformers(path, path.parent / "tokenizer" if (path.parent / "tokenizer").is_dir()
                                      else None)
    # OpenAI's TorchScript archive or a state dict of ViT-L/14: OpenAI's weights, QuickGELU
    return ClipAdapter.from_pretrained(path, model_name="ViT-L-14", quick_gelu=True)


def pipeline_parts_from_karlo(folder: str | os.PathLike, text_encoder=None, dtype: torch.dtype = torch.float32,
                              overrides: dict | None = None) -> dict:
    """The stages of our pipeline from Karlo's four original files in ``folder`` and a CLIP
    ViT-L/14 text encoder (``text_encoder``: a transformers folder or an open_clip weights file;
    default ``folder/text_encoder/`` or ``folder/ViT-L-14.pt``). ``overrides``: for checkpoints of
    other sizes than v1 alpha, {'prior_heads': int, 'decoder': flags, 'sr': flags}."""
    folder = Path(folder)
    files = find_files(folder)
    o = overrides or {}
    unknown = sorted(set(o) - {"prior_heads", "decoder", "sr"})
    if unknown:
        raise ValueError(f"pipeline_parts_from_karlo: unknown overrides {unknown} (known: prior_heads, decoder, sr)")
    clip = _text_encoder(folder, text_encoder)
    prior = prior_from_karlo(files["prior"], files["stats"], heads=o.get("prior_heads", KARLO["prior_heads"]),
                             dtype=dtype)
    decoder = decoder_from_karlo(files["decoder"], flags=o.get("decoder"), text_len=clip.context_length, dtype=dtype)
    up = upsampler_from_karlo(files["sr"], flags=o.get("sr"), low_res=decoder.image_size, dtype=dtype)
    return {"clip": clip, "prior": prior, "decoder": decoder, "upsamplers": [up], "defaults": dict(KARLO["defaults"])}


__all__ = ["prior_from_karlo", "decoder_from_karlo", "upsampler_from_karlo", "pipeline_parts_from_karlo",
           "load_clip_stats", "find_files", "is_karlo_folder", "KARLO", "FILES"]
