"""Layers built on the kernel ops."""
from dalle2_fast.nn.adagn import AdaGN
from dalle2_fast.nn.attention import Attention
from dalle2_fast.nn.kv_cache import KVCache, KVLayer
from dalle2_fast.nn.transformer import Transformer, TransformerBlock
from dalle2_fast.nn.vq import VectorQuantizer, VQOutput

__all__ = ["AdaGN", "Attention", "KVCache", "KVLayer", "Transformer", "TransformerBlock", "VectorQuantizer", "VQOutput"]
