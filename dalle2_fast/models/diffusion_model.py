"""A U-Net together with the diffusion process it was trained for, as one registered checkpoint
(``model_type`` 'diffusion_unet'): the DDPM / Improved DDPM / ADM models of the suite.
``dalle2-fast sample --checkpoint`` needs nothing but the checkpoint to know the schedule, the
variance type and the class labels.

``num_classes`` real classes (0: unconditional). With ``p_uncond`` > 0 the U-Net gets one extra
class, the null label (index ``num_classes``), and training drops the label to it with that
probability, so classifier-free guidance works on the same network (Ho & Salimans 2021).
``class_names`` optionally names the classes (what the data's labels mean), so that a user can
ask for ``--label circle``; the model itself only ever sees integers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.diffusion import (SAMPLERS, ClassifierFreeGuidance, ClassifierGuidance, DiffusionConfig,
                                   GaussianDiffusion, respace, run_sampler)
from dalle2_fast.diffusion.repaint import inpaint_sampling
from dalle2_fast.models.unet import UNet, UNetConfig, convert_v1_unet_state_dict
from dalle2_fast.seeding import Draws, check_seeds


@dataclass(frozen=True)
class DiffusionModelConfig:
    """unet: the network; diffusion: the process it is trained for; num_classes: real classes
    (0: unconditional); p_uncond: label-drop probability (> 0 adds the null class for CFG);
    class_names: optional name of each class (id -> name)."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    num_classes: int = 0
    p_uncond: float = 0.0
    class_names: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"DiffusionModelConfig: num_classes must be an int >= 0, got {self.num_classes!r}")
        if not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"DiffusionModelConfig: p_uncond must be in [0, 1), got {self.p_uncond}")
        want = None if self.num_classes == 0 else self.num_classes + (1 if self.p_uncond > 0 else 0)
        if self.unet.num_classes != want:
            raise ValueError(f"DiffusionModelConfig: num_classes={self.num_classes} with p_uncond={self.p_uncond} "
                             f"needs unet.num_classes={want}, got {self.unet.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"DiffusionModelConfig: class_names has {len(self.class_names)} names for "
                             f"{self.num_classes} classes")
        learned = self.diffusion.var_type == "learned_range"
        if learned != self.unet.learn_sigma:
            raise ValueError(f"DiffusionModelConfig: diffusion var_type {self.diffusion.var_type!r} needs "
                             f"unet.learn_sigma={learned}, got {self.unet.learn_sigma}")


@register_model("diffusion_unet")
class DiffusionModel(nn.Module, Pretrained):
    """``model(x_t, t, y=None)`` is the U-Net; ``model.diffusion`` its process; ``loss(batch)``
    trains it; ``sample(...)`` draws images."""

    config_class = DiffusionModelConfig

    def __init__(self, config: DiffusionModelConfig):
        super().__init__()
        if not isinstance(config, DiffusionModelConfig):
            raise TypeError(f"DiffusionModel: config must be a DiffusionModelConfig, got {type(config).__name__}")
        self.config = config
        self.unet = UNet(config.unet)
        self.diffusion = GaussianDiffusion.from_config(config.diffusion)

    @classmethod
    def _upgrade_config(cls, raw: dict) -> dict:
        """Checkpoints written before the redesign named the shapes label kind ('label_kind');
        the class count is what the model needs."""
        kind = raw.pop("label_kind", None)
        if kind is not None:
            counts = {"none": 0, "shape": 5, "colour": 6, "class": 30}
            if kind not in counts:
                raise ValueError(f"label_kind: expected one of {sorted(counts)} (a checkpoint written before the "
                                 f"redesign), got {kind!r}")
            raw.setdefault("num_classes", counts[kind])
        return raw

    @classmethod
    def _upgrade_state_dict(cls, state: dict, config) -> dict:
        """Checkpoints with the U-Net's v1 attention-block keys (written before the U-Net moved
        onto nn.Attention) load unchanged."""
        return convert_v1_unet_state_dict(state, prefix="unet.")

    @property
    def num_labels(self) -> int:
        return self.config.num_classes

    @property
    def null_label(self) -> int | None:
        return self.config.num_classes if self.config.p_uncond > 0 else None

    def forward(self, x, t, y=None):  # noqa: D102
        return self.unet(x, t, y)

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """batch: ``image`` (B, C, S, S) in [-1, 1], ``label`` (B,) int64 class ids when the model is
        conditional, optional ``seeds`` (ItemSeeds) / ``generator``. Per-item timestep, noise and
        label drop come from the batch's draws. Returns {'loss', 'mse'[, 'vb']} (batch means)."""
        x0 = batch["image"]
        draws = Draws.of(batch, x0.shape[0], x0.device)
        y = batch.get("label") if self.config.num_classes else None
        if self.config.num_classes and y is None:
            raise ValueError(f"DiffusionModel.loss: a model with {self.config.num_classes} classes needs "
                             "batch['label']")
        if y is not None and self.null_label is not None:
            drop = draws.bernoulli("label_drop", self.config.p_uncond)
            y = torch.where(drop, torch.full_like(y, self.null_label), y)
        t = draws.randint("t", self.diffusion.num_timesteps)
        noise = draws.randn("noise", x0.shape[1:], x0.dtype)
        terms = self.diffusion.training_losses(self.unet, x0, t, noise=noise,
                                               model_kwargs={"y": y} if y is not None else None)
        return {k: v.mean() for k, v in terms.items()}

    # ------------------------------------------------------------------ sampling
    def check_labels(self, labels, n: int, num_classes: int | None = None) -> torch.Tensor | None:
        """(n,) int64 class ids in [0, num_classes) (default: this model's classes), or None."""
        k = self.config.num_classes if num_classes is None else num_classes
        if labels is None:
            return None
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if k == 0:
            raise ValueError("labels: this model is unconditional (num_classes=0)")
        if labels.shape != (n,) or int(labels.min()) < 0 or int(labels.max()) >= k:
            raise ValueError(f"labels: expected {n} class ids in [0, {k}), got {labels.tolist()[:8]}")
        return labels

    @torch.no_grad()
    def sample(self, labels=None, *, seeds: Sequence[int], sampler: str = "ddim", steps: int | str | None = 50,
               eta: float = 0.0, guidance_scale: float = 1.0, classifier: nn.Module | None = None,
               classifier_scale: float = 0.0, clip: str | None = "static", progress: bool = False, known=None,
               mask=None, jumps=None) -> torch.Tensor:
        """Images (n, C, S, S) in [-1, 1], n = len(seeds); image i depends only on seeds[i] (and its label).

        labels: (n,) class ids (conditional models; default: cycling through the classes).
        sampler / steps / eta: see :func:`dalle2_fast.diffusion.run_sampler` (steps in the respacing
        vocabulary). guidance_scale: classifier-free guidance s (1 = the conditional model; needs a
        model trained with p_uncond > 0). classifier / classifier_scale: ADM classifier guidance
        (Dhariwal & Nichol Alg. 1) with a noisy classifier over the same label ids (for an
        unconditional model the labels are the classifier's). Inpainting: ``known`` (n or 1, C, S, S)
        in [-1, 1], ``mask`` (n or 1, 1 or C, S, S), 1 = keep the known pixel; ``jumps`` =
        (jump_length, jump_n_sample) adds RePaint's resampling (``diffusion.repaint``)."""
        n = len(check_seeds(seeds, len(seeds)))
        if n == 0:
            raise ValueError("sample: seeds is empty (one seed per image)")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler: expected one of {SAMPLERS}, got {sampler!r}")
        cfg = self.config
        guided = classifier is not None and classifier_scale != 0
        label_classes = cfg.num_classes or (classifier.config.num_classes if guided else 0)
        if labels is None and label_classes:
            labels = torch.arange(n) % label_classes
        labels = self.check_labels(labels, n, label_classes) if label_classes else None
        if guidance_scale != 1.0 and self.null_label is None:
            raise ValueError(f"guidance_scale: classifier-free guidance needs a model trained with label dropout "
                             f"(p_uncond > 0); this one has num_classes={cfg.num_classes}, p_uncond={cfg.p_uncond}")
        dev = next(self.parameters()).device
        kw, den = {}, self.unet
        if cfg.num_classes:
            kw["y"] = labels.to(dev)
        if guidance_scale != 1.0:
            den = ClassifierFreeGuidance(self.unet, guidance_scale,
                                         {"y": torch.full((1,), self.null_label, dtype=torch.long, device=dev)})
        process = self.diffusion if steps is None else respace(self.diffusion, steps)
        if guided:
            if classifier.config.num_classes != label_classes:
                raise ValueError(f"classifier: predicts {classifier.config.num_classes} classes but the model's labels "
                                 f"have {label_classes}")
            key = "y" if cfg.num_classes else "cls_y"
            if key == "cls_y":
                base = den

                def den(x, t, cls_y=None):  # the unconditional model ignores the classifier's labels
                    return base(x, t)
                kw["cls_y"] = labels.to(dev)
            den = ClassifierGuidance(den, classifier.eval(), process, classifier_scale, label_key=key)
        S, C = cfg.unet.image_size, cfg.unet.in_channels
        sampler, eta, inpaint = inpaint_sampling(sampler, eta, known, mask, jumps)
        x = run_sampler(sampler, den, process, (n, C, S, S), eta=eta, model_kwargs=kw, clip=clip,
                        seeds=list(seeds), progress=progress, device=dev, **inpaint)
        return x.clamp(-1, 1)


__all__ = ["DiffusionModel", "DiffusionModelConfig"]
