"""The causal transformer shared by the unCLIP priors, and their text conditioning.

Every attention call goes through :func:`attention`, one function with the signature and mask
convention of ``dalle2_fast.ops.attention`` (key_padding_mask True = padding, bottom-right causal):
it calls that op when the package has it, else ``F.scaled_dot_product_attention``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.nn.embeddings import timestep_embedding  # noqa: F401  (re-exported)


try:  # the package's flash-attention op, when this build has it
    from dalle2_fast.ops import attention as _fused_attention
except ImportError:  # pragma: no cover - depends on the build
    _fused_attention = None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              key_padding_mask: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention. q: (B, H, Sq, d), k/v: (B, H, Sk, d) -> (B, H, Sq, d).

    causal: query i sees keys j <= i + (Sk - Sq) (bottom-right aligned, so a query suffix works);
    key_padding_mask: (B, Sk) bool, True = padding (ignored). Every query row must keep a key.
    """
    if _fused_attention is not None:
        return _fused_attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask, scale=scale)
    return attention_sdpa(q, k, v, causal, key_padding_mask, scale)


def attention_sdpa(q, k, v, causal=False, key_padding_mask=None, scale=None) -> torch.Tensor:
    """:func:`attention` on ``F.scaled_dot_product_attention`` (the fallback, and a test oracle)."""
    if key_padding_mask is None and (not causal or q.shape[-2] == k.shape[-2]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    sq, sk = q.shape[-2], k.shape[-2]
    allowed = torch.ones(sq, sk, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril(sk - sq)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :].to(torch.bool)  # (B, 1, Sq, Sk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"Block: width {width} must be divisible by heads {heads}")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, causal: bool, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        b, s, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        a = attention(q, k, v, causal=causal, key_padding_mask=key_padding_mask)  # (B, H, S, d)
        x = x + self.proj(a.transpose(1, 2).reshape(b, s, w))
        return x + self.mlp(self.ln2(x))


class CausalTransformer(nn.Module):
    """A stack of :class:`Block` with learned positions and a final LayerNorm. x: (B, S, W);
    key_padding_mask: (B, S) bool, True = padding."""

    def __init__(self, width: int, layers: int, heads: int, max_len: int):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(max_len, width) * 0.01)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        for blk in self.blocks:  # GPT-2 style scaled init of the residual projections
            nn.init.normal_(blk.proj.weight, std=0.02 / math.sqrt(2 * layers))
            nn.init.normal_(blk.mlp[2].weight, std=0.02 / math.sqrt(2 * layers))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                causal: bool = True) -> torch.Tensor:
        if x.shape[1] > self.pos.shape[0]:
            raise ValueError(f"CausalTransformer: sequence length {x.shape[1]} > max_len {self.pos.shape[0]}")
        x = x + self.pos[: x.shape[1]]
        for blk in self.blocks:
            x = blk(x, causal, key_padding_mask)
        return self.ln(x)


class TextConditioning(nn.Module):
    """Projects CLIP text tokens (B, L, W_text) and z_t (B, D) to the prior's width, and replaces
    them by learned null values where ``drop`` is True (classifier-free guidance, Ho & Salimans).

    Returns (tokens (B, L, W), token mask (B, L), text embedding token (B, 1, W)).
    """

    def __init__(self, text_width: int, text_len: int, clip_dim: int, width: int):
        super().__init__()
        self.text_len = text_len
        self.tok_proj = nn.Linear(text_width, width)
        self.emb_proj = nn.Linear(clip_dim, width)
        self.null_tokens = nn.Parameter(torch.randn(text_len, width) * 0.02)
        self.null_emb = nn.Parameter(torch.randn(width) * 0.02)

    def forward(self, text_tokens: torch.Tensor, text_mask: torch.Tensor, text_embed: torch.Tensor,
                drop: torch.Tensor | None = None):
        b, l, _ = text_tokens.shape
        if l != self.text_len:
            raise ValueError(f"TextConditioning: text_tokens must have L={self.text_len}, got {l}")
        if text_mask.shape != (b, l):
            raise ValueError(f"TextConditioning: text_mask must be ({b}, {l}), got {tuple(text_mask.shape)}")
        tok = self.tok_proj(text_tokens)
        emb = self.emb_proj(text_embed)
        mask = text_mask.to(torch.bool)
        if drop is not None:
            d = drop.to(torch.bool).view(b, 1)
            tok = torch.where(d[..., None], self.null_tokens.to(tok.dtype).expand(b, -1, -1), tok)
            emb = torch.where(d, self.null_emb.to(emb.dtype).expand(b, -1), emb)
            mask = mask | d
        return tok, mask, emb[:, None]
