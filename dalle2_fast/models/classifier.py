"""The noisy classifier of ADM classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

The U-Net's down path and middle block (same ResBlocks, AdaGN and attention) followed by a
pooling head: CLIP-style attention pooling (``pool='attention'``, the released classifiers)
or GN-SiLU-global-average-pool-1x1conv (``pool='adaptive'``). It is trained on noised images
x_t at random timesteps t to predict log p(y | x_t, t); the diffusion core's classifier
guidance uses the gradient of log_softmax(logits)[y] with respect to x_t.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import nn

from dalle2_fast.checkpoint import Pretrained, register_model
from dalle2_fast.models.unet import build_encoder, convert_v1_unet_state_dict, time_embed_mlp, validate_trunk
from dalle2_fast.nn.adagn import AdaGN
from dalle2_fast.nn.embeddings import timestep_embedding
from dalle2_fast.nn.unet_blocks import AttentionPool2d, TimestepSequential, _zero


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture of a :class:`NoisyClassifier`; fields mean what they mean in UNetConfig.
    num_classes: logits out. pool: 'attention' (needs num_head_channels) or 'adaptive'."""

    image_size: int = 32
    num_classes: int = 10
    in_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple[float, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16, 8)
    num_heads: int = 1
    num_head_channels: int | None = 64
    dropout: float = 0.0
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    num_groups: int = 32
    pool: str = "attention"
    use_checkpoint: bool = False

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(int(r) for r in self.attention_resolutions))
        validate_trunk(self, "ClassifierConfig")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"ClassifierConfig: num_classes must be a positive int, got {self.num_classes!r}")
        if self.pool not in ("attention", "adaptive"):
            raise ValueError(f"ClassifierConfig: pool must be 'attention' or 'adaptive', got {self.pool!r}")
        if self.pool == "attention" and self.num_head_channels is None:
            raise ValueError("ClassifierConfig: pool='attention' needs num_head_channels")

    def replace(self, **changes) -> "ClassifierConfig":
        """A copy with ``changes`` (unknown field names raise TypeError)."""
        return dataclasses.replace(self, **changes)


@register_model("noisy_classifier")
class NoisyClassifier(nn.Module, Pretrained):
    """``NoisyClassifier(config)(x, t) -> logits``. x: (B, in_channels, S, S) noised images at
    the configured image_size; t: (B,) timesteps. Returns (B, num_classes)."""

    config_class = ClassifierConfig

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        if not isinstance(config, ClassifierConfig):
            raise TypeError(f"NoisyClassifier: config must be a ClassifierConfig, got {type(config).__name__}")
        self.config = cfg = config
        emb_dim = 4 * cfg.model_channels
        self.time_embed = time_embed_mlp(cfg.model_channels)
        self.input_blocks, self.middle_block, chans, ds = build_encoder(cfg, emb_dim)
        ch = chans[-1]
        self.out_norm = AdaGN(ch, cfg.num_groups, act="silu")
        if cfg.pool == "attention":
            self.pool = AttentionPool2d(cfg.image_size // ds, ch, cfg.num_head_channels, cfg.num_classes)
        else:
            self.pool = _zero(nn.Conv2d(ch, cfg.num_classes, 1))
        self.set_checkpointing(cfg.use_checkpoint)

    def set_checkpointing(self, enabled: bool) -> None:
        """Turn activation (gradient) checkpointing of every block on or off."""
        for m in self.modules():
            if isinstance(m, TimestepSequential):
                m.use_checkpoint = bool(enabled)

    def forward(self, x, t):  # noqa: D102
        cfg = self.config
        if x.dim() != 4 or x.shape[1:] != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"NoisyClassifier: x must be (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}), "
                f"got {tuple(x.shape)}"
            )
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"NoisyClassifier: t must be (B,) = ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels))
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
        h = self.out_norm(self.middle_block(h, emb))
        if cfg.pool == "attention":
            return self.pool(h)
        return self.pool(h.mean(dim=(2, 3), keepdim=True)).flatten(1)

    @classmethod
    def _upgrade_state_dict(cls, state: dict, config) -> dict:
        """Checkpoints of the v1 attention-block layout load unchanged (the U-Net's conversion;
        the pooling head's own keys are the same in both layouts)."""
        return convert_v1_unet_state_dict(state)

    @classmethod
    def from_guided_diffusion(cls, state_dict_or_path, **flags) -> "NoisyClassifier":
        """Load a guided-diffusion classifier checkpoint given its published flags
        (image_size, classifier_width, classifier_depth, classifier_attention_resolutions,
        classifier_use_scale_shift_norm, classifier_resblock_updown, classifier_pool)."""
        from dalle2_fast.interop.guided_diffusion import classifier_from_openai

        return classifier_from_openai(state_dict_or_path, flags)

    def to_guided_diffusion_state_dict(self) -> dict:
        """This classifier's weights in guided-diffusion's EncoderUNetModel key layout."""
        from dalle2_fast.interop.guided_diffusion import to_openai_state_dict

        return to_openai_state_dict(self, use_new_attention_order=False)
