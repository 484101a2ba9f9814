"""What every recipe shares: ``--set key=value`` overrides of typed configs, the training data of
the suite (the embedded shapes or an image folder), and the task that trains a model by its own
``loss(batch)``."""
from __future__ import annotations

import dataclasses
import typing

import torch

from dalle2_fast.data import ImageFolderDataset, ShapesDataset
from dalle2_fast.train.distributed import item_dropout

HELDOUT_SEED_OFFSET = 1_000_003  # held-out images come from a different seed than training


def apply_overrides(cfg, overrides: list[str]):
    """``['channels=32', 'loss=hinge']`` -> a copy of dataclass ``cfg`` with those fields set,
    each value parsed as the field's type; an unknown field raises."""
    hints = typing.get_type_hints(type(cfg))
    kw = {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        if k not in hints:
            raise ValueError(f"--set {k}: {type(cfg).__name__} has no field {k!r}; fields: {sorted(hints)}")
        kw[k] = parse_field(k, hints[k], v)
    return dataclasses.replace(cfg, **kw)


def split_overrides(items, groups: dict) -> dict:
    """``['model_channels=32', 'schedule=linear']`` -> {group: [items]} by which dataclass
    (``groups``: name -> dataclass type or set of names) has the field; unknown names raise."""
    out = {g: [] for g in groups}

    def names(fields):
        return fields if isinstance(fields, set) else {f.name for f in dataclasses.fields(fields)}

    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k = item.split("=", 1)[0]
        for g, fields in groups.items():
            if k in names(fields):
                out[g].append(item)
                break
        else:
            known = sorted(n for f in groups.values() for n in names(f))
            raise ValueError(f"--set {k}: unknown field; fields: {known}")
    return out


def parse_field(k: str, t, v: str):
    """Parse ``v`` as the dataclass field type ``t``: bool, int, float, str, ``X | None``
    ('none' -> None) and ``tuple[X, ...]`` (comma-separated)."""
    args = typing.get_args(t)
    if type(None) in args and len(args) == 2:
        if v.lower() == "none":
            return None
        t = next(a for a in args if a is not type(None))
        args = typing.get_args(t)
    if typing.get_origin(t) is tuple and args:
        return tuple(parse_field(k, args[0], p) for p in v.split(",") if p.strip())
    if t is bool:
        if v.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--set {k}: expected true/false, got {v!r}")
        return v.lower() in ("true", "1")
    if t in (int, float, str):
        try:
            return t(v)
        except ValueError:
            raise ValueError(f"--set {k}: expected {t.__name__}, got {v!r}") from None
    raise ValueError(f"--set {k}: field type {t} cannot be set from the command line")


def make_datasets(data: str, resolution: int, seed: int, eval_size: int):
    """(training data, held-out data): the infinite shapes stream of ``seed`` and a held-out set of
    another seed, or an image folder (both)."""
    if data == "shapes":
        return (ShapesDataset(resolution, seed=seed),
                ShapesDataset(resolution, seed=seed + HELDOUT_SEED_OFFSET, size=eval_size))
    folder = ImageFolderDataset(data, resolution)
    return folder, folder


class LossTask:
    """Trains a model by its ``loss(batch) -> {'loss': scalar, ...}`` (the diffusion models, the
    priors, CLIP, the VQ-VAE-2 priors): AdamW, gradient clipping, per-item dropout masks from the
    items' seeds. Subclasses provide ``name``, ``build``, ``datasets`` and may override
    ``prepare(batch)`` (turn a data batch into the model's batch) and the defaults below."""

    default_lr = 1e-3
    default_ema = 0.0
    weight_decay = 0.0
    betas = (0.9, 0.999)
    grad_clip: float | None = 1.0
    ddp_parts = ("loss",)

    def optimizers(self, model, lr):
        params = [p for p in model.parameters() if p.requires_grad]
        return {"model": torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay, betas=self.betas)}

    def prepare(self, batch: dict) -> dict:
        return batch

    def step(self, model, batch, opts) -> dict:
        model.train()
        batch = self.prepare(batch)
        with item_dropout(model, batch["seeds"]):  # dropout masks from the items' seeds (forward and recompute)
            terms = model.loss(batch)
            opts["model"].zero_grad(set_to_none=True)
            terms["loss"].backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], self.grad_clip)
        opts["model"].step()
        return {"loss": float(terms["loss"].detach()),
                **{k: float(v.detach()) for k, v in terms.items() if k != "loss"}}


def warmup_cosine(step: int, steps: int, warmup: int, floor: float = 0.0) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine decay from 1 to ``floor``."""
    import math

    w = min(1.0, (step + 1) / max(1, warmup))
    prog = min(1.0, max(0, step - warmup) / max(1, steps - warmup))
    return w * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog)))


__all__ = ["apply_overrides", "split_overrides", "parse_field", "make_datasets", "LossTask", "warmup_cosine",
           "HELDOUT_SEED_OFFSET"]
