"""Named architecture presets for the U-Net family and the noisy classifier.

Each is faithful to its paper's architecture choices at a width that trains on a CPU within
minutes on the 32x32 shapes data (the papers' widths in brackets). Override any field:
``unet_preset("adm-32", num_classes=4)`` (an unknown field name raises TypeError).

- ddpm-32   Ho et al. 2020 (CIFAR-10): GN ResBlocks, time embedding added, attention at 16,
            one head, dropout 0.1, fixed variance. [128 channels]
- iddpm-32  Nichol & Dhariwal 2021 (CIFAR-10): learned variance (6 output channels), 3 res
            blocks, 4 heads at 16 and 8, dropout 0.3. [128 channels]
- adm-32    Dhariwal & Nichol 2021 choices at 32x32: AdaGN, BigGAN up/down ResBlocks, 32-channel
            heads at 16 and 8, learned variance; class-conditional once num_classes is set.
- adm-64    the released ImageNet-64 model's layout (channel_mult 1,2,3,4, 3 res blocks,
            attention at 32, 16, 8 with 64-channel heads, dropout 0.1, learned variance) at
            reduced width. [192 channels]
- classifier-32  the ADM noisy classifier (encoder half + attention pooling) at 32x32.
"""
from __future__ import annotations

from dalle2_fast.models.classifier import ClassifierConfig
from dalle2_fast.models.unet import UNetConfig

UNET_PRESETS: dict[str, UNetConfig] = {
    "ddpm-32": UNetConfig(
        image_size=32, model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
        attention_resolutions=(16,), num_heads=1, dropout=0.1,
    ),
    "iddpm-32": UNetConfig(
        image_size=32, model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=3,
        attention_resolutions=(16, 8), num_heads=4, dropout=0.3, learn_sigma=True,
    ),
    "adm-32": UNetConfig(
        image_size=32, model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
        attention_resolutions=(16, 8), num_head_channels=32, dropout=0.1, learn_sigma=True,
        use_scale_shift_norm=True, resblock_updown=True,
    ),
    "adm-64": UNetConfig(
        image_size=64, model_channels=64, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
        attention_resolutions=(32, 16, 8), num_head_channels=64, dropout=0.1, learn_sigma=True,
        use_scale_shift_norm=True, resblock_updown=True,
    ),
}

CLASSIFIER_PRESETS: dict[str, ClassifierConfig] = {
    "classifier-32": ClassifierConfig(
        image_size=32, num_classes=10, model_channels=64, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
        attention_resolutions=(16, 8), num_head_channels=32, use_scale_shift_norm=True,
        resblock_updown=True, pool="attention",
    ),
}


def unet_preset(name: str, **overrides) -> UNetConfig:
    """The named UNetConfig with ``overrides`` applied."""
    if name not in UNET_PRESETS:
        raise KeyError(f"unet_preset: unknown preset {name!r}; known: {sorted(UNET_PRESETS)}")
    return UNET_PRESETS[name].replace(**overrides)


def classifier_preset(name: str, **overrides) -> ClassifierConfig:
    """The named ClassifierConfig with ``overrides`` applied."""
    if name not in CLASSIFIER_PRESETS:
        raise KeyError(f"classifier_preset: unknown preset {name!r}; known: {sorted(CLASSIFIER_PRESETS)}")
    return CLASSIFIER_PRESETS[name].replace(**overrides)
