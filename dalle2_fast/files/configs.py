"""Typed validation of what config files hold: model configs (frozen dataclasses), training
state records and the unCLIP pipeline manifest.

Rules (generic: they read only the annotation and the field name; ``docs/reliability.md``):
- types, recursively: ``bool`` is a JSON true/false (never 0/1), ``int`` a JSON integer (never
  a bool or 64.0), ``float`` any JSON number, ``str`` a string, ``X | None`` null or X,
  ``tuple[X, ...]`` / ``tuple[X, Y]`` a list of that length, nested dataclasses objects;
  unknown keys are refused (configs never silently drop a setting), missing keys take the
  field default (older checkpoints), a field without default is required;
- every int is in [0, 2**24]: no size, count or index of a model config is negative ("none"
  is written null) or anywhere near 16M; larger values are corruption and would allocate
  without bound;
- an int whose field names a size (``SIZE_FIELDS``: widths, channels, heads, layers,
  resolutions, vocabulary and codebook sizes, timesteps) is >= 1, since 0 is meaningless there;
- every float is finite; a float whose field names a probability (``*_prob``, ``p_*``,
  ``dropout``, ``decay``) is in [0, 1].
A config that passes and still makes the model's constructor raise is reported by
``checkpoint.load_pretrained`` as a CheckpointError naming the file.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path

from dalle2_fast.files.formats import CheckpointError, _is_int, _short, one_line, read_json_object

MAX_CONFIG_INT = 1 << 24
SIZE_FIELDS = frozenset({
    "resolution", "image_size", "in_channels", "out_channels", "channels", "model_channels",
    "latent_channels", "low_res_channels", "code_dim", "num_codes", "num_groups", "num_heads",
    "num_head_channels", "num_heads_upsample", "heads", "layers", "n_layers", "width", "height",
    "g_width", "d_width", "text_width", "text_len", "clip_dim", "cond_dim", "context_dim",
    "num_timesteps", "timesteps", "kernel", "low_res", "high_res", "n_components",
    "n_buckets", "n_dot_buckets", "mask_patch",
})  # num_classes and vocab_size are not here: 0 means "unconditional" / "no captions"


def is_probability(name: str) -> bool:
    return name.endswith("_prob") or name.startswith("p_") or name in ("dropout", "decay")


def _got(v) -> str:
    if v is None:
        return "null"
    return f"{type(v).__name__} {_short(v)}"


def check_value(tp, v, where: str, path: str, name: str | None = None):
    """``v`` (parsed JSON) checked against annotation ``tp``; returns the value to store
    (tuples for tuple fields, floats for float fields, dataclass instances for nested configs).
    ``where`` names the file, ``path`` the field (``unet.channel_mult[2]``), ``name`` the field
    whose name decides the range rules."""
    name = name if name is not None else path.rsplit(".", 1)[-1]

    def fail(expected: str):
        raise CheckpointError(f"{where}: {path}: expected {expected}, got {_got(v)}")

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if v is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return check_value(options[0], v, where, path, name)
        for a in options:
            try:
                return check_value(a, v, where, path, name)
            except CheckpointError:
                continue
        fail(" or ".join(getattr(a, "__name__", str(a)) for a in args))
    if dataclasses.is_dataclass(tp):
        return build_config(tp, v, where, path)
    if origin is typing.Literal:
        if v not in args or isinstance(v, bool) != any(isinstance(a, bool) for a in args):
            fail(f"one of {list(args)}")
        return v
    if origin in (tuple, list):
        if not isinstance(v, (list, tuple)):
            fail("a list")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(v) != len(args):
                fail(f"a list of {len(args)} values")
            items = [check_value(a, e, where, f"{path}[{i}]", name) for i, (a, e) in enumerate(zip(args, v))]
        else:
            elem = args[0] if args else typing.Any
            items = [check_value(elem, e, where, f"{path}[{i}]", name) for i, e in enumerate(v)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(v, bool):
            fail("bool (true or false)")
        return v
    if tp is int:
        if not _is_int(v):
            fail("int")
        low = 1 if name in SIZE_FIELDS else 0
        if not low <= v <= MAX_CONFIG_INT:
            fail(f"int in [{low}, {MAX_CONFIG_INT}]" + (" (a size)" if low else ""))
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail("float")
        v = float(v)
        if not math.isfinite(v):
            fail("a finite float")
        if is_probability(name) and not 0.0 <= v <= 1.0:
            fail("a float in [0, 1] (a probability)")
        return v
    if tp is str:
        if not isinstance(v, str):
            fail("str")
        return v
    if tp is typing.Any or tp is object:
        return v
    if tp is dict or origin is dict:
        if not isinstance(v, dict):
            fail("an object")
        return v
    fail(f"a value of type {getattr(tp, '__name__', tp)}")


def build_config(cls, d, where: str, path: str = ""):
    """Dataclass ``cls`` from the JSON object ``d`` under the rules above."""
    label = path or cls.__name__
    if not isinstance(d, dict):
        raise CheckpointError(f"{where}: {label}: expected an object ({cls.__name__}), got {_got(d)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise CheckpointError(f"{where}: {label}: unknown config keys {unknown}; known: {sorted(fields)}")
    required = sorted(n for n, f in fields.items() if n not in d and f.default is dataclasses.MISSING
                      and f.default_factory is dataclasses.MISSING)
    if required:
        raise CheckpointError(f"{where}: {label}: missing required keys {required}")
    kw = {k: check_value(hints[k], v, where, f"{path}.{k}" if path else k, k) for k, v in d.items()}
    try:
        return cls(**kw)
    except Exception as e:  # noqa: BLE001 - a __post_init__ check of the dataclass itself
        raise CheckpointError(f"{where}: {label}: {type(e).__name__}: {one_line(e)}") from None


def config_from_dict(cls, d, where: str | None = None):
    """Build config dataclass ``cls`` from ``d`` (see the module docstring); ``where`` names the
    file for messages. Raises CheckpointError."""
    return build_config(cls, d, where or cls.__name__, "")


# ----------------------------------------------------------------------------- pipeline manifest
PIPELINE_FILE = "unclip.json"
PIPELINE_STAGES = ("clip", "prior", "decoder")
# unclip.json "defaults": name -> (kind, low, high); steps are counts, guidance scales numbers
PIPELINE_DEFAULTS = {
    "prior_steps": ("int", 1, 10_000), "decoder_steps": ("int", 1, 10_000), "upsampler_steps": ("int", 1, 10_000),
    "prior_guidance": ("float", 0.0, 100.0), "decoder_guidance": ("float", 0.0, 100.0),
}


def _member(root: Path, where: str, key: str, rel) -> str:
    """A file or directory named by the manifest: relative, inside ``root``, existing."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise CheckpointError(f"{where}: {key}: expected a non-empty relative path, got {_got(rel)}")
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise CheckpointError(f"{where}: {key}: expected a path inside the pipeline directory, got {rel!r}")
    try:
        full = (root / p).resolve()
        inside = full.is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{where}: {key}: cannot resolve {rel!r} ({e})") from None
    if not inside:
        raise CheckpointError(f"{where}: {key}: {rel!r} leads outside the pipeline directory (a symlink?)")
    if not full.exists():
        raise CheckpointError(f"{where}: {key}: {rel!r} does not exist in {root}")
    return rel


def read_pipeline_manifest(path: str | os.PathLike) -> dict:
    """The validated ``unclip.json`` of pipeline directory ``path``:
    ``{'clip', 'prior', 'decoder': relative paths, 'upsamplers': [relative paths], 'defaults': {...}}``
    and, when the pipeline has one, ``'inpaint_decoder'`` (the mask-conditioned decoder's path).
    Stage paths must be relative, stay inside the directory and exist; ``defaults`` may hold
    only ``PIPELINE_DEFAULTS`` keys, in range."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a pipeline directory (it should hold {PIPELINE_FILE})")
    mf = root / PIPELINE_FILE
    if not mf.exists():
        raise CheckpointError(f"{mf}: missing (a pipeline directory holds {PIPELINE_FILE}, clip/, prior, decoder)")
    meta = read_json_object(mf)
    where = str(mf)
    known = set(PIPELINE_STAGES) | {"upsamplers", "defaults", "inpaint_decoder"}
    unknown = sorted(set(meta) - known)
    if unknown:
        raise CheckpointError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    missing = [k for k in PIPELINE_STAGES if k not in meta]
    if missing:
        raise CheckpointError(f"{where}: missing stage {missing[0]!r} (a pipeline names {', '.join(PIPELINE_STAGES)})")
    out = {k: _member(root, where, k, meta[k]) for k in PIPELINE_STAGES}
    ups = meta.get("upsamplers", [])
    if not isinstance(ups, list):
        raise CheckpointError(f"{where}: upsamplers: expected a list of relative paths, got {_got(ups)}")
    out["upsamplers"] = [_member(root, where, f"upsamplers[{i}]", u) for i, u in enumerate(ups)]
    if meta.get("inpaint_decoder") is not None:  # optional: the mask-conditioned decoder
        out["inpaint_decoder"] = _member(root, where, "inpaint_decoder", meta["inpaint_decoder"])
    defaults = meta.get("defaults", {})
    if defaults is None:
        defaults = {}
    if not isinstance(defaults, dict):
        raise CheckpointError(f"{where}: defaults: expected an object, got {_got(defaults)}")
    out["defaults"] = {}
    for k, v in defaults.items():
        if k not in PIPELINE_DEFAULTS:
            raise CheckpointError(f"{where}: defaults.{k}: unknown key; known: {sorted(PIPELINE_DEFAULTS)}")
        kind, low, high = PIPELINE_DEFAULTS[k]
        ok = _is_int(v) if kind == "int" else (not isinstance(v, bool) and isinstance(v, (int, float))
                                               and math.isfinite(v))
        if not ok or not low <= v <= high:
            what = "an int" if kind == "int" else "a finite number"
            raise CheckpointError(f"{where}: defaults.{k}: expected {what} in [{low}, {high}], got {_got(v)}")
        out["defaults"][k] = v
    return out


__all__ = ["config_from_dict", "build_config", "check_value", "read_pipeline_manifest", "SIZE_FIELDS",
           "MAX_CONFIG_INT", "PIPELINE_DEFAULTS", "PIPELINE_STAGES", "is_probability"]
