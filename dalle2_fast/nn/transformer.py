"""The pre-LN transformer the priors are built from (GPT-2 style; Radford et al. 2019, Sec. 2.3).

``TransformerBlock``: x + Attn(LN(x)), then x + MLP(LN(x)), the attention being
:class:`dalle2_fast.nn.Attention` (the package's one attention module, on ``ops.attention``).
``Transformer``: learned positions, an optional LayerNorm on the input (``input_norm``, as
diffusers' ``PriorTransformer(norm_in_type="layer")``), a stack of blocks, a final LayerNorm. Masks follow
``ops.attention``: ``key_padding_mask`` (B, S) True = padded token (ignored as a key), causal
attention bottom-right aligned (query i sees keys j <= i + Sk - Sq).

Each block computes its keys and values in one place (its ``attn``'s fused ``to_qkv``). That is
where a prefix KV cache would hook in: under causal attention a prefix's keys and values at
every layer depend on the prefix only (e.g. the diffusion prior's text tokens, the same at
every sampling step), so they could be computed once and concatenated in front of the
suffix's — bottom-right alignment already lets a suffix of queries attend to them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dalle2_fast.nn.attention import Attention


class TransformerBlock(nn.Module):
    """Pre-LN block on (B, S, width) tokens; ``causal`` self-attention by default."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, causal: bool = True):
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"TransformerBlock: width {width} must be divisible by heads {heads} (>= 1)")
        if mlp_ratio <= 0:
            raise ValueError(f"TransformerBlock: mlp_ratio must be > 0, got {mlp_ratio}")
        hidden = int(width * mlp_ratio)
        self.ln1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads=heads, causal=causal)  # qkv channels [q|k|v][head][c]
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), key_padding_mask=key_padding_mask)
        return x + self.mlp(self.ln2(x))


class Transformer(nn.Module):
    """``layers`` blocks over sequences of at most ``max_len`` tokens, with learned positions
    and a final LayerNorm (``input_norm``: also one on the input, after the positions).
    forward: x (B, S, width), key_padding_mask (B, S) bool or None -> (B, S, width). Residual
    projections get GPT-2's 1/sqrt(2 * layers) init scale."""

    def __init__(self, width: int, layers: int, heads: int, max_len: int, causal: bool = True,
                 mlp_ratio: float = 4.0, input_norm: bool = False):
        super().__init__()
        if layers < 1 or max_len < 1:
            raise ValueError(f"Transformer: layers and max_len must be >= 1, got {layers} and {max_len}")
        self.pos = nn.Parameter(torch.randn(max_len, width) * 0.01)
        self.ln_in = nn.LayerNorm(width) if input_norm else None
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio, causal) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        for blk in self.blocks:
            nn.init.normal_(blk.attn.to_out.weight, std=0.02 / math.sqrt(2 * layers))
            nn.init.normal_(blk.mlp[2].weight, std=0.02 / math.sqrt(2 * layers))

    @property
    def max_len(self) -> int:
        return self.pos.shape[0]

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.pos.shape[1]:
            raise ValueError(f"Transformer: x must be (B, S, {self.pos.shape[1]}), got {tuple(x.shape)}")
        if x.shape[1] > self.max_len:
            raise ValueError(f"Transformer: sequence length {x.shape[1]} > max_len {self.max_len}")
        x = x + self.pos[: x.shape[1]].to(x.dtype)
        if self.ln_in is not None:
            x = self.ln_in(x)
        for blk in self.blocks:
            x = blk(x, key_padding_mask)
        return self.ln(x)


__all__ = ["Transformer", "TransformerBlock"]
