"""Models: the GAN / autoencoder / VQ family (each registered for ``checkpoint.load_pretrained``
under its ``model_type``), the U-Net family (DDPM / Improved DDPM / ADM) and its noisy classifier,
and the unCLIP stages (priors, decoder, upsamplers)."""
from dalle2_fast.models.autoencoders import AEConfig, AutoEncoder, DAEConfig, DenoisingAutoEncoder, VAE, VAEConfig
from dalle2_fast.models.classifier import ClassifierConfig, NoisyClassifier
from dalle2_fast.models.decoder import DecoderConfig, UnCLIPDecoder
from dalle2_fast.models.diffusion_model import DiffusionModel, DiffusionModelConfig
from dalle2_fast.models.gan import GAN, GANConfig
from dalle2_fast.models.pixelcnn import PixelCNN, PixelCNNConfig
from dalle2_fast.models.prior import ARPriorConfig, AutoregressivePrior, DiffusionPrior, DiffusionPriorConfig
from dalle2_fast.models.unet import UNet, UNetConfig
from dalle2_fast.models.upsampler import UnCLIPUpsampler, UpsamplerConfig
from dalle2_fast.models.vqvae import VQVAE, VQVAEConfig
from dalle2_fast.models.vqvae2 import VQVAE2, VQVAE2Config
from dalle2_fast.models.vqvae2_prior import VQVAE2Generator, VQVAE2GeneratorConfig

__all__ = ["AEConfig", "AutoEncoder", "DAEConfig", "DenoisingAutoEncoder", "VAE", "VAEConfig", "GAN",
           "GANConfig", "PixelCNN", "PixelCNNConfig", "VQVAE", "VQVAEConfig", "VQVAE2", "VQVAE2Config",
           "VQVAE2Generator", "VQVAE2GeneratorConfig", "ClassifierConfig", "NoisyClassifier", "UNet", "UNetConfig",
           "DiffusionModel", "DiffusionModelConfig", "DecoderConfig", "UnCLIPDecoder", "UnCLIPUpsampler",
           "UpsamplerConfig", "ARPriorConfig", "AutoregressivePrior", "DiffusionPrior", "DiffusionPriorConfig"]
