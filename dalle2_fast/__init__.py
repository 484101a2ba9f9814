"""dalle2_fast: DALL-E 2 (unCLIP) and the models it grew from, on our own kernels.

Layers (imports point down): cli -> pipeline -> models -> diffusion -> nn -> ops -> kernels.
"""
__version__ = "0.1.0"

from dalle2_fast import ops  # noqa: F401  (registers the custom ops)
