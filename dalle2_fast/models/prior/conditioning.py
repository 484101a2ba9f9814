"""What the two unCLIP priors share besides the transformer: the text conditioning (with the
classifier-free-guidance null values), per-candidate seeds and the best-of-n selection."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from dalle2_fast.nn.kv_cache import KVCache
from dalle2_fast.seeding import MAX_SEED


class TextConditioning(nn.Module):
    """Projects CLIP text tokens (B, L, W_text) and z_t (B, D) to the prior's width, and replaces
    them by learned null values where ``drop`` is True (classifier-free guidance, Ho & Salimans).

    learned_null=False: no null values (the unconditional branch is another caption's encoding,
    e.g. the empty prompt's, as Karlo and Kandinsky do; ``drop`` must then be None).
    embed_norm: a LayerNorm on z_t before its projection (diffusers' ``embedding_proj_norm``).

    Returns (tokens (B, L, W), token mask (B, L) bool True = real, text embedding token (B, 1, W)).
    """

    def __init__(self, text_width: int, text_len: int, clip_dim: int, width: int, learned_null: bool = True,
                 embed_norm: bool = False):
        super().__init__()
        self.text_len = text_len
        self.tok_proj = nn.Linear(text_width, width)
        self.emb_norm = nn.LayerNorm(clip_dim) if embed_norm else None
        self.emb_proj = nn.Linear(clip_dim, width)
        if learned_null:
            self.null_tokens = nn.Parameter(torch.randn(text_len, width) * 0.02)
            self.null_emb = nn.Parameter(torch.randn(width) * 0.02)
        else:
            self.null_tokens = self.null_emb = None

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, text_embed: torch.Tensor,
                drop: torch.Tensor | None = None):
        b, l, _ = text_tokens.shape
        if l != self.text_len:
            raise ValueError(f"TextConditioning: text_tokens must have L={self.text_len}, got {l}")
        if text_mask.shape != (b, l):
            raise ValueError(f"TextConditioning: text_mask must be ({b}, {l}), got {tuple(text_mask.shape)}")
        tok = self.tok_proj(text_tokens)
        emb = self.emb_proj(text_embed if self.emb_norm is None else self.emb_norm(text_embed))
        mask = text_mask.to(torch.bool)
        if drop is not None and self.null_emb is None:
            raise ValueError("TextConditioning: drop given but this model has no learned null text (its "
                             "unconditional branch is a caption's encoding, e.g. the empty prompt's)")
        if drop is not None:
            d = drop.to(torch.bool).view(b, 1)
            tok = torch.where(d[..., None], self.null_tokens.to(tok.dtype).expand(b, -1, -1), tok)
            emb = torch.where(d, self.null_emb.to(emb.dtype).expand(b, -1), emb)
            mask = mask | d
        return tok, mask, emb[:, None]


def text_fields(text, raw: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(tokens (B, L, W), mask (B, L) bool, embed (B, D)) of a text encoding: any object with
    ``.tokens``, ``.mask`` and ``.embed`` (e.g. the CLIP adapter's ``TextEncoding``). ``raw``:
    the embedding is ``.raw_embed`` (CLIP's projected text embedding before L2 normalisation)."""
    missing = [k for k in ("tokens", "mask", "embed") if not hasattr(text, k)]
    if missing:
        raise TypeError(f"text: expected an encoding with .tokens, .mask and .embed (e.g. "
                        f"clip.encode_text(prompts)), got {type(text).__name__} without {missing}")
    if raw:
        if getattr(text, "raw_embed", None) is None:
            raise ValueError("text: this model reads CLIP's raw (unnormalised) text embedding, but the encoding "
                             "has no .raw_embed (encode the prompts with ClipAdapter.encode_text)")
        return text.tokens, text.mask, text.raw_embed
    return text.tokens, text.mask, text.embed


def candidate_seeds(seeds: Sequence[int], c: int) -> list[int]:
    """The seeds of candidate ``c`` of each image: candidate 0 draws from the image's own seed,
    candidate c > 0 from a seed derived from (seed, c) only — never from the batch."""
    if c == 0:
        return [int(s) for s in seeds]
    return [(int(s) * 6_364_136_223_846_793_005 + 1_442_695_040_888_963_407 * c) % MAX_SEED for s in seeds]


def repeat_batch(v, n: int):
    """A tensor or a :class:`~dalle2_fast.nn.KVCache` with its batch repeated n times
    (candidate-major: [rows] * n)."""
    if isinstance(v, KVCache):
        return v.repeat(n)
    return v.repeat(n, *([1] * (v.dim() - 1)))


def batch_of(v) -> int:
    """The batch size of a tensor or a KVCache."""
    return v.batch if isinstance(v, KVCache) else v.shape[0]


def select_best(candidates: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
    """Of candidates (C, B, D), the one per caption with the largest dot product with z_t (B, D)."""
    best = (candidates * text_embed.float()[None]).sum(-1).argmax(0)  # (B,)
    return candidates[best, torch.arange(candidates.shape[1], device=candidates.device)]


__all__ = ["TextConditioning", "batch_of", "candidate_seeds", "repeat_batch", "select_best", "text_fields"]
