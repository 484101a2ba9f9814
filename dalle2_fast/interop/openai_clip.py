"""OpenAI CLIP weights (``ViT-L-14.pt`` and the others OpenAI distributes, or a plain state dict)
into our open_clip adapter (:class:`dalle2_fast.models.clip.ClipAdapter`), always with QuickGELU.

OpenAI trained CLIP with QuickGELU, x * sigmoid(1.702 x). open_clip's plain architecture names
(``ViT-L-14``) use exact GELU; OpenAI's weights in them run without error and give wrong
embeddings. Here the activation is part of the loaded config (``quick_gelu: true``), and
:func:`quick_gelu_for` makes the choice explicit for :meth:`ClipAdapter.from_pretrained`.

The TorchScript archive is read without unpickling arbitrary objects and without
``torch.jit.load``: it is a zip whose ``data.pkl`` pickles the module tree (classes named
``__torch__.*``) with tensors whose bytes are the archive's ``data/<key>`` entries.
:class:`_ArchiveUnpickler` (a ``pickle.Unpickler`` with ``find_class`` restricted, as the
``pickle`` documentation describes for untrusted data) resolves exactly these globals:
``torch._utils._rebuild_tensor_v2`` and ``_rebuild_parameter`` (to our own view-building
function), ``collections.OrderedDict``, the ``torch.*Storage`` dtype markers (inert, not
callable), ``torch.jit._pickle`` list builders (to identity functions) and ``__torch__.*``
module classes (to an inert record of their attributes). Anything else raises
:class:`UnsafeArchiveError` naming the global, before any of it runs. The archive's TorchScript
code is never executed; its class names are read to see the activation (``QuickGELU``).

The architecture comes from the tensor shapes (as OpenAI's ``build_model`` does) and is matched
to open_clip's ``<name>-quickgelu`` config when one exists.
"""
from __future__ import annotations

import collections
import io
import json
import logging
import pickle
import zipfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)
OPENAI_META_KEYS = ("input_resolution", "context_length", "vocab_size")  # in OpenAI's archives, not weights


class UnsafeArchiveError(pickle.UnpicklingError):
    """The archive's pickle needs a global outside the allow-list (named in ``global_name``)."""

    def __init__(self, path, global_name: str):
        self.global_name = global_name
        super().__init__(f"{path}: refused to unpickle the global {global_name!r} (only tensors, containers and "
                         "TorchScript module records are read from a CLIP archive)")


# ----------------------------------------------------------------------------- the archive
class _StorageType:
    """Marker for ``torch.<X>Storage`` in a persistent id (never called)."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


class _ScriptRecord:
    """What a ``__torch__.*`` module object pickles: its class name and attributes."""

    qualname = ""

    def __setstate__(self, state):
        self.attrs = state if isinstance(state, dict) else {"__state__": state}


_STORAGES = {n: _StorageType(getattr(torch, d)) for n, d in {
    "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16", "DoubleStorage": "float64",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool"}.items()}


def _rebuild_tensor(flat: torch.Tensor, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    return flat.as_strided(tuple(size), tuple(stride), int(offset))


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


def _identity(x, *args):
    return x


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, zf: zipfile.ZipFile, prefix: str, path):
        super().__init__(io.BytesIO(data))
        self.zf, self.prefix, self.path, self.classes = zf, prefix, path, {}

    def find_class(self, module: str, name: str):
        full = f"{module}.{name}"
        if full in ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor"):
            return _rebuild_tensor
        if full == "torch._utils._rebuild_parameter":
            return _rebuild_parameter
        if full == "collections.OrderedDict":
            return collections.OrderedDict
        if module == "torch" and name in _STORAGES:
            return _STORAGES[name]
        if module == "torch.jit._pickle" and name.startswith(("build_", "restore_type_tag")):
            return _identity
        if module.startswith("__torch__"):
            if full not in self.classes:
                self.classes[full] = type(name, (_ScriptRecord,), {"qualname": full})
            return self.classes[full]
        raise UnsafeArchiveError(self.path, full)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError(f"{self.path}: unexpected persistent id {pid!r}")
        _, st, key, _location, numel = pid
        raw = self.zf.read(f"{self.prefix}data/{key}")
        flat = torch.frombuffer(bytearray(raw), dtype=st.dtype) if raw else torch.empty(0, dtype=st.dtype)
        return flat[: int(numel)]


def _walk(obj, prefix: str, out: dict, classes: set) -> None:
    if isinstance(obj, _ScriptRecord):
        classes.add(obj.qualname)
        for k, v in getattr(obj, "attrs", {}).items():
            _walk(v, f"{prefix}{k}.", out, classes)
    elif isinstance(obj, torch.Tensor):
        out[prefix[:-1]] = obj


def read_torchscript_archive(path: str | Path) -> tuple[dict[str, torch.Tensor], set[str]]:
    """(tensors by attribute path, TorchScript class names) of a TorchScript zip, read with the
    restricted unpickler (see the module docstring); nothing in the archive is executed."""
    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        pkl = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") <= 1]
        if not pkl:
            raise ValueError(f"{path}: a zip without data.pkl is not a TorchScript archive")
        prefix = pkl[0][: -len("data.pkl")]
        top = _ArchiveUnpickler(zf.read(pkl[0]), zf, prefix, path).load()
    tensors, classes = {}, set()
    _walk(top, "", tensors, classes)
    if not tensors:
        raise ValueError(f"{path}: the archive holds no tensors")
    return {k: v.clone() for k, v in tensors.items()}, classes


def is_torchscript_archive(path: str | Path) -> bool:
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("data.pkl") for n in names) and any("/code/" in f"/{n}" for n in names)


# ----------------------------------------------------------------------------- architecture
def openai_model_cfg(sd: dict[str, torch.Tensor]) -> dict:
    """open_clip's ``model_cfg`` for an OpenAI CLIP state dict, from its shapes (ViT or
    modified ResNet towers), with ``quick_gelu: true``."""
    need = ("text_projection", "positional_embedding", "token_embedding.weight", "ln_final.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise ValueError(f"not an OpenAI CLIP state dict: missing {missing}")
    embed_dim = sd["text_projection"].shape[1]
    width = sd["ln_final.weight"].shape[0]
    text = {"context_length": sd["positional_embedding"].shape[0], "vocab_size": sd["token_embedding.weight"].shape[0],
            "width": width, "heads": width // 64,
            "layers": len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})}
    if "visual.proj" in sd:  # ViT
        vw = sd["visual.conv1.weight"].shape[0]
        patch = sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = {"image_size": patch * grid, "layers": len({k.split(".")[3] for k in sd
                                                             if k.startswith("visual.transformer.resblocks.")}),
                  "width": vw, "patch_size": patch}
    else:  # modified ResNet
        layers = [len({k.split(".")[2] for k in sd if k.startswith(f"visual.layer{b}.")}) for b in (1, 2, 3, 4)]
        vw = sd["visual.layer1.0.conv1.weight"].shape[0]
        grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
        vision = {"image_size": grid * 32, "layers": layers, "width": vw, "head_width": 64}
    return {"embed_dim": int(embed_dim), "quick_gelu": True, "vision_cfg": vision, "text_cfg": text}


def _strip(cfg: dict) -> dict:
    """The architecture part of a model_cfg (what shapes decide), for comparing configs."""
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    keep_v = {k: v.get(k) for k in ("image_size", "layers", "width", "patch_size")}
    keep_t = {k: t.get(k) for k in ("context_length", "vocab_size", "width", "heads", "layers")}
    return {"embed_dim": cfg.get("embed_dim"), "vision": keep_v, "text": keep_t}


def matching_open_clip_name(model_cfg: dict) -> str | None:
    """The open_clip ``*-quickgelu`` architecture with these shapes, if one is registered."""
    import open_clip

    want = _strip(model_cfg)
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name)
        if cfg and cfg.get("quick_gelu") and _strip(cfg) == want:
            return name
    return None


def quick_gelu_for(model_name: str) -> str | None:
    """For an open_clip architecture name that also exists as ``<name>-quickgelu`` (the
    architectures OpenAI released, among others): that QuickGELU name; else None."""
    import open_clip

    if model_name.endswith("-quickgelu"):
        return None
    twin = f"{model_name}-quickgelu"
    return twin if twin in open_clip.list_models() else None


def activation_checked_name(model_name: str, quick_gelu: bool | None, path) -> str:
    """The architecture name to build for a bare weights file, its activation made explicit."""
    import open_clip

    twin = quick_gelu_for(model_name)
    is_quick = bool((open_clip.get_model_config(model_name) or {}).get("quick_gelu", False))
    if quick_gelu is None:
        if twin is not None:
            raise ValueError(f"ClipAdapter: {path} for {model_name!r}: that architecture exists with GELU and with "
                             f"QuickGELU ({twin!r}) and a weights file cannot tell which it was trained with. OpenAI's "
                             f"weights need QuickGELU and give wrong embeddings with GELU, silently. Pass "
                             f"quick_gelu=True (OpenAI's weights; or model_name={twin!r}) or quick_gelu=False (GELU "
                             f"weights, e.g. LAION's)")
        return model_name
    if quick_gelu == is_quick:
        return model_name
    if quick_gelu and twin is not None:
        return twin
    if not quick_gelu and model_name.endswith("-quickgelu"):
        return model_name[: -len("-quickgelu")]
    raise ValueError(f"ClipAdapter: quick_gelu={quick_gelu} but open_clip has no such variant of {model_name!r}")


# ----------------------------------------------------------------------------- loading
def read_openai_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], bool | None]:
    """(state dict, uses QuickGELU: True / False / None = the file does not say) of an OpenAI
    CLIP file: a TorchScript archive (its class names say) or a torch / safetensors state dict
    (OpenAI's extra ``input_resolution`` / ``context_length`` / ``vocab_size`` entries mark a
    state dict taken from OpenAI's archive)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no CLIP weights at {path} (weights are never downloaded)")
    if is_torchscript_archive(path):
        sd, classes = read_torchscript_archive(path)
        names = {c.rsplit(".", 1)[-1] for c in classes}
        quick = True if "QuickGELU" in names else (False if "GELU" in names else None)
    else:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
                sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
        sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
        quick = True if any(k in sd for k in OPENAI_META_KEYS) else None
    return sd, quick


def load_openai_clip(path: str | Path, model_name: str | None = None, dtype: torch.dtype = torch.float32):
    """A :class:`ClipAdapter` with OpenAI's weights from ``path`` (``ViT-L-14.pt`` as OpenAI
    distributes it, or a state dict), QuickGELU always. ``model_name``: optional open_clip
    architecture to check the shapes against (a GELU name is corrected to its ``-quickgelu``
    twin). Weights are cast to ``dtype`` (OpenAI's archives hold float16)."""
    from dalle2_fast.checkpoint import load_state_strict
    from dalle2_fast.models.clip import ClipAdapter, ClipConfig

    sd, quick = read_openai_state_dict(path)
    if quick is False:
        raise ValueError(f"{path}: this TorchScript CLIP uses exact GELU, not OpenAI's QuickGELU; load it with "
                         "ClipAdapter.from_pretrained(path, model_name=...) instead")
    sd = {k: v for k, v in sd.items() if k not in OPENAI_META_KEYS}
    cfg = openai_model_cfg(sd)
    name = matching_open_clip_name(cfg)
    if model_name is not None:
        import open_clip

        asked = quick_gelu_for(model_name) or model_name
        if asked != model_name:
            log.info("%s: OpenAI weights need QuickGELU: using %s for %s", path, asked, model_name)
        known = open_clip.get_model_config(asked)
        if known is None:
            raise ValueError(f"load_openai_clip: unknown open_clip model {model_name!r}")
        if _strip(known) != _strip(cfg):
            raise ValueError(f"{path}: the weights' shapes {_strip(cfg)} do not fit {asked} {_strip(known)}")
        name = asked
    full = {"model_cfg": cfg, "preprocess_cfg": {}}
    adapter = ClipAdapter(ClipConfig(model_name=name or f"openai-{Path(path).stem}", open_clip=json.dumps(full)))
    load_state_strict(adapter.model, {k: v.to(dtype) for k, v in sd.items()}, str(path))
    return adapter.to(dtype)


__all__ = ["load_openai_clip", "read_openai_state_dict", "read_torchscript_archive", "is_torchscript_archive",
           "openai_model_cfg", "matching_open_clip_name", "quick_gelu_for", "activation_checked_name", "UnsafeArchiveError",
           "OPENAI_META_KEYS"]
