"""Importers and exporters between our models and other projects' checkpoints.

- :mod:`dalle2_fast.interop.guided_diffusion`: OpenAI guided-diffusion / improved-diffusion U-Nets
  and noisy classifiers (load and export), and the GLIDE / unCLIP attention layouts.
- :mod:`dalle2_fast.interop.openai_clip`: OpenAI CLIP (its TorchScript archive read by a
  restricted unpickler, or a state dict) into the open_clip adapter, QuickGELU always.
- :mod:`dalle2_fast.interop.dalle2_pytorch`: DALLE2-pytorch / LAION diffusion priors (an
  allow-listed ``weights_only`` unpickle; per-release conventions).

Each importer is a rename table plus a few explicit tensor transforms, tested against the
original implementation. Models reach these through thin classmethods
(``UNet.from_guided_diffusion``, ...) that import this package lazily; nothing below ``models``
imports it.
"""
