"""Layers built on the kernel ops."""
from dalle2_fast.nn.vq import VectorQuantizer, VQOutput

__all__ = ["VectorQuantizer", "VQOutput"]
from dalle2_fast.nn.attention import Attention  # noqa: E402

__all__ += ["Attention"]
