"""Models: the U-Net family (DDPM / Improved DDPM / ADM) and its noisy classifier, ..."""
from dalle2_fast.models.classifier import ClassifierConfig, NoisyClassifier
from dalle2_fast.models.unet import UNet, UNetConfig

__all__ = ["ClassifierConfig", "NoisyClassifier", "UNet", "UNetConfig"]
