"""Multi-query causal attention with a learned null key/value (Shazeer 2019: every query head
shares one key/value head), the attention of the DALLE2-pytorch diffusion prior.

    x -> LN(x) -> q: (B, H, S, dh), [k | v]: (B, S, dh) each (one head)
    q, k <- rotary(q), rotary(k)           positions 0..S-1, first ``rot_dim`` channels
    k, v <- [null_k; k], [null_v; v]        (B, S + 1, dh): a learned key/value every query sees
    logits = scale * <q', k'> + bias_scale * bias          (B, H, S, S + 1)
    out = LN(W_o softmax(logits + causal mask) v)

with q', k' = q, k for ``similarity='dot'`` (scale = dh^-1/2) and the L2-normalised q, k for
``similarity='cosine'`` (cosine-similarity attention, a fixed ``scale``; Henry et al. 2020's
QK-norm with a constant temperature). ``bias`` is an additive (H, S, S + 1) bias from the
caller (the prior's T5 relative positions, indexed over [null; keys]), ``bias_scale`` a constant
factor on it (1, or the PB-relax alpha of older DALLE2-pytorch releases, see
``models/prior/laion.py``). The causal mask is bottom-right aligned: query i sees the null key
and keys 0..i. Both layer norms are gain-only (no bias).

The product runs through torch's ``scaled_dot_product_attention`` with the bias (and the
causal mask) as a float ``attn_mask`` — not ``ops.attention``, whose kernels take no additive
bias. The key/value computation is one method, :meth:`MultiQueryAttention.keys_values`, and a
:class:`~dalle2_fast.nn.kv_cache.KVLayer` (``past``) stores its output (keys already rotated, the
null key/value not included; (B, P, dh) each): the tokens of a call then sit at positions
P .. P + S - 1, their keys are [null; cached; own] and the causal mask stays bottom-right aligned,
so a constant prefix runs once (the LAION prior's text) with results equal to the whole sequence's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.nn.kv_cache import KVLayer
from dalle2_fast.nn.positional import apply_rotary, rotary_freqs

SIMILARITIES = ("dot", "cosine")


class GainLayerNorm(nn.Module):
    """LayerNorm with a gain and no bias, over the last dim. ``stable``: divide x by its row
    maximum first (CogView's PB-relax for the final norm; changes the result only through eps,
    and flips the sign of an all-negative row, as the original does)."""

    def __init__(self, dim: int, eps: float = 1e-5, stable: bool = False):
        super().__init__()
        self.eps, self.stable = eps, stable
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stable:
            x = x / x.amax(dim=-1, keepdim=True).detach()
        return F.layer_norm(x, x.shape[-1:], self.weight.to(x.dtype), None, self.eps)


class MultiQueryAttention(nn.Module):
    """Args: dim (tokens (B, S, dim)), heads, dim_head, similarity ('dot' | 'cosine'), scale
    (None: dh^-1/2 for 'dot'; required for 'cosine'), bias_scale, rot_dim (0: no rotary)."""

    def __init__(self, dim: int, heads: int, dim_head: int, *, similarity: str = "cosine",
                 scale: float | None = None, bias_scale: float = 1.0, rot_dim: int = 0):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ValueError(f"MultiQueryAttention: similarity must be one of {SIMILARITIES}, got {similarity!r}")
        if heads < 1 or dim_head < 1:
            raise ValueError(f"MultiQueryAttention: heads and dim_head must be >= 1, got {heads} and {dim_head}")
        if similarity == "cosine" and scale is None:
            raise ValueError("MultiQueryAttention: cosine similarity needs a fixed scale (e.g. 16)")
        if rot_dim and (rot_dim % 2 or rot_dim > dim_head):
            raise ValueError(f"MultiQueryAttention: rot_dim must be even and <= dim_head={dim_head}, got {rot_dim}")
        self.heads, self.dim_head, self.similarity = heads, dim_head, similarity
        self.scale = float(dim_head**-0.5 if scale is None else scale)
        self.bias_scale = float(bias_scale)
        self.norm_in = GainLayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)  # [k | v], one head
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.proj_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.norm_out = GainLayerNorm(dim)
        self.register_buffer("freqs", rotary_freqs(rot_dim) if rot_dim else torch.zeros(0), persistent=False)

    def _rotate(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return apply_rotary(t, positions, self.freqs) if self.freqs.numel() else t

    def keys_values(self, h: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotated keys and values of normed tokens h: (B, S, dim) at ``positions`` (S,)
        -> (B, S, dh) each (the null key/value not included)."""
        k, v = self.to_kv(h).chunk(2, dim=-1)
        return self._rotate(k, positions), v

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None, past: KVLayer | None = None) -> torch.Tensor:
        """x: (B, S, dim) at positions P .. P + S - 1 (P = ``past.length``, 0 without a cache); bias:
        (H, S, P + S + 1) or None; past: the cached keys/values of the P tokens before x (a
        growing layer also stores x's). -> (B, S, dim)."""
        B, S, _ = x.shape
        P = 0 if past is None else past.length
        h = self.norm_in(x)
        pos = torch.arange(P, P + S, device=x.device)
        q = self._rotate(self.to_q(h).view(B, S, self.heads, self.dim_head).transpose(1, 2), pos)  # (B, H, S, dh)
        k, v = self.keys_values(h, pos)
        if past is not None:
            k, v, _ = past.extend(k, v)  # (B, P + S, dh)
        nk, nv = (t.to(k.dtype).expand(B, 1, -1) for t in self.null_kv.unbind(0))
        k, v = torch.cat((nk, k), dim=1), torch.cat((nv, v), dim=1)  # (B, P + S + 1, dh)
        if self.similarity == "cosine":
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        sk = P + S + 1
        hidden = torch.ones(S, sk, dtype=torch.bool, device=x.device).triu(sk - S + 1)  # query i sees keys 0..P+i+1
        mask = torch.zeros(S, sk, dtype=q.dtype, device=x.device).masked_fill(hidden, float("-inf"))
        if bias is not None:
            if tuple(bias.shape[-2:]) != (S, sk):
                raise ValueError(f"MultiQueryAttention: bias must be (H, {S}, {sk}), got {tuple(bias.shape)}")
            mask = mask + self.bias_scale * bias.to(q.dtype)  # (H, S, P + S + 1)
        kh, vh = k[:, None].expand(B, self.heads, sk, -1), v[:, None].expand(B, self.heads, sk, -1)
        out = F.scaled_dot_product_attention(q, kh, vh, attn_mask=mask, scale=self.scale)  # (B, H, S, dh)
        return self.norm_out(self.proj_out(out.transpose(1, 2).reshape(B, S, -1)))

__all__ = ["GainLayerNorm", "MultiQueryAttention", "SIMILARITIES"]
