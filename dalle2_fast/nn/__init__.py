"""Layers built on the kernel ops."""
from dalle2_fast.nn.adagn import AdaGN
from dalle2_fast.nn.attention import Attention
from dalle2_fast.nn.kv_cache import KVCache, KVLayer
from dalle2_fast.nn.packed_linear import packed_linears
from dalle2_fast.nn.transformer import Transformer, TransformerBlock
from dalle2_fast.nn.vq import VectorQuantizer, VQOutput
from dalle2_fast.nn.winograd import winograd_convs

__all__ = ["AdaGN", "Attention", "KVCache", "KVLayer", "Transformer", "TransformerBlock", "VectorQuantizer", "VQOutput",
           "packed_linears", "winograd_convs"]
