"""Label spaces of the shapes data: what a class-conditional model's integer labels mean.

A model only knows ``num_classes`` (and, for the command line's ``--label red``, the names of
its classes, stored in its config); which property of a shapes image a label encodes lives
here. Kinds: 'shape' (5 classes: the shape kind), 'colour' (6), 'class' (30: colour x shape,
the dataset's own ``label``) or 'none' (unconditional).
"""
from __future__ import annotations

import torch

from dalle2_fast.data.shapes import COLOUR_NAMES, COLOURS, NUM_CLASSES, SHAPES, class_name

LABEL_KINDS = ("none", "shape", "colour", "class")


def num_labels(kind: str) -> int:
    """Classes of a label kind (0 for 'none')."""
    if kind not in LABEL_KINDS:
        raise ValueError(f"label kind must be one of {LABEL_KINDS}, got {kind!r}")
    return {"none": 0, "shape": len(SHAPES), "colour": len(COLOURS), "class": NUM_CLASSES}[kind]


def label_names(kind: str) -> tuple[str, ...]:
    """The name of each class of ``kind``: ('circle', ...), ('red', ...) or ('red circle', ...)."""
    n = num_labels(kind)
    if kind == "shape":
        return tuple(SHAPES)
    if kind == "colour":
        return tuple(COLOUR_NAMES)
    return tuple(class_name(k) for k in range(n))


def kind_of(names) -> str:
    """The label kind whose class names are ``names`` ('none' for no names)."""
    names = tuple(names)
    for kind in LABEL_KINDS:
        if label_names(kind) == names:
            return kind
    raise ValueError(f"these class names are no shapes label kind: {names[:6]}...")


def kind_for_num_classes(n: int) -> str:
    """The label kind with ``n`` classes (5, 6 or 30)."""
    kinds = {len(SHAPES): "shape", len(COLOURS): "colour", NUM_CLASSES: "class"}
    if n not in kinds:
        raise ValueError(f"{n} classes match no shapes label kind {kinds}")
    return kinds[n]


def labels_from_class_ids(kind: str, class_ids: torch.Tensor) -> torch.Tensor | None:
    """The dataset's class ids (colour x shape) -> labels of ``kind`` (None for 'none')."""
    if kind == "none":
        return None
    if kind == "shape":
        return class_ids // len(COLOURS)
    if kind == "colour":
        return class_ids % len(COLOURS)
    if kind == "class":
        return class_ids
    raise ValueError(f"label kind must be one of {LABEL_KINDS}, got {kind!r}")


__all__ = ["LABEL_KINDS", "num_labels", "label_names", "kind_of", "kind_for_num_classes", "labels_from_class_ids"]
