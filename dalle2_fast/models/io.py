"""Single-file module checkpoints: weights in safetensors, the typed config in its metadata.

``save_module(m, path)`` needs ``m.config`` to be a dataclass; ``load_module(path)`` rebuilds the
module from the file alone (class path + config JSON in the header) and loads the weights strictly.
Only classes inside ``dalle2_fast`` are constructed. (A stop-gap for the unCLIP stages until the
package-wide ``dalle2_fast.checkpoint`` format lands; the file layout is plain safetensors.)
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import typing
from pathlib import Path

import torch
from torch import nn


def save_module(module: nn.Module, path: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    cfg = getattr(module, "config", None)
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"save_module: {type(module).__name__}.config must be a dataclass, got {type(cfg).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"class": f"{type(module).__module__}:{type(module).__qualname__}",
            "config_class": f"{type(cfg).__module__}:{type(cfg).__qualname__}",
            "config": json.dumps(dataclasses.asdict(cfg))}
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def _resolve(qual: str):
    mod, _, name = qual.partition(":")
    if not mod.startswith("dalle2_fast."):
        raise ValueError(f"load_module: refusing to build {qual!r} (only dalle2_fast classes)")
    obj = importlib.import_module(mod)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _build_config(cfg_cls, raw: dict):
    """cfg_cls(**raw), rebuilding nested dataclass fields (e.g. a UNetConfig inside) from dicts."""
    hints = typing.get_type_hints(cfg_cls)
    kw = {}
    for f in dataclasses.fields(cfg_cls):
        if f.name not in raw:
            continue
        v, tp = raw[f.name], hints.get(f.name)
        kw[f.name] = _build_config(tp, v) if dataclasses.is_dataclass(tp) and isinstance(v, dict) else v
    return cfg_cls(**kw)


def load_module(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_module: no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # truncated or not safetensors
        raise ValueError(f"load_module: {path} is not a readable safetensors file ({e})") from e
    missing = [k for k in ("class", "config_class", "config") if k not in meta]
    if missing:
        raise ValueError(f"load_module: {path} lacks metadata {missing} (not written by save_module)")
    cfg_cls, cls = _resolve(meta["config_class"]), _resolve(meta["class"])
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    raw = json.loads(meta["config"])
    unknown, absent = sorted(set(raw) - fields), sorted(fields - set(raw))
    if unknown or absent:
        raise ValueError(f"load_module: {path} config does not match {cfg_cls.__name__}: unknown fields {unknown}, "
                         f"missing fields {absent}")
    module = cls(_build_config(cfg_cls, raw))
    res = module.load_state_dict(load_file(str(path)), strict=False)
    if res.missing_keys or res.unexpected_keys:
        raise ValueError(f"load_module: {path} does not match {cls.__name__}: missing {res.missing_keys[:5]}, "
                         f"unexpected {res.unexpected_keys[:5]}")
    return module.to(device).eval()
