"""VQ-VAE-2 generator: a trained VQ-VAE-2 plus its two PixelCNN priors (Razavi et al. 2019,
Sec. 3.2): the top prior (with self-attention) over top codes given the label, the bottom prior
over bottom codes given the label and the top codes. Sampling: top, then bottom, then decode;
with ``seeds``, image i depends only on ``seeds[i]`` (the top and bottom priors draw from two
streams derived from it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.models.pixelcnn import PixelCNN, PixelCNNConfig, convert_v1_state_dict
from dalle2_fast.models.vqvae2 import VQVAE2, VQVAE2Config
from dalle2_fast.seeding import check_seeds, stage_seeds

_STAGE_TOP, _STAGE_BOTTOM = 1, 2


@dataclass(frozen=True)
class VQVAE2GeneratorConfig:
    vqvae: VQVAE2Config = field(default_factory=VQVAE2Config)
    top: PixelCNNConfig = field(default_factory=lambda: PixelCNNConfig(label="none"))
    bottom: PixelCNNConfig = field(default_factory=lambda: PixelCNNConfig(label="none"))


def prior_configs(vq: VQVAE2Config, channels: int = 64, n_layers: int = 8, label: str = "class",
                  attention_every: int = 4, num_classes: int = 0,
                  vocab_size: int = 0) -> tuple[PixelCNNConfig, PixelCNNConfig]:
    """Top and bottom prior configs matched to the code maps of ``vq``. ``num_classes`` (label
    'class') or ``vocab_size`` (label 'caption') must be given for a conditional prior."""
    bhw = vq.resolution >> vq.bottom_down
    thw = bhw >> vq.top_down
    lab = dict(label=label, num_classes=num_classes, vocab_size=vocab_size)
    top = PixelCNNConfig(num_codes=vq.num_codes, height=thw, width=thw, channels=channels, n_layers=n_layers,
                         attention_every=attention_every, **lab)
    bottom = PixelCNNConfig(num_codes=vq.num_codes, height=bhw, width=bhw, channels=channels, n_layers=n_layers,
                            cond_codes=vq.num_codes, cond_up=vq.top_down, **lab)
    return top, bottom


@register_model("vqvae2_generator")
class VQVAE2Generator(nn.Module, Pretrained):
    config_class = VQVAE2GeneratorConfig

    def __init__(self, config: VQVAE2GeneratorConfig):
        super().__init__()
        self.config = config
        self.vqvae = VQVAE2(config.vqvae)
        self.top_prior = PixelCNN(config.top)
        self.bottom_prior = PixelCNN(config.bottom)

    @classmethod
    def _upgrade_state_dict(cls, state: dict, config: VQVAE2GeneratorConfig) -> dict:
        return convert_v1_state_dict(state)  # the priors' attention, before the redesign

    @classmethod
    def from_vqvae(cls, vqvae: VQVAE2, **prior_kw) -> "VQVAE2Generator":
        """A generator around a trained ``vqvae``; ``prior_kw`` go to :func:`prior_configs`."""
        top, bottom = prior_configs(vqvae.config, **prior_kw)
        gen = cls(VQVAE2GeneratorConfig(vqvae.config, top, bottom))
        gen.vqvae.load_state_dict(vqvae.state_dict())
        return gen

    def prior_parameters(self):
        return list(self.top_prior.parameters()) + list(self.bottom_prior.parameters())

    def loss(self, batch: dict) -> dict[str, torch.Tensor]:
        """Cross-entropy of the priors on the frozen VQ-VAE-2's codes: {'loss' (top + bottom),
        'top_nll', 'bottom_nll'}. batch: ``image`` (B, C, R, R) in [-1, 1] and, for conditional
        priors, ``label`` (class ids (B,) or caption token ids (B, L), per ``config.top.label``)."""
        if "image" not in batch:
            raise ValueError("VQVAE2Generator.loss: batch needs 'image' (B, C, R, R)")
        label = batch.get("label")
        if self.config.top.label != "none" and label is None:
            raise ValueError(f"VQVAE2Generator.loss: the priors are conditioned on a {self.config.top.label!r} "
                             f"label: batch needs 'label'")
        with torch.no_grad():  # the VQ-VAE-2 is frozen: its codes are the priors' data
            top, bottom = self.vqvae.encode(batch["image"])
        lt = self.top_prior.loss(top, label)
        lb = self.bottom_prior.loss(bottom, label, cond=top)
        return {"loss": lt + lb, "top_nll": lt, "bottom_nll": lb}

    @torch.no_grad()
    def sample_codes(self, n: int, label=None, temperature: float = 1.0, *, seeds: Sequence[int] | None = None,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(top (n, h, w), bottom (n, H, W)) code maps; ``seeds``/``generator`` as :meth:`sample`."""
        top_s = bottom_s = None
        if seeds is not None:
            seeds = check_seeds(seeds, n)
            top_s, bottom_s = stage_seeds(seeds, _STAGE_TOP), stage_seeds(seeds, _STAGE_BOTTOM)
        top = self.top_prior.sample(n, label, temperature=temperature, seeds=top_s, generator=generator)
        bottom = self.bottom_prior.sample(n, label, cond=top, temperature=temperature, seeds=bottom_s,
                                          generator=generator)
        return top, bottom

    @torch.no_grad()
    def sample(self, n: int, label=None, temperature: float = 1.0, *, seeds: Sequence[int] | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n images (n, C, R, R) in [-1, 1]. seeds: one int per image (image i depends only on
        ``seeds[i]``); or ``generator`` (one stream for the batch); neither: the global RNG."""
        return self.vqvae.decode_indices(*self.sample_codes(n, label, temperature, seeds=seeds,
                                                            generator=generator))
