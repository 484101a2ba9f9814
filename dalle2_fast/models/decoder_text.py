"""The decoder's own text transformer, as GLIDE has it (Nichol et al. 2021, Sec. 2.3 and App. A;
Ramesh et al. 2022, Sec. 2.1: the unCLIP decoder keeps GLIDE's text conditioning pathway).

A small causal transformer, trained with the decoder, reads the caption's tokens; its output
sequence, projected to the U-Net's ``context_dim``, is what the U-Net's attention blocks attend
to (after the four tokens projected from the CLIP image embedding, which the U-Net itself adds),
and its final token, projected to the time-embedding width, is added to the timestep embedding.

As in GLIDE, padded positions read a learned per-position padding embedding (not a mask), and
the transformer runs over all ``text_len`` positions with causal attention: the final position
has seen the whole caption, and a dropped caption (every token padded: the classifier-free
unconditional branch) gives a constant, learned final token. The U-Net's cross-attention still
masks the padded positions, as the decoder's plain text path does.

One departure: GLIDE embeds BPE token ids from scratch; here the transformer's input is the
frozen CLIP text encoder's token features (``TextEncoding.tokens``, (B, L, W)), projected to the
transformer's width. That keeps the decoder independent of the tokenizer's vocabulary (a
49,408-entry BPE embedding at width 128 alone would be 25 MB, most of the shipped pipeline's
budget) and lets the transformer build on what CLIP already encodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dalle2_fast.nn import Transformer


@dataclass(frozen=True)
class TextTransformerConfig:
    """layers, width and heads of the decoder's text transformer (GLIDE: 24 x 2048, 32 heads)."""

    layers: int = 2
    width: int = 128
    heads: int = 2

    def __post_init__(self):
        for name in ("layers", "width", "heads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TextTransformerConfig.{name} must be an int >= 1, got {v!r}")
        if self.width % self.heads:
            raise ValueError(f"TextTransformerConfig: width {self.width} must be divisible by heads {self.heads}")


class DecoderTextTransformer(nn.Module):
    """``(tokens (B, L, text_width), mask (B, L) bool True = real) -> (context (B, L, context_dim),
    final (B, emb_dim))``: the U-Net's caption context and the final token's time-embedding term."""

    def __init__(self, config: TextTransformerConfig, text_width: int, text_len: int, context_dim: int, emb_dim: int):
        super().__init__()
        c = self.config = config
        self.text_len = text_len
        self.inp = nn.Linear(text_width, c.width)
        self.padding = nn.Parameter(torch.randn(text_len, c.width) * 0.02)  # GLIDE's padding_embedding
        self.transformer = Transformer(c.width, c.layers, c.heads, max_len=text_len, causal=True)
        self.to_context = nn.Linear(c.width, context_dim)
        self.to_time = nn.Linear(c.width, emb_dim)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens.dim() != 3 or tokens.shape[1] != self.text_len or mask.shape != tokens.shape[:2]:
            raise ValueError(f"DecoderTextTransformer: tokens must be (B, {self.text_len}, W) and mask (B, "
                             f"{self.text_len}), got {tuple(tokens.shape)} and {tuple(mask.shape)}")
        x = self.inp(tokens)  # (B, L, width)
        x = torch.where(mask.to(torch.bool)[..., None], x, self.padding[None].to(x.dtype))
        h = self.transformer(x)  # causal over every position: the last one has read the whole caption
        return self.to_context(h), self.to_time(h[:, -1])


__all__ = ["TextTransformerConfig", "DecoderTextTransformer"]
