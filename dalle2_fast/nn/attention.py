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

One internal channel layout: the fused projection's 3 * inner output channels are ordered
[q|k|v][head][c] (``qkv.view(B, T, 3, heads, dim_head)``; guided-diffusion's "new attention
order"), and a context key/value projection's 2 * inner channels [k|v][head][c]. Checkpoints in
other layouts (guided-diffusion's legacy ``QKVAttentionLegacy``, GLIDE / unCLIP's head-major
``qkv`` and ``encoder_kv``, their 1x1 conv1d weights) are mapped onto this one by a state-dict
transform in :mod:`dalle2_fast.interop.guided_diffusion`, never by a second code path here.

Cached keys/values (``past``, a :class:`~dalle2_fast.nn.kv_cache.KVLayer`): in self-attention
and 'concat' mode they are prepended to the keys/values of x (a prefix computed once, or a
growing cache for token-by-token decoding; a growing layer stores [past; x]'s), in 'cross' mode
they are the context's own (:meth:`Attention.context_kv` projects a context once). Results equal
the uncached call's to float tolerance.

Optional QK normalisation (``qk_norm=True``): LayerNorm over each head's channels of q and k
before the dot product (Dehghani et al. 2023, ViT-22B), which keeps logits bounded.
"""
from __future__ import annotations

import torch
from torch import nn

from dalle2_fast.nn.kv_cache import KVLayer
from dalle2_fast.ops import attention

_CONTEXT_MODES = ("cross", "concat")


def _split_heads(t: torch.Tensor, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """(B, T, parts * heads * dh) in the [part][head][c] layout -> ``parts`` tensors
    (B, heads, T, dh) (views, no copy)."""
    B, T, C = t.shape
    t = t.view(B, T, parts, heads, C // (parts * heads))  # [part][head][c]
    # unbind, not indexing: backward then stacks the parts into one buffer (no zero-filled copies)
    return t.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, T, dh) each


def tokenwise(fn, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """A token-wise function (a norm, a projection, an MLP: (N, C) -> (N, C')) applied to several
    token sets xs[i] (B_i, T_i, C) in one call on all their tokens (one GEMM instead of one per
    set) -> [(B_i, T_i, C')]."""
    sizes = [x.shape[0] * x.shape[1] for x in xs]
    out = fn(torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]))
    return [o.view(*x.shape[:2], o.shape[-1]) for x, o in zip(xs, out.split(sizes))]


class Attention(nn.Module):
    """Args:
    dim: channels of the input tokens x (B, T, dim) and of the output.
    heads / dim_head: number of heads and/or channels per head (at least one).
    context_dim: channels of context tokens (B, Tc, context_dim); None for self-attention.
    context_mode: 'cross' (attend to context only) or 'concat' (attend to [context; x]).
    qk_norm: LayerNorm on each head's q and k.
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
        if context_mode not in _CONTEXT_MODES:
            raise ValueError(f"Attention: context_mode must be one of {_CONTEXT_MODES}, got {context_mode!r}")
        self.dim, self.heads, self.dim_head = dim, heads, dim_head
        self.context_dim, self.context_mode = context_dim, context_mode
        self.causal, self.backend = causal, backend
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

    def context_kv(self, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> KVLayer:
        """The keys/values of context tokens (B, Tc, context_dim) ('cross' or 'concat' mode), computed
        once for many calls: pass the result as ``past`` instead of ``context`` / ``context_mask``."""
        if self.context_dim is None:
            raise ValueError("Attention.context_kv: the module was built without context_dim")
        if context.dim() != 3 or context.shape[-1] != self.context_dim:
            raise ValueError(f"Attention.context_kv: context must be (B, Tc, {self.context_dim}), "
                             f"got {tuple(context.shape)}")
        proj = self.to_kv if self.context_mode == "cross" else self.to_context_kv
        k, v = _split_heads(proj(context), 2, self.heads)  # (B, H, Tc, dh)
        if self.k_norm is not None:
            k = self.k_norm(k)
        mask = None if context_mask is None else context_mask.to(torch.bool)
        return KVLayer(k, v, mask)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None, past: KVLayer | None = None, last: int | None = None,
    ) -> torch.Tensor:
        """x: (B, T, dim); context: (B, Tc, context_dim), required in 'cross' mode, optional in
        'concat' mode (None: plain self-attention over x); context_mask: optional (B, Tc) bool,
        True = padded context token; key_padding_mask: optional (B, T) bool, True = padded x
        token, ignored as a key (self-attention and 'concat' mode; with ``causal`` every query
        must still see a key, e.g. token 0 unpadded); past: cached keys/values (module
        docstring), instead of ``context``; last: only the last ``last`` tokens query (all T
        still give keys and values; with ``causal`` they see what they saw in the whole call).
        -> (B, T, dim), or (B, last, dim)."""
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"Attention: x must be (B, T, {self.dim}), got {tuple(x.shape)}")
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= x.shape[1]):
            raise ValueError(f"Attention: last must be None or an int in [1, T={x.shape[1]}], got {last!r}")
        if past is not None:
            return self._forward_cached(x, past, key_padding_mask, context, context_mask, last)
        if context is not None and self.context_dim is None:
            raise ValueError(f"Attention: context given (shape {tuple(context.shape)}) but the module was built "
                             "without context_dim")
        if context is None and self.context_dim is not None and self.context_mode == "cross":
            raise ValueError(f"Attention: context must be given in 'cross' mode (context_dim={self.context_dim})")
        if context is not None and (context.dim() != 3 or context.shape[-1] != self.context_dim
                                    or context.shape[0] != x.shape[0]):
            raise ValueError(f"Attention: context must be (B={x.shape[0]}, Tc, {self.context_dim}), "
                             f"got {tuple(context.shape)}")
        if context_mask is not None and (context is None or tuple(context_mask.shape) != tuple(context.shape[:2])):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"Attention: context_mask must be (B, Tc) matching context, got "
                             f"{tuple(context_mask.shape)} with context {got}")
        if key_padding_mask is not None:
            if context is not None and self.context_mode == "cross":
                raise ValueError("Attention: key_padding_mask masks x tokens as keys; in 'cross' mode the keys "
                                 "are the context tokens (use context_mask)")
            if tuple(key_padding_mask.shape) != tuple(x.shape[:2]):
                raise ValueError(f"Attention: key_padding_mask must be (B, T) = {tuple(x.shape[:2])}, "
                                 f"got {tuple(key_padding_mask.shape)}")
        B, T, H = x.shape[0], x.shape[1], self.heads
        mask = context_mask if context is not None else key_padding_mask  # (B, Tc) or (B, T), True = padded
        mask = None if mask is None else mask.to(torch.bool)
        if context is None:
            q, k, v = _split_heads(self.to_qkv(x), 3, H)  # each (B, H, T, dh)
        elif self.context_mode == "cross":
            q = self.to_q(x).view(B, T, H, self.dim_head).transpose(1, 2)  # (B, H, T, dh)
            k, v = _split_heads(self.to_kv(context), 2, H)  # (B, H, Tc, dh)
        else:  # concat: keys/values are [context; x]
            q, k, v = _split_heads(self.to_qkv(x), 3, H)
            ck, cv = _split_heads(self.to_context_kv(context), 2, H)  # (B, H, Tc, dh)
            k, v = torch.cat([ck.to(k.dtype), k], dim=2), torch.cat([cv.to(v.dtype), v], dim=2)  # (B, H, Tc + T, dh)
            if mask is not None or key_padding_mask is not None:  # (B, Tc + T), True = padded
                own = (key_padding_mask.to(torch.bool) if key_padding_mask is not None
                       else torch.zeros(B, T, dtype=torch.bool, device=x.device))
                ctx = mask if mask is not None else own.new_zeros(context.shape[:2])
                mask = torch.cat([ctx, own], dim=1)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return self._attend(q, k, v, mask, B, T, last)

    def _attend(self, q, k, v, mask, B: int, T: int, last: int | None = None) -> torch.Tensor:
        if last is not None:  # only the trailing queries (bottom-right causal alignment keeps their view)
            q, T = q[:, :, -last:], last
        out = attention(q, k, v, causal=self.causal, key_padding_mask=mask, backend=self.backend)  # (B, H, T, dh)
        out = out.transpose(1, 2).reshape(B, T, self.heads * self.dim_head)  # (B, T, inner)
        return self.to_out(out)

    def _forward_cached(self, x, past: KVLayer, key_padding_mask, context, context_mask,
                        last: int | None = None) -> torch.Tensor:
        if context is not None or context_mask is not None:
            raise ValueError("Attention: pass context (and context_mask) or past (its cached keys/values), not both")
        B, T, H = x.shape[0], x.shape[1], self.heads
        if past.k is not None and past.k.shape[0] != B:
            raise ValueError(f"Attention: past holds batch {past.k.shape[0]}, x has batch {B}")
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, T):
            raise ValueError(f"Attention: key_padding_mask must be (B, T) = {(B, T)}, got {tuple(key_padding_mask.shape)}")
        if self.context_dim is not None and self.context_mode == "cross":
            if past.k is None:
                raise ValueError("Attention: in 'cross' mode past must hold the context's keys/values (context_kv)")
            if key_padding_mask is not None:
                raise ValueError("Attention: key_padding_mask masks x tokens as keys; in 'cross' mode the keys "
                                 "are the context tokens (their mask is the cached one)")
            q = self.to_q(x).view(B, T, H, self.dim_head).transpose(1, 2)  # (B, H, T, dh)
            if self.q_norm is not None:
                q = self.q_norm(q)
            return self._attend(q, past.k.to(q.dtype), past.v.to(q.dtype), past.mask, B, T, last)
        q, k, v = _split_heads(self.to_qkv(x), 3, H)  # (B, H, T, dh) each
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # cached keys were normed when they were computed
        own = None if key_padding_mask is None else key_padding_mask.to(torch.bool)
        k, v, mask = past.extend(k, v, own)  # (B, H, P + T, dh), mask (B, P + T) or None
        return self._attend(q, k, v, mask, B, T, last)

    def forward_parts(self, xs: list[torch.Tensor], pasts: list[KVLayer]) -> list[torch.Tensor]:
        """Self-attention of several token sets that do not attend to each other (e.g. prefixes of
        different lengths), each with its own cache layer (``past``, as in :meth:`forward`):
        xs[i] (B_i, T_i, dim) -> (B_i, T_i, dim). The projections run once on all their tokens
        together (one GEMM each instead of one per set), the attention within each set: the
        same outputs as ``forward(xs[i], past=pasts[i])`` for every i, to float rounding."""
        if self.context_dim is not None and self.context_mode == "cross":
            raise ValueError("Attention.forward_parts: self-attention only (this module is in 'cross' mode)")
        if len(xs) != len(pasts) or not xs:
            raise ValueError(f"Attention.forward_parts: needs one past per token set, got {len(xs)} sets and "
                             f"{len(pasts)} pasts")
        for x, past in zip(xs, pasts):
            if x.dim() != 3 or x.shape[-1] != self.dim:
                raise ValueError(f"Attention.forward_parts: each x must be (B, T, {self.dim}), got {tuple(x.shape)}")
            if past.k is not None and past.k.shape[0] != x.shape[0]:
                raise ValueError(f"Attention.forward_parts: a past holds batch {past.k.shape[0]}, its x {x.shape[0]}")
        outs = []
        for part, past in zip(tokenwise(self.to_qkv, xs), pasts):  # one qkv GEMM for all sets
            B, T = part.shape[:2]
            q, k, v = _split_heads(part, 3, self.heads)
            if self.q_norm is not None:
                q, k = self.q_norm(q), self.k_norm(k)
            k, v, mask = past.extend(k, v, None)
            out = attention(q, k, v, causal=self.causal, key_padding_mask=mask, backend=self.backend)
            outs.append(out.transpose(1, 2).reshape(B, T, self.heads * self.dim_head))
        return tokenwise(self.to_out, outs)


__all__ = ["Attention", "tokenwise"]
