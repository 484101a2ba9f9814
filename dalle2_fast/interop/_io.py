"""Reading other projects' weights safely, and loading them into our modules strictly.

- Files: safetensors (preferred; header validated by :mod:`dalle2_fast.files` first), or a torch
  file read with ``torch.load(weights_only=True)`` (never a full unpickle); the kind is sniffed
  from the magic bytes (a TorchScript archive or a file of another kind is named as such); a
  pickle that needs a global outside torch's weights-only allow-list is refused with that
  global's name (:class:`UnsafeCheckpointError`).
- Folders in diffusers' layout: ``config.json`` / ``scheduler_config.json`` plus
  ``diffusion_pytorch_model.safetensors`` (or ``model.safetensors``, sharded with an
  ``.index.json``, or the ``.bin`` equivalents).
- :class:`Source`: a state dict under renaming: ``take(key)`` names the missing tensor and the
  file, :meth:`Source.unused` lists tensors nothing took (an unknown layout is an error, never
  silently ignored), ``dtype`` converts floating tensors as they are taken.
- :func:`empty_model` builds a module with its parameters on the meta device (no random init,
  no memory) and :func:`assign` fills it from a state dict of ours, checking every name and
  shape first: together they load big weights with one copy in memory, in the dtype asked for.
"""
from __future__ import annotations

import contextlib
import os
import pickle
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from dalle2_fast.files import CheckpointError, describe, load_safetensors, read_json_object, sniff
from dalle2_fast.files.formats import check_tensors

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin",
                "pytorch_model.bin")


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint needs a global that a weights-only load does not allow."""


def read_json(path: Path, what: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} not found")
    return read_json_object(path)


_TORCH_KINDS = ("torch-zip", "pickle")


def torch_load(path: str | os.PathLike, what: str = "checkpoint"):
    """``torch.load(path, weights_only=True)`` on the CPU; a refused global becomes an
    :class:`UnsafeCheckpointError` naming it (the file is never fully unpickled); a file of
    another kind (TorchScript archive, safetensors, JSON, ...) is named as such."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} not found")
    kind = sniff(path)
    if kind not in _TORCH_KINDS:
        raise CheckpointError(f"{what}: {path} is {describe(kind)}, expected a torch.save file (zip or pickle)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        glob = _refused_global(msg)
        if glob is None:
            raise CheckpointError(f"{what}: {path} could not be read as a weights-only torch file: "
                                  f"{msg.splitlines()[0] if msg else e!r}") from None
        raise UnsafeCheckpointError(
            f"{what}: {path} needs the global {glob!r}, which a weights-only load does not allow; it is refused "
            "(never unpickled). Re-save the tensors as safetensors from a trusted environment") from None


def _refused_global(msg: str) -> str | None:
    """The global named in torch's weights-only refusal message ('Unsupported global: GLOBAL a.b.C ...')."""
    for line in msg.splitlines():
        if "Unsupported global" in line and "GLOBAL" in line:
            return line.split("GLOBAL", 1)[1].split()[0].strip(" .,`'\"")
        if "global" in line.lower() and "not an allowed global" in line:
            return line.split()[0]
    return None


def read_state_dict(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """A dict of tensors from a .safetensors file or a weights-only torch file (a Lightning
    checkpoint's ``state_dict`` is taken from it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} not found")
    if path.suffix == ".safetensors" or sniff(path) == "safetensors":
        return load_safetensors(path)
    sd = torch_load(path, what)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{what}: {path} does not hold a dict of tensors (or a checkpoint with a 'state_dict')")
    return sd


def component_weights(folder: Path, what: str) -> dict[str, torch.Tensor]:
    """The weights of one diffusers / transformers component folder (one file, or shards listed
    by an ``*.index.json``)."""
    folder = Path(folder)
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return read_state_dict(folder / name, what)
        index = folder / f"{name}.index.json"
        if index.is_file():
            files = sorted(set(read_json(index, what).get("weight_map", {}).values()))
            if not files:
                raise CheckpointError(f"{what}: {index} lists no shards (no 'weight_map')")
            out: dict[str, torch.Tensor] = {}
            for f in files:
                out.update(read_state_dict(folder / f, what))
            return out
    raise FileNotFoundError(f"{what}: {folder} has no weights (expected one of {list(WEIGHT_NAMES)} or a sharded "
                            f"'.index.json')")


class Source:
    """A checkpoint's tensors, taken one by one under a rename table (see the module docstring)."""

    def __init__(self, state: dict[str, torch.Tensor], where: str, dtype: torch.dtype | None = None):
        self.state, self.where, self.dtype = state, where, dtype
        self.taken: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.state

    def take(self, key: str) -> torch.Tensor:
        if key not in self.state:
            raise CheckpointError(f"{self.where}: missing tensor {key!r}")
        self.taken.add(key)
        v = self.state[key]
        return v.to(self.dtype) if self.dtype is not None and v.is_floating_point() else v

    def unused(self, ignore: Iterable[str] = ()) -> list[str]:
        skip = set(ignore)
        return sorted(k for k in self.state if k not in self.taken and k not in skip)

    def check_all_used(self, ignore: Iterable[str] = ()) -> None:
        left = self.unused(ignore)
        if left:
            raise CheckpointError(f"{self.where}: {len(left)} tensors this importer does not understand (an unknown "
                                  f"layout or architecture option): {left[:10]}{'...' if len(left) > 10 else ''}")


# one rule: our key <- fn(their tensors)
Rule = tuple[Sequence[str], Callable[..., torch.Tensor]]


def same(t: torch.Tensor) -> torch.Tensor:
    return t


def cat0(*ts: torch.Tensor) -> torch.Tensor:
    """Fused projections: their separate q, k, v (or k, v) rows stacked as our [part][head][c]."""
    return torch.cat(ts, dim=0)


def convert(src: Source, rules: dict[str, Rule]) -> dict[str, torch.Tensor]:
    """Our state dict from ``rules`` (our key -> (their keys, fn)); every tensor taken from ``src``.
    A transform that cannot apply (tensors of incompatible shapes) names the tensors."""
    out = {}
    for ours, (theirs, fn) in rules.items():
        ts = [src.take(k) for k in theirs]
        try:
            out[ours] = fn(*ts)
        except (RuntimeError, ValueError) as e:
            shapes = ", ".join(f"{k} {tuple(t.shape)}" for k, t in zip(theirs, ts))
            raise CheckpointError(f"{src.where}: mis-shaped tensors {shapes} ({e})") from None
    return out


@contextlib.contextmanager
def _params_on_meta():
    """Parameters registered inside the block live on the meta device (buffers and plain tensors,
    e.g. a diffusion process's tables, are built normally)."""
    orig = nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        orig(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = orig


def empty_model(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with every parameter on the meta device: fill it with :func:`assign`."""
    with _params_on_meta():
        return build()


def assign(model: nn.Module, state: dict[str, torch.Tensor], where: str, names: dict[str, str] | None = None,
           dtype: torch.dtype | None = None) -> nn.Module:
    """Fill ``model`` (e.g. from :func:`empty_model`) with ``state`` (our keys), strictly: every
    missing, unexpected or mis-shaped tensor is reported, by its name in the source file when
    ``names`` (our key -> their key(s)) says it. Floating tensors go to ``dtype`` (default: as
    given); the tensors are assigned, not copied."""
    own = model.state_dict(keep_vars=True)
    check_tensors(where, type(model).__name__, {k: v.shape for k, v in own.items()},
                  {k: v.shape for k, v in state.items()}, names)
    fixed = {}
    for k, v in state.items():
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        elif v.is_floating_point() and own[k].is_floating_point() and own[k].device.type != "meta":
            v = v.to(own[k].dtype)
        fixed[k] = v.contiguous()
    model.load_state_dict(fixed, strict=True, assign=True)
    return model


__all__ = ["UnsafeCheckpointError", "Source", "read_json", "torch_load", "read_state_dict", "component_weights",
           "convert", "same", "cat0", "empty_model", "assign"]
