"""diffusers' ``PriorTransformer`` (Karlo, Kandinsky 2.1 at 768, Kandinsky 2.2 at 1280, Stable
unCLIP's prior) -> our :class:`~dalle2_fast.models.prior.DiffusionPrior`.

The networks are the same (a causal pre-LN transformer over [text tokens, z_t, time, noised z_i,
query]); the importer maps the config options to ours (``norm_in_type`` -> ``input_norm``,
``embedding_proj_norm_type`` -> ``embed_proj_norm``, ``time_embed_dim`` / ``time_embed_act_fn``,
``added_emb_type='prd'`` -> ``query_token``), renames the tensors (table below; the separate
``to_q`` / ``to_k`` / ``to_v`` rows stacked into our fused ``to_qkv``), and sets the
conventions their pipelines use: ``clip_mean`` / ``clip_std`` per-dimension normalisation
(``embed_norm='mean_std'``), raw CLIP embeddings in and out, the empty prompt as the
unconditional branch, one candidate, and the scheduler's process, clamp and spacing
(:mod:`dalle2_fast.interop.diffusers_schedulers`).

Accepted folders: a ``PriorTransformer`` folder (``config.json`` with that ``_class_name`` +
weights), or a pipeline folder whose ``model_index.json`` names a ``prior`` (its scheduler from
``prior_scheduler/`` or ``scheduler/``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from dalle2_fast.checkpoint import CheckpointError
from dalle2_fast.interop._io import (Rule, Source, assign, cat0, component_weights, convert, empty_model, read_json,
                                     same)
from dalle2_fast.interop.diffusers_schedulers import scheduler_conventions
from dalle2_fast.models.prior import DiffusionPrior, DiffusionPriorConfig


def _opt(cfg: dict, key: str, allowed: tuple, who: str):
    v = cfg.get(key)
    if v not in allowed:
        raise CheckpointError(f"{who}: config {key}={v!r} is not supported (supported: {list(allowed)})")
    return v


def prior_config(cfg: dict, scheduler: dict | None, who: str) -> DiffusionPriorConfig:
    """Our config for a ``PriorTransformer`` config dict and its scheduler config (None: Karlo's
    published prior scheduler: UnCLIPScheduler, x0, fixed_small_log, clip_sample_range 5)."""
    heads, dh = int(cfg.get("num_attention_heads", 32)), int(cfg.get("attention_head_dim", 64))
    D = int(cfg.get("embedding_dim", 768))
    for k in ("embedding_proj_dim", "clip_embed_dim"):
        if cfg.get(k) not in (None, D):
            raise CheckpointError(f"{who}: {k}={cfg[k]} differs from embedding_dim={D} (a Shap-E-style prior), "
                                  "which is not supported")
    _opt(cfg, "encoder_hid_proj_type", ("linear",), who)
    added = _opt(cfg, "added_emb_type", ("prd", None), who) if "added_emb_type" in cfg else "prd"
    extra = int(cfg.get("additional_embeddings", 4))
    if extra != 3 + (added == "prd"):
        raise CheckpointError(f"{who}: additional_embeddings={extra} with added_emb_type={added!r}: expected "
                              f"{3 + (added == 'prd')} (z_t, time, z_i{', query' if added == 'prd' else ''})")
    if scheduler is None:
        scheduler = {"_class_name": "UnCLIPScheduler", "variance_type": "fixed_small_log", "prediction_type": "sample",
                     "num_train_timesteps": 1000, "clip_sample_range": 5.0}
    diffusion, sampling, clip_range = scheduler_conventions(scheduler, f"{who} scheduler")
    if diffusion.mean_type != "x0" or diffusion.var_type == "learned_range":
        raise CheckpointError(f"{who}: a prior's scheduler must predict the sample (x0) with a fixed variance, got "
                              f"{diffusion.mean_type} / {diffusion.var_type}")
    return DiffusionPriorConfig(
        clip_dim=D, text_width=D, text_len=int(cfg.get("num_embeddings", 77)), width=heads * dh,
        layers=int(cfg.get("num_layers", 20)), heads=heads, cond_drop_prob=0.0, n_candidates=1, diffusion=diffusion,
        time_embed_dim=cfg.get("time_embed_dim"),
        time_act=_opt(cfg, "time_embed_act_fn", ("silu", "gelu"), who) if "time_embed_act_fn" in cfg else "silu",
        input_norm=_opt(cfg, "norm_in_type", ("layer", None), who) == "layer",
        embed_proj_norm=_opt(cfg, "embedding_proj_norm_type", ("layer", None), who) == "layer",
        query_token=added == "prd", embed_norm="mean_std", raw_embeddings=True, uncond="empty_prompt",
        x0_clamp=clip_range, sampling=sampling)


def _plain(ours: str, theirs: str) -> dict[str, Rule]:
    return {f"{ours}.{s}": ((f"{theirs}.{s}",), same) for s in ("weight", "bias")}


def prior_rules(c: DiffusionPriorConfig) -> dict[str, Rule]:
    """Our key -> (their keys, transform) for a DiffusionPrior with config ``c``."""
    r: dict[str, Rule] = {}
    r.update(_plain("time_mlp.0", "time_embedding.linear_1"))
    r.update(_plain("time_mlp.2", "time_embedding.linear_2"))
    r.update(_plain("x_proj", "proj_in"))
    r.update(_plain("text.emb_proj", "embedding_proj"))
    r.update(_plain("text.tok_proj", "encoder_hidden_states_proj"))
    if c.embed_proj_norm:
        r.update(_plain("text.emb_norm", "embedding_proj_norm"))
    r["transformer.pos"] = (("positional_embedding",), lambda t: t.reshape(t.shape[-2], t.shape[-1]))
    if c.query_token:
        r["query"] = (("prd_embedding",), lambda t: t.reshape(t.shape[-1]))
    if c.input_norm:
        r.update(_plain("transformer.ln_in", "norm_in"))
    for i in range(c.layers):
        o, t = f"transformer.blocks.{i}", f"transformer_blocks.{i}"
        r.update(_plain(f"{o}.ln1", f"{t}.norm1"))
        r.update(_plain(f"{o}.ln2", f"{t}.norm3"))
        for s in ("weight", "bias"):
            r[f"{o}.attn.to_qkv.{s}"] = (tuple(f"{t}.attn1.to_{p}.{s}" for p in "qkv"), cat0)
        r.update(_plain(f"{o}.attn.to_out", f"{t}.attn1.to_out.0"))
        r.update(_plain(f"{o}.mlp.0", f"{t}.ff.net.0.proj"))
        r.update(_plain(f"{o}.mlp.2", f"{t}.ff.net.2"))
    r.update(_plain("transformer.ln", "norm_out"))
    r.update(_plain("out", "proj_to_clip_embeddings"))
    r["clip_mean"] = (("clip_mean",), lambda t: t.reshape(t.shape[-1]))
    r["clip_std"] = (("clip_std",), lambda t: t.reshape(t.shape[-1]))
    return r


def build_prior(c: DiffusionPriorConfig, src: Source, where: str, dtype: torch.dtype) -> DiffusionPrior:
    """Our prior with config ``c`` filled from diffusers-named tensors in ``src`` (strict)."""
    rules = prior_rules(c)
    state = convert(src, rules)
    src.check_all_used()
    std = state["clip_std"].float()
    if not bool(torch.isfinite(std).all()) or bool((std <= 0).any()):
        raise CheckpointError(f"{where}: clip_std must be finite and > 0 (it divides the embeddings), got min "
                              f"{float(std.min()):.3g}")
    model = empty_model(lambda: DiffusionPrior(c))
    names = {k: ", ".join(v[0]) for k, v in rules.items()}
    stats = ("clip_mean", "clip_std")  # statistics stay float32
    state = {k: v.float() if k in stats else v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return assign(model, state, where, names).eval()


def _scheduler_of(root: Path) -> dict | None:
    for sub in ("prior_scheduler", "scheduler"):
        f = root / sub / "scheduler_config.json"
        if f.is_file():
            return read_json(f, "DiffusionPrior.from_diffusers")
    return None


def prior_folder(path: Path) -> tuple[Path, dict | None]:
    """(the PriorTransformer folder, its scheduler config or None) of a prior or pipeline folder."""
    who = "DiffusionPrior.from_diffusers"
    if not path.is_dir():
        raise FileNotFoundError(f"{who}: {path} is not a directory")
    if (path / "model_index.json").is_file():
        index = read_json(path / "model_index.json", who)
        if "prior" not in index or not (path / "prior").is_dir():
            raise CheckpointError(f"{who}: {path}/model_index.json names no 'prior' component (expected a pipeline "
                                  "folder with prior/ and prior_scheduler/ or scheduler/)")
        return path / "prior", _scheduler_of(path)
    cfg = path / "config.json"
    if cfg.is_file() and read_json(cfg, who).get("_class_name") == "PriorTransformer":
        return path, _scheduler_of(path.parent)
    raise CheckpointError(f"{who}: {path} is neither a PriorTransformer folder (config.json with _class_name "
                          "'PriorTransformer' + weights) nor a pipeline folder (model_index.json + prior/)")


def prior_from_diffusers(path: str | os.PathLike, scheduler: dict | None = None,
                         dtype: torch.dtype = torch.float32) -> DiffusionPrior:
    """Load a diffusers PriorTransformer (see the module docstring). ``scheduler``: a scheduler
    config dict overriding the one found next to it; ``dtype``: the weights' dtype (the
    ``clip_mean`` / ``clip_std`` statistics stay float32)."""
    folder, found = prior_folder(Path(path))
    cfg = read_json(folder / "config.json", "DiffusionPrior.from_diffusers")
    if cfg.get("_class_name", "PriorTransformer") != "PriorTransformer":
        raise CheckpointError(f"{folder}/config.json: expected a PriorTransformer, got {cfg.get('_class_name')!r}")
    c = prior_config(cfg, scheduler if scheduler is not None else found, str(folder))
    src = Source(component_weights(folder, str(folder)), str(folder))
    return build_prior(c, src, str(folder), dtype)


__all__ = ["prior_config", "prior_rules", "build_prior", "prior_from_diffusers", "prior_folder"]
