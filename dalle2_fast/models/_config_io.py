"""Weights + typed config in one safetensors file: the config (a frozen dataclass) is stored
as JSON in the file's metadata, so loading needs only the file (no flags to match by hand)."""
from __future__ import annotations

import dataclasses
import json
import os

import torch
from safetensors.torch import load_file, safe_open, save_file


def save_with_config(model: torch.nn.Module, path) -> None:
    """Write ``model.state_dict()`` and ``model.config`` to the safetensors file ``path``."""
    cfg = model.config
    meta = {"config_class": type(cfg).__name__, "config": json.dumps(dataclasses.asdict(cfg))}
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(sd, os.fspath(path), metadata=meta)


def load_with_config(path, model_cls, config_cls, map_location: str = "cpu"):
    """Rebuild ``model_cls(config_cls(**stored config))`` from ``path`` and load its weights
    strictly (missing / unexpected / mis-shaped tensors raise, naming them)."""
    path = os.fspath(path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("config_class") != config_cls.__name__:
        raise ValueError(
            f"{model_cls.__name__}.load: {path} holds a {meta.get('config_class')!r} config, "
            f"expected {config_cls.__name__!r}"
        )
    model = model_cls(config_cls(**json.loads(meta["config"])))
    sd = load_file(path, device=map_location)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    bad = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or bad:
        raise ValueError(f"{model_cls.__name__}.load: {path}: missing {missing}, unexpected {unexpected}, "
                         f"mis-shaped {bad}")
    model.load_state_dict(sd, strict=True)
    return model.to(map_location)
