"""The pre-LN transformer the priors are built from (GPT-2 style; Radford et al. 2019, Sec. 2.3).

``TransformerBlock``: x + Attn(LN(x)), then x + MLP(LN(x)), the attention being
:class:`dalle2_fast.nn.Attention` (the package's one attention module, on ``ops.attention``).
``Transformer``: learned positions, an optional LayerNorm on the input (``input_norm``, as
diffusers' ``PriorTransformer(norm_in_type="layer")``), a stack of blocks, a final LayerNorm. Masks follow
``ops.attention``: ``key_padding_mask`` (B, S) True = padded token (ignored as a key), causal
attention bottom-right aligned (query i sees keys j <= i + Sk - Sq).

Each block computes its keys and values in one place (its ``attn``'s fused ``to_qkv``), and a
:class:`~dalle2_fast.nn.kv_cache.KVCache` hooks in there: under causal attention a prefix's keys
and values at every layer depend on the prefix only (e.g. the diffusion prior's text tokens, the
same at every sampling step). :meth:`Transformer.prefill` runs a prefix once and returns its
cache; ``forward(x, cache=...)`` then runs only the tokens after it (at positions
``cache.position`` on), their queries attending to [cached; own] keys with bottom-right causal
alignment — equal to running the whole sequence, to float tolerance. A growing cache (not
frozen) also stores each call's tokens: token-by-token decoding at one position per token.
Over a frozen cache on the CPU, inside :func:`~dalle2_fast.nn.packed_linears`, the blocks run in
one C++ call (:mod:`dalle2_fast.nn.cached_blocks`).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from dalle2_fast.nn.attention import Attention, tokenwise
from dalle2_fast.nn.cached_blocks import cached_blocks
from dalle2_fast.nn.kv_cache import KVCache, KVLayer


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

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                past: KVLayer | None = None, last: int | None = None) -> torch.Tensor:
        """x: (B, S, width) -> (B, S, width); with ``last``, only the last ``last`` tokens' outputs
        (B, last, width): every token still gives keys and values, but only those query and go
        through the MLP."""
        a = self.attn(self.ln1(x), key_padding_mask=key_padding_mask, past=past, last=last)
        x = (x if last is None else x[:, -last:]) + a
        return x + self.mlp(self.ln2(x))

    def forward_parts(self, xs: list[torch.Tensor], pasts: list[KVLayer]) -> list[torch.Tensor]:
        """Several token sets that do not attend to each other, each with its own cache layer: the
        norms, projections and MLP run once on all their tokens (:meth:`Attention.forward_parts`)."""
        xs = [x + a for x, a in zip(xs, self.attn.forward_parts(tokenwise(self.ln1, xs), pasts))]
        return [x + y for x, y in zip(xs, tokenwise(lambda t: self.mlp(self.ln2(t)), xs))]


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

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, last: int | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, S, width) tokens at positions P .. P + S - 1, P = ``cache.position`` (0 without a
        cache); key_padding_mask: (B, S) bool True = padded, for these tokens; cache: the keys and
        values of the tokens before them (module docstring); last: return only the last
        ``last`` tokens' outputs, the final block running only those (the earlier blocks still
        run every token: later blocks attend to them); positions: (S,) or (B, S) integer position
        of each token instead (a compacted prefix: :meth:`prefill`). -> (B, S, width), or
        (B, last, width)."""
        if x.dim() != 3 or x.shape[-1] != self.pos.shape[1]:
            raise ValueError(f"Transformer: x must be (B, S, {self.pos.shape[1]}), got {tuple(x.shape)}")
        start = 0
        if cache is not None:
            if len(cache) != len(self.blocks):
                raise ValueError(f"Transformer: cache has {len(cache)} layers, the transformer {len(self.blocks)}")
            start = cache.position
            if cache.length and cache.batch != x.shape[0]:
                raise ValueError(f"Transformer: cache holds batch {cache.batch}, x has batch {x.shape[0]}")
        if positions is None:
            if start + x.shape[1] > self.max_len:
                cached = f" ({start} cached)" if start else ""
                raise ValueError(f"Transformer: sequence length {start + x.shape[1]}{cached} > max_len {self.max_len}")
            pos = self.pos[start: start + x.shape[1]]
        else:
            pos = self._at_positions(positions, x, "Transformer")
        x = x + pos.to(x.dtype)
        if self.ln_in is not None:
            x = self.ln_in(x)
        if cache is not None and key_padding_mask is None and cache.length:  # a frozen prefix's trailing tokens:
            y = cached_blocks(self.blocks, x, cache, last)  # every block in one C++ call where it applies
            if y is not None:
                return self.ln(y)
        n = len(self.blocks)
        for i, blk in enumerate(self.blocks):
            x = blk(x, key_padding_mask, None if cache is None else cache.layers[i], last if i == n - 1 else None)
        return self.ln(x)

    def _at_positions(self, positions: torch.Tensor, x: torch.Tensor, who: str) -> torch.Tensor:
        """The learned embeddings at explicit integer positions (S,) or (B, S) of the tokens x
        (B, S, width), after checking them."""
        if positions.dtype.is_floating_point or positions.dtype == torch.bool or positions.shape[-1] != x.shape[1] \
                or positions.dim() not in (1, 2) or (positions.dim() == 2 and positions.shape[0] != x.shape[0]):
            raise ValueError(f"{who}: positions must be integer (S,) or (B, S) for x {tuple(x.shape)}, got "
                             f"{positions.dtype} {tuple(positions.shape)}")
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= self.max_len):
            raise ValueError(f"{who}: positions must lie in [0, max_len={self.max_len}), got "
                             f"[{int(positions.min())}, {int(positions.max())}]")
        return self.pos[positions.to(self.pos.device)]

    def prefill(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                grow: bool = False, positions: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache]:
        """Run a prefix x (B, P, width) once: (its outputs (B, P, width), the cache of its keys and
        values at every layer). ``grow``: the cache keeps storing later calls' tokens (decoding);
        otherwise it is frozen (a constant prefix for many calls). positions: as :meth:`forward`'s
        (default 0 .. P - 1); the tokens after the cache then start at ``max(positions) + 1``.
        With causal attention, giving a padded prefix's real tokens gathered to the front with their
        own positions and the padding masked (a compacted prefix) yields the same outputs for
        every token after it as the padded prefix, from less work."""
        cache = KVCache.empty(len(self.blocks), grow=True)
        h = self(x, key_padding_mask, cache, positions=positions)
        if positions is not None and positions.numel():
            cache = KVCache(cache.layers, max(int(positions.max()) + 1, cache.length))
        return h, (cache if grow else cache.freeze())

    def prefill_parts(self, xs: list[torch.Tensor], positions: list[torch.Tensor],
                      position: int | None = None) -> list[KVCache]:
        """Several unpadded prefixes at once, e.g. a compacted prefix's rows grouped by length:
        xs[i] (B_i, P_i, width) at positions[i] ((P_i,) or (B_i, P_i) integer) -> one frozen
        cache per prefix, at ``position`` (default: one past the largest position given). The
        same caches as :meth:`prefill` on each, to float rounding; every norm, projection and MLP
        runs once per layer on all their tokens together (one GEMM, not one per prefix)."""
        if not xs or len(xs) != len(positions):
            raise ValueError(f"Transformer.prefill_parts: needs one positions tensor per prefix, got {len(xs)} "
                             f"prefixes and {len(positions)} positions")
        hs = []
        for x, pos in zip(xs, positions):
            if x.dim() != 3 or x.shape[-1] != self.pos.shape[1] or x.shape[1] == 0:
                raise ValueError(f"Transformer.prefill_parts: each prefix must be (B, P >= 1, {self.pos.shape[1]}), "
                                 f"got {tuple(x.shape)}")
            hs.append(x + self._at_positions(pos, x, "Transformer.prefill_parts").to(x.dtype))
        if self.ln_in is not None:
            hs = tokenwise(self.ln_in, hs)
        caches = [KVCache.empty(len(self.blocks), grow=True) for _ in xs]
        for i, blk in enumerate(self.blocks):
            hs = blk.forward_parts(hs, [c.layers[i] for c in caches])
        end = max(int(p.max()) for p in positions) + 1 if position is None else position
        return [KVCache(c.layers, end).freeze() for c in caches]


__all__ = ["Transformer", "TransformerBlock"]
