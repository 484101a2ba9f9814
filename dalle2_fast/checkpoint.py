"""Checkpoints: a directory holding ``model.safetensors`` + ``config.json`` (or one
``.safetensors`` file with the config in its metadata). ``from_pretrained(path)`` needs nothing
else: the JSON names the model type and holds its typed dataclass config. Every file is written
atomically (temp file in the same directory, fsync, rename), so a crash never leaves a half-
written checkpoint under the final name.

Training state for exact ``--resume`` lives in ``<run>/checkpoints/step_XXXXXXXX/``: the model,
``optim.pt`` (optimizer states, torch RNG states), ``state.json`` (step, data position,
extras) and, when training keeps one, ``ema.safetensors`` (the state of a
``torch.optim.swa_utils.AveragedModel``: the averaged weights and ``n_averaged``); the last N
are kept.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import typing
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1
MODEL_REGISTRY: dict[str, type] = {}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, or does not match the model it is loaded into."""


def register_model(name: str):
    """Class decorator: makes ``name`` loadable by ``load_pretrained``; the class needs a
    ``config_class`` attribute (a dataclass) and an ``__init__(config)``."""
    def deco(cls):
        if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not cls:
            raise ValueError(f"register_model: {name!r} already registered to {MODEL_REGISTRY[name].__name__}")
        cls.model_type = name
        MODEL_REGISTRY[name] = cls
        return cls
    return deco


# ----------------------------------------------------------------------------- configs
def config_to_dict(cfg) -> dict:
    if not dataclasses.is_dataclass(cfg):
        raise TypeError(f"config_to_dict: expected a dataclass instance, got {type(cfg).__name__}")
    return dataclasses.asdict(cfg)


def config_from_dict(cls, d: dict):
    """Build dataclass ``cls`` from ``d``; unknown keys or wrongly typed values raise (configs
    never silently revert to defaults); missing keys take the field defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise CheckpointError(f"{cls.__name__}: unknown config keys {unknown}; known: {sorted(names)}")
    kw = {}
    for k, v in d.items():
        t = hints[k]
        origin = typing.get_origin(t)
        if dataclasses.is_dataclass(t) and isinstance(v, dict):
            v = config_from_dict(t, v)
        if origin is tuple and isinstance(v, list):
            v = tuple(v)
        if t is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if t in (int, float, str, bool) and not (type(v) is t):
            raise CheckpointError(f"{cls.__name__}.{k}: expected {t.__name__}, got {type(v).__name__} {v!r}")
        kw[k] = v
    return cls(**kw)


# ----------------------------------------------------------------------------- atomic files
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)``, fsync the temp file, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: Path(p).write_text(text))


# ----------------------------------------------------------------------------- weights
def _state_for_save(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def check_safetensors(path: Path) -> None:
    """Raise CheckpointError if ``path`` is not a complete safetensors file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        raw = f.read(n)
    if len(raw) < n:
        raise CheckpointError(f"{path}: truncated safetensors file (header says {n} bytes, file has {size})")
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if size < 8 + n + end:
        raise CheckpointError(f"{path}: truncated safetensors file: expected {8 + n + end} bytes, found {size}")


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model``; missing, unexpected or mis-shaped tensors raise one
    CheckpointError that lists them all."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        msg = [f"{where}: checkpoint does not match {type(model).__name__}"]
        if missing:
            msg.append(f"missing tensors ({len(missing)}): {missing[:10]}")
        if unexpected:
            msg.append(f"unexpected tensors ({len(unexpected)}): {unexpected[:10]}")
        if shapes:
            msg.append(f"mis-shaped tensors ({len(shapes)}): {shapes[:10]}")
        raise CheckpointError("; ".join(msg))
    model.load_state_dict(state, strict=True)


def save_pretrained(model: torch.nn.Module, path: str | Path) -> Path:
    """Write ``model`` (which has ``.config`` and a registered ``model_type``) to ``path``: a
    directory, or a single file when ``path`` ends in ``.safetensors``."""
    path = Path(path)
    mtype = getattr(model, "model_type", None)
    if mtype is None or mtype not in MODEL_REGISTRY:
        raise TypeError(f"save_pretrained: {type(model).__name__} is not a registered model (use @register_model)")
    meta = {"model_type": mtype, "format_version": FORMAT_VERSION, "config": config_to_dict(model.config)}
    state = _state_for_save(model)
    if path.suffix == ".safetensors":
        atomic_write(path, lambda p: save_file(state, str(p), metadata={"dalle2_fast": json.dumps(meta)}))
        return path
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / "model.safetensors", lambda p: save_file(state, str(p), metadata={"model_type": mtype}))
    atomic_write_text(path / "config.json", json.dumps(meta, indent=2) + "\n")
    return path


def read_config(path: str | Path) -> dict:
    """The checkpoint's {'model_type', 'format_version', 'config'} record."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_file():
        check_safetensors(path)
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            md = f.metadata() or {}
        if "dalle2_fast" not in md:
            raise CheckpointError(f"{path}: no 'dalle2_fast' metadata (model type and config) in this file")
        return json.loads(md["dalle2_fast"])
    cfg = path / "config.json"
    if not cfg.exists():
        raise CheckpointError(f"{path}: missing config.json (a checkpoint directory holds config.json + model.safetensors)")
    try:
        rec = json.loads(cfg.read_text())
    except ValueError as e:
        raise CheckpointError(f"{cfg}: not valid JSON ({e}); truncated?") from None
    for k in ("model_type", "config"):
        if k not in rec:
            raise CheckpointError(f"{cfg}: missing key {k!r}")
    return rec


def load_pretrained(path: str | Path, expected_cls: type | None = None, map_location: str | torch.device = "cpu"):
    """Rebuild the model saved at ``path`` from its own config and weights."""
    import dalle2_fast.models  # noqa: F401  (fills MODEL_REGISTRY)

    path = Path(path)
    rec = read_config(path)
    if rec.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {rec['format_version']} is newer than this package's {FORMAT_VERSION}")
    cls = MODEL_REGISTRY.get(rec["model_type"])
    if cls is None:
        raise CheckpointError(f"{path}: unknown model_type {rec['model_type']!r}; known: {sorted(MODEL_REGISTRY)}")
    if expected_cls is not None and not issubclass(cls, expected_cls):
        raise CheckpointError(f"{path}: holds a {cls.__name__} ({rec['model_type']}), not a {expected_cls.__name__}")
    raw = rec["config"]
    if hasattr(cls, "_upgrade_config"):  # older config layouts of this model type, converted on load
        raw = cls._upgrade_config(dict(raw))
    config = config_from_dict(cls.config_class, raw)
    model = cls(config)
    wfile = path if path.is_file() else path / "model.safetensors"
    if not wfile.exists():
        raise CheckpointError(f"{path}: missing model.safetensors")
    check_safetensors(wfile)
    state = load_file(str(wfile))
    if hasattr(cls, "_upgrade_state_dict"):  # older state-dict layouts (renamed keys), converted on load
        state = cls._upgrade_state_dict(state, config)
    load_state_strict(model, state, str(wfile))
    return model.to(map_location)


class Pretrained:
    """Mixin for registered models: ``model.save_pretrained(path)``, ``Cls.from_pretrained(path)``.

    A class whose config or state-dict layout changed may define ``_upgrade_config(dict) -> dict``
    and ``_upgrade_state_dict(state, config) -> state`` (classmethods): ``load_pretrained`` applies
    them to what it read, so checkpoints written by earlier versions keep loading."""

    def save_pretrained(self, path: str | Path) -> Path:
        return save_pretrained(self, path)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu"):
        return load_pretrained(path, expected_cls=cls, map_location=map_location)


# ----------------------------------------------------------------------------- training state
def save_training_state(run_dir: str | Path, step: int, model: torch.nn.Module,
                        optimizers: dict[str, torch.optim.Optimizer], data_position: int,
                        extra: dict | None = None, keep_last: int = 3, ema: torch.nn.Module | None = None) -> Path:
    """Write ``<run_dir>/checkpoints/step_XXXXXXXX`` atomically (temp dir, then rename) and
    delete all but the newest ``keep_last``. ``ema``: an averaged copy of the model
    (``AveragedModel``), saved whole as ``ema.safetensors``."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_pretrained(model, tmp)
    if ema is not None:
        state = _state_for_save(ema)
        atomic_write(tmp / "ema.safetensors", lambda p: save_file(state, str(p)))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizers": {k: o.state_dict() for k, o in optimizers.items()}, "rng": rng}, tmp / "optim.pt")
    with open(tmp / "optim.pt", "rb+") as f:
        os.fsync(f.fileno())
    atomic_write_text(tmp / "state.json", json.dumps({"step": step, "data_position": data_position,
                                                      "extra": extra or {}}, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in sorted(root.glob("step_*"))[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_training_state(run_dir: str | Path) -> Path | None:
    steps = sorted((Path(run_dir) / "checkpoints").glob("step_*"))
    return steps[-1] if steps else None


def load_training_state(path: str | Path, model: torch.nn.Module,
                        optimizers: dict[str, torch.optim.Optimizer], ema: torch.nn.Module | None = None) -> dict:
    """Restore weights, optimizer states, RNG states and (``ema`` given) the averaged model;
    returns {'step', 'data_position', 'extra'}."""
    path = Path(path)
    if ema is not None and not (path / "ema.safetensors").exists():
        raise CheckpointError(f"{path}: no EMA weights (ema.safetensors) in this checkpoint: "
                              f"it was written by a run without an EMA of the weights (--ema 0)")
    for f in ("state.json", "optim.pt", "model.safetensors"):
        if not (path / f).exists():
            raise CheckpointError(f"{path}: incomplete training checkpoint, missing {f}")
    check_safetensors(path / "model.safetensors")
    load_state_strict(model, load_file(str(path / "model.safetensors")), str(path))
    if ema is not None:
        check_safetensors(path / "ema.safetensors")
        load_state_strict(ema, load_file(str(path / "ema.safetensors")), str(path / "ema.safetensors"))
    blob = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
    missing = sorted(set(optimizers) - set(blob["optimizers"]))
    if missing:
        raise CheckpointError(f"{path}: no optimizer state for {missing}")
    for k, o in optimizers.items():
        o.load_state_dict(blob["optimizers"][k])
    torch.set_rng_state(blob["rng"]["torch"])
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    return json.loads((path / "state.json").read_text())
