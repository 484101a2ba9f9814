"""VQ-VAE-2 generator: a trained VQ-VAE-2 plus its two PixelCNN priors (Razavi et al. 2019,
Sec. 3.2): the top prior (with self-attention) over top codes given the label, the bottom prior
over bottom codes given the label and the top codes. Sampling: top, then bottom, then decode."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.models.pixelcnn import PixelCNN, PixelCNNConfig
from dalle2_fast.models.vqvae2 import VQVAE2, VQVAE2Config


@dataclass
class VQVAE2GeneratorConfig:
    vqvae: VQVAE2Config = field(default_factory=VQVAE2Config)
    top: PixelCNNConfig = field(default_factory=PixelCNNConfig)
    bottom: PixelCNNConfig = field(default_factory=PixelCNNConfig)


def prior_configs(vq: VQVAE2Config, channels: int = 64, n_layers: int = 8, label: str = "class",
                  attention_every: int = 4) -> tuple[PixelCNNConfig, PixelCNNConfig]:
    """Top and bottom prior configs matched to the code maps of ``vq``."""
    bhw = vq.resolution >> vq.bottom_down
    thw = bhw >> vq.top_down
    top = PixelCNNConfig(num_codes=vq.num_codes, height=thw, width=thw, channels=channels, n_layers=n_layers,
                         label=label, attention_every=attention_every)
    bottom = PixelCNNConfig(num_codes=vq.num_codes, height=bhw, width=bhw, channels=channels, n_layers=n_layers,
                            label=label, cond_codes=vq.num_codes, cond_up=vq.top_down)
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
    def from_vqvae(cls, vqvae: VQVAE2, **prior_kw) -> "VQVAE2Generator":
        top, bottom = prior_configs(vqvae.config, **prior_kw)
        gen = cls(VQVAE2GeneratorConfig(vqvae.config, top, bottom))
        gen.vqvae.load_state_dict(vqvae.state_dict())
        return gen

    def prior_parameters(self):
        return list(self.top_prior.parameters()) + list(self.bottom_prior.parameters())

    def loss(self, x: torch.Tensor, label=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(total, top, bottom) cross-entropy of the priors on the frozen VQ-VAE-2's codes of x."""
        top, bottom = self.vqvae.encode(x)
        lt = self.top_prior.loss(top, label)
        lb = self.bottom_prior.loss(bottom, label, cond=top)
        return lt + lb, lt, lb

    @torch.no_grad()
    def sample_codes(self, n: int, label=None, temperature: float = 1.0,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        top = self.top_prior.sample(n, label, temperature=temperature, generator=generator)
        bottom = self.bottom_prior.sample(n, label, cond=top, temperature=temperature, generator=generator)
        return top, bottom

    @torch.no_grad()
    def sample(self, n: int, label=None, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n images (n, C, R, R) in [-1, 1]."""
        return self.vqvae.decode_indices(*self.sample_codes(n, label, temperature, generator))
