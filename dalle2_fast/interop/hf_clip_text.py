"""transformers' ``CLIPTextModelWithProjection`` (the ``text_encoder/`` of Karlo, Kandinsky and
Stable unCLIP folders) -> our :class:`~dalle2_fast.models.clip.ClipAdapter`, text tower only.

The text transformer is OpenAI CLIP's, so it becomes an open_clip text tower (what every
``ClipAdapter`` holds): ``hidden_act='quick_gelu'`` (OpenAI's weights) sets open_clip's
``quick_gelu``, 'gelu' leaves it off, anything else is refused. Tensor transforms: the separate
``q_proj`` / ``k_proj`` / ``v_proj`` stacked into ``nn.MultiheadAttention``'s ``in_proj``, and
``text_projection.weight`` (D, W) transposed into open_clip's ``text_projection`` (W, D); the
rest is a rename. The adapter is ``text_only`` (no image tower is built; ``encode_image``
raises); open_clip's ``logit_scale``, absent from a text encoder, keeps its initial value
log(1 / 0.07) (it only scales a training loss).

The tokenizer: ``tokenizer/vocab.json`` must be OpenAI CLIP's BPE vocabulary, the one
open_clip's ``SimpleTokenizer`` derives from its merges (checked entry by entry); tokens then
match transformers' ``CLIPTokenizer`` (start token, BPE, end token, truncation keeping the end
token). Padding differs (theirs pads with '!' or the end token, ours with 0) only after the
end token, which is masked everywhere it is read.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from dalle2_fast.checkpoint import CheckpointError
from dalle2_fast.interop._io import Rule, Source, assign, cat0, component_weights, convert, read_json, same
from dalle2_fast.models.clip import ClipAdapter, ClipConfig

_ACTS = {"quick_gelu": True, "gelu": False}
# a minimal image tower: open_clip builds one, the text-only adapter replaces it
_NO_VISION = {"image_size": 8, "layers": 1, "width": 32, "head_width": 32, "patch_size": 8}


def open_clip_config(cfg: dict, who: str) -> dict:
    """open_clip's ``model_cfg`` for a transformers CLIP text config (``text_config`` of a full
    CLIPConfig is accepted too)."""
    t = cfg.get("text_config", cfg)
    act = t.get("hidden_act", "quick_gelu")
    if act not in _ACTS:
        raise CheckpointError(f"{who}: hidden_act={act!r} is not supported (supported: {list(_ACTS)}; OpenAI's "
                              "weights use quick_gelu)")
    if abs(float(t.get("layer_norm_eps", 1e-5)) - 1e-5) > 1e-12:
        raise CheckpointError(f"{who}: layer_norm_eps={t['layer_norm_eps']} (only 1e-5, open_clip's)")
    width, inter = int(t["hidden_size"]), int(t["intermediate_size"])
    proj = cfg.get("projection_dim", t.get("projection_dim"))
    if proj is None:
        raise CheckpointError(f"{who}: no projection_dim: a CLIPTextModelWithProjection is needed (the pooled "
                              "embedding z_t is projected)")
    return {"embed_dim": int(proj), "quick_gelu": _ACTS[act], "vision_cfg": dict(_NO_VISION),
            "text_cfg": {"context_length": int(t.get("max_position_embeddings", 77)),
                         "vocab_size": int(t.get("vocab_size", 49408)), "width": width,
                         "heads": int(t["num_attention_heads"]), "layers": int(t["num_hidden_layers"]),
                         "mlp_ratio": inter / width}}


def text_rules(layers: int) -> dict[str, Rule]:
    """open_clip key -> (transformers keys, transform)."""
    p = "text_model."
    r: dict[str, Rule] = {
        "token_embedding.weight": ((f"{p}embeddings.token_embedding.weight",), same),
        "positional_embedding": ((f"{p}embeddings.position_embedding.weight",), same),
        "ln_final.weight": ((f"{p}final_layer_norm.weight",), same),
        "ln_final.bias": ((f"{p}final_layer_norm.bias",), same),
        "text_projection": (("text_projection.weight",), lambda w: w.t()),
    }
    for i in range(layers):
        o, t = f"transformer.resblocks.{i}.", f"{p}encoder.layers.{i}."
        for s in ("weight", "bias"):
            r[f"{o}attn.in_proj_{s}"] = (tuple(f"{t}self_attn.{q}_proj.{s}" for q in "qkv"), cat0)
            r[f"{o}attn.out_proj.{s}"] = ((f"{t}self_attn.out_proj.{s}",), same)
            for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"),
                         ("mlp.c_proj", "mlp.fc2")):
                r[f"{o}{a}.{s}"] = ((f"{t}{b}.{s}",), same)
    return r


def check_tokenizer(folder: Path, context_length: int, who: str) -> None:
    """``tokenizer/`` must hold OpenAI CLIP's BPE vocabulary (``vocab.json``, or the ``model.vocab``
    of a ``tokenizer.json``) and the model's context length."""
    vocab_file = folder / "vocab.json"
    if vocab_file.is_file():
        theirs = json.loads(vocab_file.read_text(encoding="utf-8"))
    elif (folder / "tokenizer.json").is_file():
        vocab_file = folder / "tokenizer.json"
        theirs = json.loads(vocab_file.read_text(encoding="utf-8")).get("model", {}).get("vocab")
        if not isinstance(theirs, dict):
            raise CheckpointError(f"{who}: {vocab_file} has no BPE vocabulary (model.vocab)")
    else:
        raise FileNotFoundError(f"{who}: {folder} holds no vocab.json or tokenizer.json (a transformers "
                                "CLIPTokenizer folder)")
    from open_clip.tokenizer import SimpleTokenizer

    ours = SimpleTokenizer().encoder
    special = {"<|startoftext|>": "<start_of_text>", "<|endoftext|>": "<end_of_text>"}
    bad = [k for k, v in theirs.items() if ours.get(special.get(k, k)) != v]
    if bad or len(theirs) != len(ours):
        raise CheckpointError(f"{who}: {vocab_file} is not OpenAI CLIP's BPE vocabulary ({len(theirs)} entries, "
                              f"{len(bad)} differ from open_clip's, e.g. {bad[:3]}): this importer tokenizes with "
                              "open_clip's SimpleTokenizer")
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        n = read_json(tc, who).get("model_max_length")
        if isinstance(n, int) and n < 10**6 and n != context_length:
            raise CheckpointError(f"{who}: tokenizer model_max_length {n} != the text encoder's context length "
                                  f"{context_length}")


def clip_from_transformers(text_encoder: str | os.PathLike, tokenizer: str | os.PathLike | None = None,
                           dtype: torch.dtype = torch.float32) -> ClipAdapter:
    """A text-only :class:`ClipAdapter` from a ``CLIPTextModelWithProjection`` folder
    (``config.json`` + weights) and its ``CLIPTokenizer`` folder (default: ``tokenizer/`` beside it)."""
    folder = Path(text_encoder)
    who = f"ClipAdapter.from_transformers({folder})"
    cfg = read_json(folder / "config.json", who)
    arch = cfg.get("architectures") or ["CLIPTextModelWithProjection"]
    if not any(a in ("CLIPTextModelWithProjection", "CLIPModel") for a in arch):
        raise CheckpointError(f"{who}: expected a CLIPTextModelWithProjection, got architectures {arch}")
    model_cfg = open_clip_config(cfg, who)
    tok_dir = Path(tokenizer) if tokenizer is not None else folder.parent / "tokenizer"
    check_tokenizer(tok_dir, model_cfg["text_cfg"]["context_length"], who)
    src = Source(component_weights(folder, who), who)
    rules = text_rules(model_cfg["text_cfg"]["layers"])
    state = convert(src, rules)
    src.check_all_used(ignore=[k for k in src.state if k.endswith("position_ids")])
    full = {"model_cfg": model_cfg, "preprocess_cfg": {}}
    config = ClipConfig(model_name="openai-clip-text (transformers)", open_clip=json.dumps(full), text_only=True)
    adapter = ClipAdapter(config)  # open_clip moves what it builds: no meta-device construction here
    state["logit_scale"] = torch.tensor(math.log(1 / 0.07))  # open_clip's initial value (not in a text encoder)
    own = adapter.model.state_dict()
    state = {k: v.to(dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    for k in own:
        if k not in state and not own[k].is_floating_point():
            state[k] = own[k]
    names = {k: ", ".join(v[0]) for k, v in rules.items()}
    assign(adapter.model, state, who, names, dtype=dtype)
    return adapter.eval()


__all__ = ["clip_from_transformers", "open_clip_config", "text_rules", "check_tokenizer"]
