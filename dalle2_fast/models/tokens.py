"""The batch packing both shapes-CLIP tokenizers share (``models.clip.WordTokenizer`` and
``models.bpe.BPETokenizer``): each text's ids between the start and end tokens, cut to the context
length with the end token kept, zero-padded (padding id 0)."""
from __future__ import annotations

from typing import Sequence

import torch


class PackedTokenizer:
    """Subclasses give ``encode(text) -> list[int]``, ``SOT``, ``eot_token_id`` and ``context_length``."""

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for i, t in enumerate(texts):
            ids = [self.SOT] + self.encode(t)[: n - 2] + [self.eot_token_id]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


__all__ = ["PackedTokenizer"]
