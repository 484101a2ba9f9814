"""Checkpoints: a directory holding ``model.safetensors`` + ``config.json`` (or one
``.safetensors`` file with the config in its metadata). ``from_pretrained(path)`` needs nothing
else: the JSON names the model type and holds its typed dataclass config. Every file is written
atomically (temp file in the same directory, fsync, rename), so a crash never leaves a half-
written checkpoint under the final name.

Training state for exact ``--resume`` lives in ``<run>/checkpoints/step_XXXXXXXX/``: the model,
``optim.pt`` (optimizer states, torch RNG states), ``state.json`` (step, data position,
extras) and, when training keeps one, ``ema.safetensors`` (the state of a
``torch.optim.swa_utils.AveragedModel``: the averaged weights and ``n_averaged``); the last N
are kept. ``load_latest_training_state`` resumes from the newest intact one, warning about
(and skipping) newer ones that cannot be read.

Every file is read through ``dalle2_fast.files`` (format sniffing, bounded headers, typed config
validation): whatever is wrong with a file, the error is a one-line ``CheckpointError`` naming
it. ``docs/reliability.md`` lists what is checked where.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file

from dalle2_fast.files import (CheckpointError, build_config, check_value, load_safetensors, parse_json_object,
                               read_json_object, read_safetensors_header, sniff)
from dalle2_fast.files import config_from_dict  # noqa: F401  (re-exported: the public name since v1)
from dalle2_fast.files.formats import check_tensors, describe, one_line

FORMAT_VERSION = 1
MODEL_REGISTRY: dict[str, type] = {}


class CheckpointMismatch(CheckpointError):
    """An intact training checkpoint that does not fit the caller (no EMA where one is kept, no
    state for a named optimizer): resume refuses at once instead of falling back, since an older
    checkpoint of the same run would not fit either, and since under DDP only rank 0 passes an
    EMA, falling back on it would let ranks resume from different steps."""


class CheckpointWarning(UserWarning):
    """A training checkpoint was skipped because it cannot be read (resume fell back to an older one)."""


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
    """Raise CheckpointError unless ``path`` is a complete, well-formed safetensors file."""
    read_safetensors_header(path)


def load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into ``model``; missing, unexpected or mis-shaped tensors raise one
    CheckpointError that lists them all."""
    own = {k: v.shape for k, v in model.state_dict().items()}
    check_tensors(where, type(model).__name__, own, {k: v.shape for k, v in state.items()})
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as e:  # e.g. a dtype that cannot be copied
        raise CheckpointError(f"{where}: {one_line(e)}") from None


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


def _config_file(path: Path) -> str:
    """Where a checkpoint's config record lives, for messages."""
    return f"{path}: metadata 'dalle2_fast'" if path.is_file() else str(path / "config.json")


def read_config(path: str | Path) -> dict:
    """The checkpoint's validated {'model_type', 'format_version', 'config'} record."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    where = _config_file(path)
    if path.is_file():
        md = read_safetensors_header(path).metadata
        if "dalle2_fast" not in md:
            raise CheckpointError(f"{path}: no 'dalle2_fast' metadata (model type and config) in this file")
        rec = parse_json_object(md["dalle2_fast"], where)
    else:
        cfg = path / "config.json"
        if not cfg.exists():
            raise CheckpointError(f"{path}: missing config.json (a checkpoint directory holds config.json + "
                                  "model.safetensors)")
        rec = read_json_object(cfg)
    unknown = sorted(set(rec) - {"model_type", "format_version", "config"})
    if unknown:
        raise CheckpointError(f"{where}: unknown keys {unknown}; known: ['config', 'format_version', 'model_type']")
    for k in ("model_type", "config"):
        if k not in rec:
            raise CheckpointError(f"{where}: missing key {k!r}")
    check_value(str, rec["model_type"], where, "model_type")
    check_value(dict, rec["config"], where, "config")
    version = rec.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise CheckpointError(f"{where}: format_version: expected int >= 0, got {type(version).__name__} {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{where}: format_version {version} is newer than this package's {FORMAT_VERSION}; "
                              "upgrade dalle2_fast to read it")
    return rec


_META_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                "BOOL": torch.bool}


def _check_weights_fit(cls, config, header, wfile: Path) -> None:
    """Compare the weights file's tensor names and shapes with a model built on the meta device
    (no memory): a config that disagrees with its weights (say channels=4096 for a 64-wide file)
    is refused before the real model allocates anything. Skipped when a model cannot be built
    on the meta device; the real construction and the strict load then report."""
    try:
        with torch.device("meta"):
            own = {k: v.shape for k, v in cls(config).state_dict().items()}
            theirs = {k: torch.empty(shape, dtype=_META_DTYPES.get(dt, torch.float32))
                      for k, (dt, shape, _) in header.tensors.items()}
            if hasattr(cls, "_upgrade_state_dict"):
                theirs = cls._upgrade_state_dict(theirs, config)
            theirs = {k: v.shape for k, v in theirs.items()}
    except Exception:  # noqa: BLE001 - not meta-constructible; the real path below explains errors
        return
    check_tensors(str(wfile), cls.__name__, own, theirs)


def load_pretrained(path: str | Path, expected_cls: type | None = None, map_location: str | torch.device = "cpu"):
    """Rebuild the model saved at ``path`` from its own config and weights."""
    import dalle2_fast.models  # noqa: F401  (fills MODEL_REGISTRY)

    path = Path(path)
    rec = read_config(path)
    where = _config_file(path)
    cls = MODEL_REGISTRY.get(rec["model_type"])
    if cls is None:
        raise CheckpointError(f"{where}: unknown model_type {rec['model_type']!r}; known: {sorted(MODEL_REGISTRY)}")
    if expected_cls is not None and not issubclass(cls, expected_cls):
        raise CheckpointError(f"{path}: holds a {cls.__name__} ({rec['model_type']}), not a {expected_cls.__name__}")
    raw = rec["config"]
    if hasattr(cls, "_upgrade_config"):  # older config layouts of this model type, converted on load
        try:
            raw = cls._upgrade_config(dict(raw))
        except Exception as e:  # noqa: BLE001 - the hook met a config it cannot read
            raise CheckpointError(f"{where}: config: cannot be upgraded ({type(e).__name__}: {one_line(e)})") from None
    config = build_config(cls.config_class, raw, where, "config")  # messages: "<file>: config.unet.x: ..."
    wfile = path if path.is_file() else path / "model.safetensors"
    if not wfile.exists():
        raise CheckpointError(f"{path}: missing model.safetensors")
    header = read_safetensors_header(wfile)
    _check_weights_fit(cls, config, header, wfile)
    try:
        model = cls(config)
    except (Exception, MemoryError) as e:  # noqa: BLE001 - the config passed the generic rules only
        raise CheckpointError(f"{where}: config does not build a {cls.__name__}: {type(e).__name__}: {one_line(e)}") from None
    state = load_safetensors(wfile)
    if hasattr(cls, "_upgrade_state_dict"):  # older state-dict layouts (renamed keys), converted on load
        try:
            state = cls._upgrade_state_dict(state, config)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{wfile}: tensors cannot be upgraded ({type(e).__name__}: {one_line(e)})") from None
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


def training_states(run_dir: str | Path) -> list[Path]:
    """Every ``checkpoints/step_*`` directory of a run, oldest first (temp dirs excluded)."""
    root = Path(run_dir) / "checkpoints"
    return sorted(p for p in root.glob("step_*") if p.is_dir()) if root.is_dir() else []


def latest_training_state(run_dir: str | Path) -> Path | None:
    """The newest ``step_*`` directory, intact or not (see ``load_latest_training_state``)."""
    steps = training_states(run_dir)
    return steps[-1] if steps else None


def _read_optim(path: Path) -> dict:
    """``optim.pt``: a torch zip archive read with ``weights_only=True`` (no code runs), holding
    {'optimizers': {name: state_dict}, 'rng': {'torch': ByteTensor, ...}}."""
    f = path / "optim.pt"
    kind = sniff(f)
    if kind != "torch-zip":
        raise CheckpointError(f"{f}: this is {describe(kind)}, not a torch.save archive (truncated or overwritten?)")
    try:
        blob = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt zip, refused global, truncated record
        raise CheckpointError(f"{f}: unreadable torch archive ({type(e).__name__}: {one_line(e, 200)})") from None
    ok = (isinstance(blob, dict) and isinstance(blob.get("optimizers"), dict) and isinstance(blob.get("rng"), dict)
          and isinstance(blob["rng"].get("torch"), torch.Tensor) and blob["rng"]["torch"].dtype == torch.uint8
          and all(isinstance(v, dict) for v in blob["optimizers"].values()))
    if not ok:
        raise CheckpointError(f"{f}: expected {{'optimizers': {{name: state_dict}}, 'rng': {{'torch': uint8 tensor}}}}")
    return blob


def _read_state_json(path: Path) -> dict:
    f = path / "state.json"
    rec = read_json_object(f)
    for k in ("step", "data_position", "extra"):
        if k not in rec:
            raise CheckpointError(f"{f}: missing key {k!r}")
    for k in ("step", "data_position"):
        if isinstance(rec[k], bool) or not isinstance(rec[k], int) or rec[k] < 0:
            raise CheckpointError(f"{f}: {k}: expected int >= 0, got {type(rec[k]).__name__} {rec[k]!r}")
    check_value(dict, rec["extra"], str(f), "extra")
    return rec


def load_training_state(path: str | Path, model: torch.nn.Module,
                        optimizers: dict[str, torch.optim.Optimizer], ema: torch.nn.Module | None = None) -> dict:
    """Restore weights, optimizer states, RNG states and (``ema`` given) the averaged model;
    returns {'step', 'data_position', 'extra'}. Every file is read and checked before anything
    is restored; any defect is a CheckpointError naming the file."""
    path = Path(path)
    if ema is not None and not (path / "ema.safetensors").exists():
        raise CheckpointMismatch(f"{path}: no EMA weights (ema.safetensors) in this checkpoint: "
                              f"it was written by a run without an EMA of the weights (--ema 0)")
    for f in ("state.json", "optim.pt", "model.safetensors"):
        if not (path / f).exists():
            raise CheckpointError(f"{path}: incomplete training checkpoint, missing {f}")
    state = _read_state_json(path)
    weights = load_safetensors(path / "model.safetensors")
    ema_weights = None
    if (path / "ema.safetensors").exists():  # checked even when not restored: every rank agrees on "intact"
        read_safetensors_header(path / "ema.safetensors")
        if ema is not None:
            ema_weights = load_safetensors(path / "ema.safetensors")
    blob = _read_optim(path)
    missing = sorted(set(optimizers) - set(blob["optimizers"]))
    if missing:
        raise CheckpointMismatch(f"{path}: no optimizer state for {missing}")
    load_state_strict(model, weights, str(path))
    if ema is not None:
        load_state_strict(ema, ema_weights, str(path / "ema.safetensors"))
    for k, o in optimizers.items():
        try:
            o.load_state_dict(blob["optimizers"][k])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{path / 'optim.pt'}: optimizer {k!r} does not match: {one_line(e)}") from None
    try:
        torch.set_rng_state(blob["rng"]["torch"])
        if "cuda" in blob["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'optim.pt'}: bad RNG state: {one_line(e)}") from None
    return state


def load_latest_training_state(run_dir: str | Path, model: torch.nn.Module,
                               optimizers: dict[str, torch.optim.Optimizer],
                               ema: torch.nn.Module | None = None) -> tuple[Path, dict] | None:
    """Resume from the newest intact ``checkpoints/step_*`` of ``run_dir``: returns (its path,
    its state record), or None when the run has no training checkpoint at all. A newer one that
    cannot be read (truncated optim.pt, corrupt weights, bad state.json, ...) is skipped, and one
    ``CheckpointWarning`` names each skipped file with the reason; when none is intact, a
    CheckpointError lists every checkpoint found and why each failed. A CheckpointMismatch (the
    checkpoint is intact but lacks the EMA or an optimizer the caller has) is raised at once."""
    steps = training_states(run_dir)
    failures = []
    for ck in reversed(steps):
        try:
            state = load_training_state(ck, model, optimizers, ema=ema)
        except CheckpointMismatch:
            raise
        except CheckpointError as e:
            failures.append(str(e))
            continue
        if failures:
            skipped = " | ".join(failures)
            warnings.warn(f"resume: skipped {len(failures)} unreadable training checkpoint(s) ({skipped}); "
                          f"continuing from {ck} (step {state['step']}), the newest intact one",
                          CheckpointWarning, stacklevel=2)
        return ck, state
    if failures:
        raise CheckpointError(f"{Path(run_dir) / 'checkpoints'}: no intact training checkpoint among {len(steps)}: "
                              + " | ".join(failures))
    return None
