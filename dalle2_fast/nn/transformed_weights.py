"""Layers whose weights run in a transformed layout inside a ``with`` block: the transform done
once per weight, kept between blocks, and the layers' forwards patched while the block runs.

Used by :func:`~dalle2_fast.nn.packed_linears` (few-row linears on packed panels) and, without a
kept transform, :func:`~dalle2_fast.nn.winograd_convs` (3x3 convolutions by Winograd). A
patched layer's forward is ``functools.partial(fast_forward, layer, transformed, version)``;
``fast_forward`` falls back to the layer's own math whenever ``layer.weight._version`` is no
longer ``version`` (a weight changed inside the block).
"""
from __future__ import annotations

import contextlib
import weakref
from functools import partial
from typing import Callable

import torch
from torch import nn


class KeptTransforms:
    """Per layer: (a weak reference to its weight, the weight's version, the transformed weight)."""

    def __init__(self):
        self._kept: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()

    def __contains__(self, layer: nn.Module) -> bool:
        return layer in self._kept

    def get(self, layer: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor], keep: bool) -> torch.Tensor:
        """``transform(layer.weight)``, reused while the weight is the same tensor, unchanged;
        keep=False: computed afresh and nothing held for this layer afterwards."""
        w = layer.weight
        hit = self._kept.get(layer) if keep else self._kept.pop(layer, None)
        if hit is not None and hit[0]() is w and hit[1] == w._version:
            return hit[2]
        out = transform(w)
        if keep:
            self._kept[layer] = (weakref.ref(w), w._version, out)
        return out


@contextlib.contextmanager
def patched_forwards(layers: list[nn.Module], kept: KeptTransforms | None, transform, fast_forward, keep: bool):
    """Within the block every layer's forward is ``partial(fast_forward, layer, transformed weight,
    weight version)`` (transform None: no transformed weight, None passed); restored on exit."""
    patched = []
    try:
        for layer in layers:
            t = None if transform is None else kept.get(layer, transform, keep)
            layer.forward = partial(fast_forward, layer, t, layer.weight._version)
            patched.append(layer)
        yield
    finally:
        for layer in patched:
            del layer.forward


def is_patched(layer: nn.Module, fast_forward) -> bool:
    """Whether ``layer`` is inside a block patched with ``fast_forward``, its weight unchanged since."""
    f = layer.__dict__.get("forward")
    return type(f) is partial and f.func is fast_forward and layer.weight._version == f.args[2]


def transformed_weight(layer: nn.Module, fast_forward) -> torch.Tensor | None:
    """The transformed weight ``layer`` runs on inside a block patched with ``fast_forward``; None
    outside one, or when its weight changed inside the block."""
    return layer.__dict__["forward"].args[1] if is_patched(layer, fast_forward) else None


__all__ = ["KeptTransforms", "is_patched", "patched_forwards", "transformed_weight"]
