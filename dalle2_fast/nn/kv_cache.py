"""Keys and values computed once and reused: the cache the attention layers accept.

Under causal attention a token's keys and values at every layer depend only on the tokens up to
it, and in cross / concatenated-context attention the context's keys and values depend only on
the context. So work whose result cannot change is done once:

- a **constant prefix** (the diffusion priors' text tokens and z_t, the same at every sampling
  step): run once through the transformer with a growing cache (``Transformer.prefill``), then
  frozen; every step runs only the trailing tokens, whose queries attend to [cached; own] keys
  (``ops.attention``'s bottom-right causal alignment makes a suffix of queries see exactly what
  it saw in the full sequence);
- **token-by-token decoding** (the AR prior): the cache keeps growing, each new token costs one
  position;
- a **fixed context** (the decoder U-Net's text + CLIP tokens): each attention block's context
  keys/values projected once per sampling call (``UNet.context_cache``).

One :class:`KVLayer` per attention layer holds ``k`` and ``v`` with the sequence at dim -2 and
the batch at dim 0 ((B, H, P, dh) for :class:`~dalle2_fast.nn.Attention`, (B, P, dh) for the
single key/value head of :class:`~dalle2_fast.nn.MultiQueryAttention`) and the keys' padding mask
(B, P) bool, True = padded (None: none padded). A :class:`KVCache` is the per-layer list with the
batch operations a sampling loop needs: ``repeat`` (candidates), ``expand`` (a batch-1 null
branch), ``cat_batch`` (classifier-free guidance pairs [cond; uncond] rows), and ``clone`` /
``copy_`` / ``signature`` (static buffers of a captured CUDA graph).

A cache also knows the **position** of the token after it (``KVCache.position``, default: its
length). They differ for a *compacted* prefix: a padded prefix whose real tokens were gathered to
the front, e.g. a 77-token caption slot holding 9 real tokens caches 9 keys (+ padding up to the
batch's longest row) while the tokens after it keep their positions 77 on. Under causal attention
over a frozen prefix the order of its keys does not matter (the tokens after it see all of
them) and padded keys are masked, so the compact cache gives the same outputs with less prefill
work. ``cat_batch`` pairs caches of different lengths but the same position by padding the
shorter one with masked keys.
"""
from __future__ import annotations

import torch


def _cat_mask(a: torch.Tensor | None, b: torch.Tensor | None, la: int, lb: int, batch: int, device):
    """[a; b] along the sequence, None standing for 'nothing padded'; None if both are None."""
    if a is None and b is None:
        return None
    a = torch.zeros(batch, la, dtype=torch.bool, device=device) if a is None else a.to(torch.bool)
    b = torch.zeros(batch, lb, dtype=torch.bool, device=device) if b is None else b.to(torch.bool)
    return torch.cat([a, b], dim=1)


def _reusable(k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether a frozen layer may hand out its reused buffers (:meth:`KVLayer._into_tail`): eager
    CPU inference only — no autograd (the buffers are overwritten by the next call), no tracing,
    no CUDA-graph capture (whose replays must copy into static buffers themselves), and no
    padding among the new tokens (their mask would change per call)."""
    return (mask is None and k.device.type == "cpu" and not torch.is_grad_enabled()
            and not (k.requires_grad or v.requires_grad) and not torch.compiler.is_compiling())


class KVLayer:
    """One attention layer's cached keys/values: ``k``, ``v`` (B, ..., P, dh) or None (empty),
    ``mask`` (B, P) bool True = padded key or None, and ``grow``: whether a forward appends its
    own tokens' keys/values (prefill and decoding) or only reads (a frozen prefix or context)."""

    __slots__ = ("k", "v", "mask", "grow", "_tail")

    def __init__(self, k: torch.Tensor | None = None, v: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, grow: bool = False):
        if (k is None) != (v is None) or (k is not None and k.shape != v.shape):
            raise ValueError(f"KVLayer: k and v must both be given with one shape, got "
                             f"{None if k is None else tuple(k.shape)} and {None if v is None else tuple(v.shape)}")
        if mask is not None and (k is None or tuple(mask.shape) != (k.shape[0], k.shape[-2])):
            raise ValueError(f"KVLayer: mask must be (B, P) = {None if k is None else (k.shape[0], k.shape[-2])}, "
                             f"got {tuple(mask.shape)}")
        self.k, self.v, self.mask, self.grow = k, v, mask, grow
        self._tail = None  # a frozen layer's [cached; new] buffers, reused by every call (_into_tail)

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def extend(self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None):
        """(keys, values, mask) of [cached; new] tokens for one attention call; stored when
        ``grow``. k, v: (B, ..., S, dh) of the new tokens; mask: their (B, S) padding or None."""
        if self.k is None:
            kk, vv, mm = k, v, mask
        else:
            if self.k.shape[0] != k.shape[0] or self.k.shape[1:-2] != k.shape[1:-2] or self.k.shape[-1] != k.shape[-1]:
                raise ValueError(f"KVLayer: cached keys {tuple(self.k.shape)} do not fit new keys {tuple(k.shape)} "
                                 "(batch, heads and head dim must agree)")
            if not self.grow and _reusable(k, v, mask):
                return self._into_tail(k, v)
            kk = torch.cat([self.k.to(k.dtype), k], dim=-2)
            vv = torch.cat([self.v.to(v.dtype), v], dim=-2)
            mm = _cat_mask(self.mask, mask, self.length, k.shape[-2], k.shape[0], k.device)
        if self.grow:
            self.k, self.v, self.mask = kk, vv, mm
        return kk, vv, mm

    def _into_tail(self, k: torch.Tensor, v: torch.Tensor):
        """A frozen layer read by many calls with the same number of new tokens (a sampling loop):
        [cached; new] lives in one preallocated buffer per layer (:meth:`tail_buffers`), the new
        tokens written into its tail at each call, instead of concatenating the whole prefix anew
        every call."""
        kb, vb, mm = self.tail_buffers(k.shape, k.dtype)
        P = self.length
        kb[..., P:, :] = k
        vb[..., P:, :] = v
        return kb, vb, mm

    def tail_buffers(self, shape, dtype: torch.dtype):
        """(keys, values, mask) buffers of [cached; new] for new keys of ``shape`` (B, ..., T, dh)
        and ``dtype``: the cached part copied in once, the tail [P, P + T) for the caller to
        write; the mask (cached; new tokens unpadded) is one tensor, the same object at every
        call (``ops.attention`` memoises what it derives from it). Reused while the new tokens'
        shape and dtype and the cached tensors (their version) are unchanged; eager inference
        on a frozen layer only (:func:`_reusable`)."""
        if self.k is None or self.grow:
            raise ValueError("KVLayer.tail_buffers: needs a frozen layer with cached keys")
        shape = tuple(shape)
        P, T = self.length, shape[-2]
        key = (shape, dtype, self.k._version, self.v._version, None if self.mask is None else self.mask._version)
        t = self._tail
        if t is None or t[0] != key or t[1] is not self.k or t[2] is not self.v or t[3] is not self.mask:
            kb = self.k.new_empty(shape[:-2] + (P + T, shape[-1]), dtype=dtype)  # (B, ..., P + T, dh)
            vb = self.v.new_empty(kb.shape, dtype=dtype)
            kb[..., :P, :] = self.k
            vb[..., :P, :] = self.v
            mm = _cat_mask(self.mask, None, P, T, shape[0], kb.device)
            self._tail = (key, self.k, self.v, self.mask, kb, vb, mm)
        return self._tail[4:]

    def _map(self, fn, mask_fn=None) -> "KVLayer":
        mask_fn = mask_fn or fn
        return KVLayer(None if self.k is None else fn(self.k), None if self.v is None else fn(self.v),
                       None if self.mask is None else mask_fn(self.mask), self.grow)


class KVCache:
    """Per-layer :class:`KVLayer` s (module docstring). ``KVCache.empty(n, grow=True)`` starts a
    prefill; :meth:`freeze` makes it read-only."""

    def __init__(self, layers: list[KVLayer], position: int | None = None):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("KVCache: needs at least one layer")
        if position is not None and (isinstance(position, bool) or not isinstance(position, int)
                                     or position < self.length):
            raise ValueError(f"KVCache: position must be an int >= the cached length {self.length}, got {position!r}")
        # position - length: constant while a growing cache appends its tokens
        self._offset = 0 if position is None else position - self.length

    @classmethod
    def empty(cls, n_layers: int, grow: bool = True) -> "KVCache":
        return cls([KVLayer(grow=grow) for _ in range(n_layers)])

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> KVLayer:
        return self.layers[i]

    @property
    def length(self) -> int:
        """Cached tokens (of layer 0; every layer of a prefix cache holds the same tokens)."""
        return self.layers[0].length

    @property
    def position(self) -> int:
        """The sequence position of the first token after the cache (module docstring)."""
        return self.length + self._offset

    @property
    def batch(self) -> int:
        k = next((la.k for la in self.layers if la.k is not None), None)
        return 0 if k is None else k.shape[0]

    def freeze(self) -> "KVCache":
        for la in self.layers:
            la.grow = False
        return self

    def _map(self, fn, mask_fn=None) -> "KVCache":
        return KVCache([la._map(fn, mask_fn) for la in self.layers], self.position)

    def pad_to(self, length: int) -> "KVCache":
        """The cache with masked zero keys/values appended up to ``length`` cached tokens (its
        position unchanged); itself if it is that long already."""
        if length < self.length:
            raise ValueError(f"KVCache.pad_to: length {length} < the cached length {self.length}")
        if length == self.length:
            return self
        out = []
        for la in self.layers:
            if la.k is None:
                raise ValueError("KVCache.pad_to: an empty layer cannot be padded")
            n = length - la.length
            z = la.k.new_zeros(la.k.shape[:-2] + (n, la.k.shape[-1]))
            mask = _cat_mask(la.mask, torch.ones(la.k.shape[0], n, dtype=torch.bool, device=la.k.device),
                             la.length, n, la.k.shape[0], la.k.device)
            out.append(KVLayer(torch.cat([la.k, z], dim=-2), torch.cat([la.v, z.to(la.v.dtype)], dim=-2), mask,
                               la.grow))
        return KVCache(out, self.position)

    def repeat(self, n: int) -> "KVCache":
        """The batch repeated n times ([b rows] * n, as ``Tensor.repeat``: candidate-major)."""
        return self._map(lambda t: t.repeat(n, *([1] * (t.dim() - 1))))

    def expand(self, batch: int) -> "KVCache":
        """A batch-1 cache broadcast to ``batch`` rows (views); other batches pass unchanged."""
        if self.batch in (batch, 0):
            return self
        if self.batch != 1:
            raise ValueError(f"KVCache.expand: only a batch-1 cache broadcasts, this one has batch {self.batch}")
        return self._map(lambda t: t.expand(batch, *t.shape[1:]))

    @classmethod
    def from_rows(cls, parts: list[tuple[torch.Tensor, "KVCache"]], batch: int) -> "KVCache":
        """One cache of ``batch`` rows from caches of some of its rows: ``parts`` are (row indices
        (b_i,) long, a cache of b_i rows), every row given once, all at one position; shorter
        caches are padded with masked keys (:meth:`pad_to`). E.g. a compacted prefix whose rows
        were prefilled in groups of equal length."""
        if not parts:
            raise ValueError("KVCache.from_rows: needs at least one part")
        pos, n_layers = parts[0][1].position, len(parts[0][1])
        if any(c.position != pos or len(c) != n_layers for _, c in parts):
            raise ValueError("KVCache.from_rows: the parts differ in position or layers")
        rows = torch.cat([r.reshape(-1).long().cpu() for r, _ in parts])
        if rows.numel() != batch or not torch.equal(rows.sort().values, torch.arange(batch)):
            raise ValueError(f"KVCache.from_rows: the parts' rows must cover 0 .. {batch - 1} once each, got "
                             f"{rows.tolist()}")
        n = max(c.length for _, c in parts)
        parts = [(r, c.pad_to(n)) for r, c in parts]
        out = []
        for i in range(n_layers):
            first = parts[0][1].layers[i]
            if first.k is None:
                raise ValueError("KVCache.from_rows: an empty layer cannot be assembled")
            k = first.k.new_empty((batch,) + tuple(first.k.shape[1:]))
            v = first.v.new_empty(k.shape)
            mask = torch.zeros(batch, n, dtype=torch.bool, device=k.device)
            for r, c in parts:
                la = c.layers[i]
                r = r.to(k.device)
                k[r], v[r] = la.k, la.v
                if la.mask is not None:
                    mask[r] = la.mask
            out.append(KVLayer(k, v, mask if bool(mask.any()) else None, first.grow))
        return cls(out, pos)

    def cat_batch(self, other: "KVCache") -> "KVCache":
        """[self rows; other rows] per layer (classifier-free guidance's cond / uncond pairs); of
        two caches at the same position but of different lengths (compacted prefixes) the shorter
        is padded with masked keys first."""
        if len(other) != len(self) or other.position != self.position:
            raise ValueError(f"KVCache.cat_batch: caches differ in layers or position ({len(self)} layers at "
                             f"position {self.position} vs {len(other)} at {other.position})")
        n = max(self.length, other.length)
        a_cache, b_cache = self.pad_to(n), other.pad_to(n)
        out = []
        for a, b in zip(a_cache.layers, b_cache.layers):
            if a.k is None or b.k is None:
                raise ValueError("KVCache.cat_batch: an empty layer cannot be batched")
            mask = None
            if a.mask is not None or b.mask is not None:
                ma = a.mask if a.mask is not None else torch.zeros(a.k.shape[0], a.length, dtype=torch.bool,
                                                                   device=a.k.device)
                mb = b.mask if b.mask is not None else torch.zeros(b.k.shape[0], b.length, dtype=torch.bool,
                                                                   device=b.k.device)
                mask = torch.cat([ma, mb.to(ma.device)])
            out.append(KVLayer(torch.cat([a.k, b.k.to(a.k)]), torch.cat([a.v, b.v.to(a.v)]), mask, a.grow))
        return KVCache(out, self.position)

    # ---- static buffers of a captured CUDA graph (diffusion/graphs.py) --------------------------
    def signature(self) -> tuple:
        """Shapes, dtypes and devices: what a captured graph's buffers must match."""
        sig = lambda t: None if t is None else (tuple(t.shape), t.dtype, str(t.device))  # noqa: E731
        return (self.position,) + tuple((sig(la.k), sig(la.v), sig(la.mask)) for la in self.layers)

    def clone(self) -> "KVCache":
        return self._map(lambda t: t.clone())

    def copy_(self, other: "KVCache") -> "KVCache":
        if other.signature() != self.signature():
            raise ValueError("KVCache.copy_: the caches differ in shapes, dtypes or devices")
        for a, b in zip(self.layers, other.layers):
            for x, y in ((a.k, b.k), (a.v, b.v), (a.mask, b.mask)):
                if x is not None:
                    x.copy_(y)
        return self


__all__ = ["KVCache", "KVLayer"]
