"""Loads the compiled extension (csrc/) once and says why it is missing if it is."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch


def _load() -> tuple[bool, str, frozenset[str]]:
    """Returns (loaded, reason if not, compiled features such as {'cpu', 'cuda'})."""
    if os.environ.get("DALLE2_FAST_NO_EXTENSION") == "1":
        return False, "disabled by DALLE2_FAST_NO_EXTENSION=1", frozenset()
    override = os.environ.get("DALLE2_FAST_EXTENSION_PATH")  # e.g. the AddressSanitizer build
    if override:
        if not Path(override).is_file():
            return False, f"DALLE2_FAST_EXTENSION_PATH={override} does not exist", frozenset()
        torch.ops.load_library(override)
        return True, "", frozenset(torch.ops.dalle2_fast.build_info().split(";")[0].split(","))
    try:
        spec = importlib.util.find_spec("dalle2_fast._C")
    except (ImportError, ValueError):
        spec = None
    path = spec.origin if spec is not None and spec.origin else None
    if path is None:  # an in-place build next to the sources
        hits = sorted(Path(__file__).parent.glob("_C*.so"))
        path = str(hits[0]) if hits else None
    if path is None:
        return False, "C++ extension not built (run `pip install --no-build-isolation -e .`)", frozenset()
    try:
        torch.ops.load_library(path)
    except OSError as e:  # a stale or foreign build
        return False, f"C++ extension failed to load: {e}", frozenset()
    info = torch.ops.dalle2_fast.build_info()
    features = frozenset(info.split(";")[0].split(","))
    return True, "", features


# Loaded once at import, so that the accessors below are plain reads that torch.compile can
# trace through (dispatch calls them inside compiled regions).
_LOADED, _ERROR, _FEATURES = _load()


def loaded() -> bool:
    return _LOADED


def load_error() -> str:
    return _ERROR


def has_cuda_kernels() -> bool:
    return "cuda" in _FEATURES


def build_info() -> str:
    return torch.ops.dalle2_fast.build_info() if loaded() else "not built"
