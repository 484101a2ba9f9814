"""File formats: sniffing by magic bytes, bounded safetensors headers, JSON objects.

- ``sniff(path)`` names a file by its first bytes (safetensors, a PyTorch zip archive,
  a TorchScript archive, a raw pickle, JSON, empty, ...), so a file of the wrong kind is
  called what it is ("a PyTorch zip archive (torch.save), not safetensors").
- ``read_safetensors_header`` bounds the header length by the file size *before* reading it,
  requires a JSON object and checks every tensor entry (known dtype, shape of non-negative
  ints, offsets in bounds, consistent with dtype x shape, contiguous and non-overlapping);
  only then does ``load_safetensors`` let the safetensors library read the data. Nothing is
  unpickled here, ever: pickles are named and refused.
- ``read_json_object`` reads at most ``max_bytes`` of UTF-8 JSON and requires an object.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import zipfile
from pathlib import Path

import torch

MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors library's own limit (bytes)
MAX_JSON_BYTES = 16 << 20


class CheckpointError(RuntimeError):
    """A checkpoint or config file is missing, of the wrong kind, corrupt or truncated, or does
    not match the model it is loaded into. The message is one line and names the file."""


def check_tensors(where: str, model_name: str, own: dict, theirs: dict, names: dict | None = None) -> None:
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped tensor between a
    model's ``own`` and a checkpoint's ``theirs`` (name -> shape maps). ``names`` (our key -> the
    source file's key) makes the message use the names the user's file has."""
    names = names or {}
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    shapes = [f"{names.get(k, k)}: {tuple(theirs[k])}, expected {tuple(own[k])}"
              for k in sorted(set(own) & set(theirs)) if tuple(theirs[k]) != tuple(own[k])]
    if missing or unexpected or shapes:
        msg = [f"{where}: the checkpoint does not match {model_name}"]
        if missing:
            msg.append(f"missing tensors ({len(missing)}): {[names.get(k, k) for k in missing[:10]]}")
        if unexpected:
            msg.append(f"unexpected tensors ({len(unexpected)}): {unexpected[:10]}")
        if shapes:
            msg.append(f"mis-shaped tensors ({len(shapes)}): {shapes[:10]}")
        raise CheckpointError("; ".join(msg))


def one_line(e: BaseException | str, limit: int = 300) -> str:
    text = str(e).strip().splitlines()
    text = text[0] if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            raise CheckpointError(f"{path}: is a directory, expected a file")
        return path.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"{path}: does not exist") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({one_line(e)})") from None


def _read(path: Path, offset: int, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({one_line(e)})") from None


# ----------------------------------------------------------------------------- sniffing
KINDS = {
    "safetensors": "a safetensors file",
    "safetensors-truncated": "a safetensors file cut short (its header length exceeds the file)",
    "torch-zip": "a PyTorch zip archive (torch.save)",
    "torchscript": "a TorchScript archive (torch.jit.save)",
    "zip": "a zip archive",
    "pickle": "a Python pickle (legacy torch.save or pickle.dump)",
    "json": "a JSON text",
    "empty": "an empty file",
    "unknown": "a file of unknown format",
}


def sniff(path: str | os.PathLike) -> str:
    """The kind of ``path`` (a key of ``KINDS``) from its first bytes; see ``describe``."""
    path = Path(path)
    size = _size(path)
    if size == 0:
        return "empty"
    head = _read(path, 0, 16)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return _zip_kind(path)
    if len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if n <= size - 8:
            return "safetensors"
        if n < 1 << 48:  # a plausible length whose data is missing (JSON text gives n >= 2^56)
            return "safetensors-truncated"
    if head.lstrip(b" \t\r\n\xef\xbb\xbf")[:1] in (b"{", b"["):
        return "json"
    return "unknown"


def _zip_kind(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return "zip"  # a damaged zip is still named a zip
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        return "torch-zip"
    return "zip"


def describe(kind: str) -> str:
    return KINDS.get(kind, kind)


# ----------------------------------------------------------------------------- safetensors
# bytes per element of every dtype the safetensors format defines and torch can hold
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}


@dataclasses.dataclass(frozen=True)
class SafetensorsHeader:
    header_len: int
    tensors: dict  # name -> (dtype str, shape tuple, (begin, end))
    metadata: dict  # str -> str


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {k!r}")
        d[k] = v
    return d


def _loads(text: str | bytes, where: str):
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where}: not UTF-8 text ({one_line(e)})") from None
    except RecursionError:
        raise CheckpointError(f"{where}: JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, duplicate keys, over-long integer literals
        raise CheckpointError(f"{where}: not valid JSON ({one_line(e)})") from None


def _wrong_kind(path: Path, kind: str, expected: str) -> CheckpointError:
    hint = ""
    if kind in ("pickle", "torch-zip"):
        hint = " (dalle2_fast never unpickles a weights file: convert it with the matching importer)"
    return CheckpointError(f"{path}: this is {describe(kind)}, not {expected}{hint}")


def read_safetensors_header(path: str | os.PathLike) -> SafetensorsHeader:
    """Validated header of a safetensors file (see the module docstring); reads only the header."""
    path = Path(path)
    size = _size(path)
    kind = sniff(path)
    if kind == "safetensors-truncated":
        (n,) = struct.unpack("<Q", _read(path, 0, 8))
        raise CheckpointError(f"{path}: truncated safetensors file: the header length field says {n} bytes, "
                              f"the file has {size}")
    n = struct.unpack("<Q", _read(path, 0, 8))[0] if size >= 8 else 0
    # "unknown" with a length field that fits the file: a safetensors file whose header is damaged
    damaged = kind == "unknown" and 1 <= n <= size - 8
    if kind != "safetensors" and not damaged:
        if size < 10 and kind in ("unknown", "empty"):
            raise CheckpointError(f"{path}: truncated safetensors file: {size} bytes, too short for a header")
        raise _wrong_kind(path, kind, "safetensors")
    if n > MAX_SAFETENSORS_HEADER:
        raise CheckpointError(f"{path}: safetensors header of {n} bytes exceeds the {MAX_SAFETENSORS_HEADER} limit")
    header = _loads(_read(path, 8, n), f"{path}: safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header: expected a JSON object, got {type(header).__name__}")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CheckpointError(f"{path}: safetensors header: __metadata__: expected an object of strings")
    data_len = size - 8 - n
    tensors, spans = {}, []
    for name, e in header.items():
        where = f"{path}: safetensors header: tensor {name!r}"
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where}: expected an object with dtype, shape, data_offsets, got {_short(e)}")
        dtype, shape, offs = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{where}: dtype: expected one of {sorted(SAFETENSORS_DTYPES)}, got {_short(dtype)}")
        if not isinstance(shape, list) or not all(_is_int(s) and s >= 0 for s in shape) or len(shape) > 64:
            raise CheckpointError(f"{where}: shape: expected a list of non-negative ints, got {_short(shape)}")
        if isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs) and 0 <= offs[0] <= offs[1] \
                and offs[1] > data_len:
            raise CheckpointError(f"{path}: truncated safetensors file: tensor {name!r} ends at byte "
                                  f"{8 + n + offs[1]}, the file has {size}")
        if not (isinstance(offs, list) and len(offs) == 2 and all(_is_int(o) for o in offs)
                and 0 <= offs[0] <= offs[1] <= data_len):
            raise CheckpointError(f"{where}: data_offsets: expected [begin, end] with 0 <= begin <= end <= "
                                  f"{data_len} (the data section), got {_short(offs)}")
        need = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if offs[1] - offs[0] != need:
            raise CheckpointError(f"{where}: data_offsets {offs} hold {offs[1] - offs[0]} bytes, but {dtype} "
                                  f"{tuple(shape)} needs {need}")
        tensors[name] = (dtype, tuple(shape), (offs[0], offs[1]))
        spans.append((offs[0], offs[1], name))
    end = 0
    for b, e, name in sorted(spans):
        if b != end:
            what = "overlaps the previous tensor" if b < end else f"leaves a gap of {b - end} bytes"
            raise CheckpointError(f"{path}: safetensors header: tensor {name!r}: data_offsets [{b}, {e}] {what}")
        end = e
    if end != data_len:
        raise CheckpointError(f"{path}: truncated or padded safetensors file: the tensors end at byte {8 + n + end}, "
                              f"the file has {size}")
    return SafetensorsHeader(n, tensors, meta)


def load_safetensors(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a validated safetensors file."""
    path = Path(path)
    read_safetensors_header(path)
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except Exception as e:  # noqa: BLE001 - the header was valid, so this is I/O or a library limit
        raise CheckpointError(f"{path}: safetensors could not read the data ({one_line(e)})") from None


# ----------------------------------------------------------------------------- JSON
def read_json_object(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> dict:
    """The JSON object stored in ``path`` (at most ``max_bytes`` long)."""
    path = Path(path)
    size = _size(path)
    if size > max_bytes:
        raise CheckpointError(f"{path}: {size} bytes is too large for a JSON config (limit {max_bytes})")
    kind = sniff(path)
    if kind != "json":
        raise _wrong_kind(path, kind, "a JSON object")
    obj = _loads(_read(path, 0, size), str(path))
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_json_object(text: str, where: str) -> dict:
    obj = _loads(text, where)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v, limit: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


__all__ = ["CheckpointError", "sniff", "describe", "KINDS", "read_safetensors_header", "load_safetensors",
           "SafetensorsHeader", "read_json_object", "parse_json_object", "SAFETENSORS_DTYPES"]
