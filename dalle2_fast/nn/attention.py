"""Multi-head attention block on ``ops.attention`` (flash kernels), for the U-Net's spatial
and text/CLIP-token attention, the diffusion / AR prior transformer and the text encoder.

Tokens are (B, T, dim). Heads are given by count (``heads``) or by channels per head
(``dim_head``), or both (then the inner width heads * dim_head may differ from ``dim``).

Attention kinds:
- self-attention (``context_dim=None``);
- ``context_mode='cross'``: queries from x, keys/values from the context tokens only
  (Stable-Diffusion / DALLE2-pytorch cross-attention);
- ``context_mode='concat'``: keys/values are [context tokens; x tokens], as in GLIDE / unCLIP's
  decoder ``AttentionBlock(encoder_channels=...)``. With ``causal=True`` the bottom-right
  causal alignment of ``ops.attention`` lets every query see all context tokens plus the x
  tokens up to itself.

``qkv_layout`` says how the fused projection's 3 * inner output channels are split, for
loading guided-diffusion / GLIDE / unCLIP checkpoints (their 1x1 conv1d weights (3C, C, 1)
are our Linear weights with the last dim squeezed: see ``load_conv1d_qkv``):
- ``'new'`` — guided-diffusion ``QKVAttention`` (``use_new_attention_order=True``):
  ``qkv.view(B, T, 3, heads, dim_head)``, i.e. channels ordered [q|k|v][head][c]
  (guided-diffusion: ``qkv.chunk(3, dim=1)`` then ``view(B * heads, ch, T)``);
- ``'legacy'`` — guided-diffusion ``QKVAttentionLegacy`` and GLIDE's ``QKVAttention``:
  ``qkv.view(B, T, heads, 3, dim_head)``, i.e. channels ordered [head][q|k|v][c]
  (guided-diffusion: ``qkv.reshape(B * heads, 3 * ch, T).split(ch, dim=1)``).
The context key/value projection follows the same rule with 2 in place of 3 ([k|v][head][c]
for 'new', [head][k|v][c] for 'legacy', GLIDE's ``encoder_kv``).

Optional QK normalisation (``qk_norm=True``): LayerNorm over each head's channels of q and k
before the dot product (Dehghani et al. 2023, ViT-22B), which keeps logits bounded.
"""
from __future__ import annotations

import torch
from torch import nn

from dalle2_fast.ops import attention

_LAYOUTS = ("new", "legacy")
_CONTEXT_MODES = ("cross", "concat")


def _split_heads(t: torch.Tensor, parts: int, heads: int, layout: str) -> list[torch.Tensor]:
    """(B, T, parts * heads * dh) -> ``parts`` tensors (B, heads, T, dh) (views, no copy)."""
    B, T, C = t.shape
    dh = C // (parts * heads)
    if layout == "new":
        t = t.view(B, T, parts, heads, dh)  # [part][head][c]
        return [t[:, :, i].transpose(1, 2) for i in range(parts)]  # (B, heads, T, dh)
    t = t.view(B, T, heads, parts, dh)  # [head][part][c]
    return [t[:, :, :, i].transpose(1, 2) for i in range(parts)]  # (B, heads, T, dh)


class Attention(nn.Module):
    """Args:
    dim: channels of the input tokens x (B, T, dim) and of the output.
    heads / dim_head: number of heads and/or channels per head (at least one).
    context_dim: channels of context tokens (B, Tc, context_dim); None for self-attention.
    context_mode: 'cross' (attend to context only) or 'concat' (attend to [context; x]).
    qk_norm: LayerNorm on each head's q and k.
    qkv_layout: 'new' or 'legacy' channel order of the fused projections (module docstring).
    causal: causal self-attention (bottom-right aligned when context is concatenated).
    bias: biases in the projections.
    backend: forwarded to ``ops.attention``.
    """

    def __init__(
        self,
        dim: int,
        heads: int | None = None,
        dim_head: int | None = None,
        context_dim: int | None = None,
        context_mode: str = "cross",
        qk_norm: bool = False,
        qkv_layout: str = "new",
        causal: bool = False,
        bias: bool = True,
        backend: str | None = None,
    ):
        super().__init__()
        if heads is None and dim_head is None:
            raise ValueError("Attention: give heads or dim_head (or both)")
        if heads is None:
            if dim % dim_head:
                raise ValueError(f"Attention: dim={dim} is not a multiple of dim_head={dim_head}")
            heads = dim // dim_head
        elif dim_head is None:
            if dim % heads:
                raise ValueError(f"Attention: dim={dim} is not a multiple of heads={heads}")
            dim_head = dim // heads
        if heads < 1 or dim_head < 1:
            raise ValueError(f"Attention: heads and dim_head must be >= 1, got {heads} and {dim_head}")
        if qkv_layout not in _LAYOUTS:
            raise ValueError(f"Attention: qkv_layout must be one of {_LAYOUTS}, got {qkv_layout!r}")
        if context_mode not in _CONTEXT_MODES:
            raise ValueError(f"Attention: context_mode must be one of {_CONTEXT_MODES}, got {context_mode!r}")
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        self.context_dim, self.context_mode = context_dim, context_mode
        self.qkv_layout, self.causal, self.backend = qkv_layout, causal, backend
        inner = heads * dim_head
        if context_dim is not None and context_mode == "cross":
            self.to_q = nn.Linear(dim, inner, bias=bias)
            self.to_kv = nn.Linear(context_dim, 2 * inner, bias=bias)
        else:
            self.to_qkv = nn.Linear(dim, 3 * inner, bias=bias)
            if context_dim is not None:  # concat
                self.to_context_kv = nn.Linear(context_dim, 2 * inner, bias=bias)
        self.q_norm = nn.LayerNorm(dim_head) if qk_norm else None
        self.k_norm = nn.LayerNorm(dim_head) if qk_norm else None
        self.to_out = nn.Linear(inner, dim, bias=bias)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, dim); context: (B, Tc, context_dim) when the module has a context_dim;
        context_mask: optional (B, Tc) bool, True = padded context token; key_padding_mask:
        optional (B, T) bool, True = padded x token, ignored as a key (self-attention and
        'concat' mode; with ``causal`` every query must still see a key, e.g. token 0 unpadded).
        -> (B, T, dim)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"Attention: x must be (B, T, {self.dim}), got {tuple(x.shape)}")
        if (context is None) != (self.context_dim is None):
            raise ValueError(
                "Attention: context must be given exactly when the module was built with context_dim "
                f"(context_dim={self.context_dim}, got context={'None' if context is None else tuple(context.shape)})"
            )
        if context is not None and (context.dim() != 3 or context.shape[-1] != self.context_dim
                                    or context.shape[0] != x.shape[0]):
            raise ValueError(f"Attention: context must be (B={x.shape[0]}, Tc, {self.context_dim}), got {tuple(context.shape)}")
        if context_mask is not None and context is None:
            raise ValueError("Attention: context_mask given without context")
        if key_padding_mask is not None:
            if context is not None and self.context_mode == "cross":
                raise ValueError("Attention: key_padding_mask masks x tokens as keys; in 'cross' mode the keys "
                                 "are the context tokens (use context_mask)")
            if tuple(key_padding_mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"Attention: key_padding_mask must be (B, T) = {tuple(x.shape[:2])}, "
                                 f"got {tuple(key_padding_mask.shape)}")
        H, L = self.heads, self.qkv_layout
        mask = context_mask if context is not None else key_padding_mask
        if context is None:
            q, k, v = _split_heads(self.to_qkv(x), 3, H, L)  # each (B, H, T, dh)
        elif self.context_mode == "cross":
            q = self.to_q(x).view(x.shape[0], x.shape[1], H, self.dim_head).transpose(1, 2)  # (B, H, T, dh)
            k, v = _split_heads(self.to_kv(context), 2, H, L)  # (B, H, Tc, dh)
        else:  # concat: keys/values are [context; x]
            q, k, v = _split_heads(self.to_qkv(x), 3, H, L)
            ck, cv = _split_heads(self.to_context_kv(context), 2, H, L)
            k, v = torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)  # (B, H, Tc + T, dh)
            if mask is not None or key_padding_mask is not None:  # (B, Tc + T), True = padded
                own = key_padding_mask if key_padding_mask is not None else x.new_zeros(x.shape[:2], dtype=torch.bool)
                ctx = mask if mask is not None else own.new_zeros(context.shape[:2])
                mask = torch.cat([ctx.to(torch.bool), own.to(torch.bool)], dim=1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        out = attention(q, k, v, causal=self.causal, key_padding_mask=mask, backend=self.backend)  # (B, H, T, dh)
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], H * self.dim_head)  # (B, T, inner)
        return self.to_out(out)

    @torch.no_grad()
    def load_conv1d_qkv(
        self,
        qkv_weight: torch.Tensor,
        qkv_bias: torch.Tensor | None,
        proj_weight: torch.Tensor,
        proj_bias: torch.Tensor | None,
        encoder_kv_weight: torch.Tensor | None = None,
        encoder_kv_bias: torch.Tensor | None = None,
    ) -> None:
        """Load guided-diffusion / GLIDE ``AttentionBlock`` weights: ``qkv`` conv1d (3C, C, 1),
        ``proj_out`` conv1d (C, C, 1), optional ``encoder_kv`` conv1d (2C, Ce, 1). Build this
        module with the matching ``qkv_layout`` (their ``use_new_attention_order``). The block's
        GroupNorm and residual live outside this module."""
        if not hasattr(self, "to_qkv"):
            raise ValueError("Attention.load_conv1d_qkv: needs a fused qkv projection (self or concat mode)")
        for lin, w, b in ((self.to_qkv, qkv_weight, qkv_bias), (self.to_out, proj_weight, proj_bias)):
            w = w.squeeze(-1) if w.dim() == 3 else w
            if w.shape != lin.weight.shape:
                raise ValueError(f"Attention.load_conv1d_qkv: weight {tuple(w.shape)} does not match {tuple(lin.weight.shape)}")
            lin.weight.copy_(w)
            if lin.bias is not None and b is not None:
                lin.bias.copy_(b)
        if encoder_kv_weight is not None:
            if not hasattr(self, "to_context_kv"):
                raise ValueError("Attention.load_conv1d_qkv: encoder_kv given but the module has no concat context")
            w = encoder_kv_weight.squeeze(-1) if encoder_kv_weight.dim() == 3 else encoder_kv_weight
            self.to_context_kv.weight.copy_(w)
            if self.to_context_kv.bias is not None and encoder_kv_bias is not None:
                self.to_context_kv.bias.copy_(encoder_kv_bias)


__all__ = ["Attention"]
