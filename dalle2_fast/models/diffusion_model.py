"""A U-Net together with the diffusion process it was trained for, as one registered checkpoint
(``model_type`` 'diffusion_unet'): ``dalle2-fast sample`` needs nothing but the checkpoint to
know the schedule, the variance type and what the class labels mean.

Labels on the shapes data (``label_kind``): 'shape' (5 classes: the shape kind), 'colour' (6),
'class' (30: colour x shape) or 'none' (unconditional). With ``p_uncond`` > 0 the U-Net gets one
extra class, the null label (index ``num_labels``), and training drops the label to it with that
probability, so classifier-free guidance works on the same network.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.data.shapes import COLOUR_NAMES, COLOURS, NUM_CLASSES, SHAPES, class_id
from dalle2_fast.diffusion import DiffusionConfig, GaussianDiffusion
from dalle2_fast.models.unet import UNet, UNetConfig

LABEL_KINDS = ("none", "shape", "colour", "class")


def num_labels(kind: str) -> int:
    """Classes of a label kind (0 for 'none')."""
    if kind not in LABEL_KINDS:
        raise ValueError(f"label kind must be one of {LABEL_KINDS}, got {kind!r}")
    return {"none": 0, "shape": len(SHAPES), "colour": len(COLOURS), "class": NUM_CLASSES}[kind]


def kind_for_num_classes(n: int) -> str:
    """The label kind a classifier with ``n`` logits was trained on (5, 6 or 30 classes)."""
    kinds = {len(SHAPES): "shape", len(COLOURS): "colour", NUM_CLASSES: "class"}
    if n not in kinds:
        raise ValueError(f"a classifier with {n} classes matches no shapes label kind {kinds}")
    return kinds[n]


def labels_from_batch(kind: str, class_ids: torch.Tensor) -> torch.Tensor | None:
    """Shapes class ids (colour x shape) -> labels of ``kind`` (None for 'none')."""
    if kind == "none":
        return None
    if kind == "shape":
        return class_ids // len(COLOURS)
    if kind == "colour":
        return class_ids % len(COLOURS)
    return class_ids


def parse_label(kind: str, text: str) -> int:
    """'circle' / 'red' / 'red circle' / an integer -> a label of ``kind``."""
    n = num_labels(kind)
    if n == 0:
        raise ValueError("--label: this model is unconditional (label kind 'none')")
    if text.strip().isdigit():
        k = int(text)
        if not 0 <= k < n:
            raise ValueError(f"--label: {kind} labels are 0..{n - 1}, got {k}")
        return k
    words = text.lower().split()
    col = [w for w in words if w in COLOUR_NAMES]
    shp = [w for w in words if w in SHAPES]
    if kind == "shape" and len(shp) == 1 and not col:
        return SHAPES.index(shp[0])
    if kind == "colour" and len(col) == 1 and not shp:
        return COLOUR_NAMES.index(col[0])
    if kind == "class" and len(col) == 1 and len(shp) == 1:
        return class_id(shp[0], col[0])
    want = {"shape": f"one of {SHAPES}", "colour": f"one of {COLOUR_NAMES}",
            "class": "'<colour> <shape>'"}[kind]
    raise ValueError(f"--label: expected an integer or {want} for {kind} labels, got {text!r}")


def label_name(kind: str, k: int) -> str:
    if kind == "shape":
        return SHAPES[k]
    if kind == "colour":
        return COLOUR_NAMES[k]
    from dalle2_fast.data.shapes import class_name
    return class_name(k)


def recognised_as(image: torch.Tensor, kind: str, k: int | None, min_score: float = 0.7) -> bool:
    """The detector finds a well-formed object of label ``k`` (of ``kind``) in ``image``; with
    k None: at least one detection and all of them well-formed."""
    from dalle2_fast.eval.detector import detect, recognised

    if k is None or kind == "none":
        return recognised(image, None, min_score)
    if kind == "class":
        return recognised(image, int(k), min_score)
    good = [d for d in detect(image) if d.score >= min_score]
    if kind == "shape":
        return any(d.shape == SHAPES[k] for d in good)
    return any(d.colour == COLOUR_NAMES[k] for d in good)


def recognition_rate_of(images: torch.Tensor, kind: str, labels) -> float:
    """Fraction of images recognised as their label (``labels`` None: unconditional check)."""
    if len(images) == 0:
        raise ValueError("recognition_rate_of: no images")
    hits = sum(recognised_as(images[i], kind, None if labels is None else int(labels[i])) for i in range(len(images)))
    return hits / len(images)


@dataclass(frozen=True)
class DiffusionModelConfig:
    """unet: the network; diffusion: the process it is trained for; label_kind: what its class
    labels mean; p_uncond: label-drop probability (> 0 adds the null class for CFG)."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    label_kind: str = "none"
    p_uncond: float = 0.0

    def __post_init__(self):
        n = num_labels(self.label_kind)
        want = None if n == 0 else n + (1 if self.p_uncond > 0 else 0)
        if self.unet.num_classes != want:
            raise ValueError(f"DiffusionModelConfig: label_kind {self.label_kind!r} with p_uncond={self.p_uncond} "
                             f"needs unet.num_classes={want}, got {self.unet.num_classes}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"DiffusionModelConfig: p_uncond must be in [0, 1), got {self.p_uncond}")
        learned = self.diffusion.var_type == "learned_range"
        if learned != self.unet.learn_sigma:
            raise ValueError(f"DiffusionModelConfig: diffusion var_type {self.diffusion.var_type!r} needs "
                             f"unet.learn_sigma={learned}, got {self.unet.learn_sigma}")


@register_model("diffusion_unet")
class DiffusionModel(nn.Module, Pretrained):
    """``DiffusionModel(config)``: ``.unet`` (a :class:`UNet`) and ``.diffusion()`` (its
    :class:`GaussianDiffusion`). ``num_labels`` real classes; ``null_label`` (or None) for CFG."""

    config_class = DiffusionModelConfig

    def __init__(self, config: DiffusionModelConfig):
        super().__init__()
        if not isinstance(config, DiffusionModelConfig):
            raise TypeError(f"DiffusionModel: config must be a DiffusionModelConfig, got {type(config).__name__}")
        self.config = config
        self.unet = UNet(config.unet)

    @property
    def num_labels(self) -> int:
        return num_labels(self.config.label_kind)

    @property
    def null_label(self) -> int | None:
        return self.num_labels if self.config.p_uncond > 0 else None

    def diffusion(self, respacing: str | None = None) -> GaussianDiffusion:
        from dataclasses import replace
        return GaussianDiffusion.from_config(replace(self.config.diffusion, respacing=respacing))

    def forward(self, x, t, y=None):  # noqa: D102
        return self.unet(x, t, y)
