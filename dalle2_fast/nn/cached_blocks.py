"""The transformer's blocks over a few trailing tokens after a frozen cached prefix, in one C++ call.

A diffusion prior's sampling step runs its few trailing tokens ([timestep, noised z_i, query],
for every guidance row) through every block against the text prefix's cached keys and values
(:meth:`dalle2_fast.nn.Transformer.forward` with a frozen :class:`~dalle2_fast.nn.KVCache`). Op by
op that is about 25 tensor calls per block on a few rows each, and the fixed cost of a call, not
the arithmetic, is most of the step. ``dalle2_fast::cached_blocks`` (csrc/cpu/decode_cpu.cpp) runs
the same blocks in one call: the packed few-row linears, the new tokens' keys/values written into
the cache layers' reusable tails (:meth:`KVLayer.tail_buffers`), the few-rows attention loops.

:func:`cached_blocks` takes that path only where it computes exactly what the blocks' own
forward computes: float32 CPU inference (no autograd, autocast or tracing), at most
:data:`dalle2_fast.ops.attention.FEW_ROWS` new tokens, none of them padded, every block a plain
pre-LN block (affine LayerNorms of one eps, self-attention without QK norm and on the default
attention backend, biased projections, an exact-GELU MLP) whose linears run on packed weights
(inside :func:`~dalle2_fast.nn.packed_linears`), and a frozen cache of float32 keys. Otherwise it
returns None and the caller runs the blocks one by one, the reference. Without the C++ extension
it always returns None.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn

from dalle2_fast import _ext
from dalle2_fast.nn.kv_cache import KVCache
from dalle2_fast.nn.packed_linear import packed_panels
from dalle2_fast.ops.attention import FEW_ROWS


def _block_params(blk, eps: list) -> list[torch.Tensor] | None:
    """One block's 12 tensors for the op (csrc/bindings/decode.cpp), or None if it does not fit."""
    attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
    if (attn is None or not isinstance(mlp, nn.Sequential) or len(mlp) != 3 or type(mlp[1]) is not nn.GELU
            or mlp[1].approximate != "none" or attn.q_norm is not None or attn.context_dim is not None
            or attn.backend is not None or not hasattr(attn, "to_qkv")):
        return None
    lins = (attn.to_qkv, attn.to_out, mlp[0], mlp[2])
    norms = (blk.ln1, blk.ln2)
    if any(type(lin) is not nn.Linear or lin.bias is None for lin in lins) or any(
            type(n) is not nn.LayerNorm or n.weight is None or n.bias is None for n in norms):
        return None
    panels = [packed_panels(lin) for lin in lins]
    if any(p is None for p in panels):
        return None
    eps.extend(n.eps for n in norms)
    qkv, out, fc1, fc2 = ((p, lin.bias.detach()) for p, lin in zip(panels, lins))
    return [blk.ln1.weight.detach(), blk.ln1.bias.detach(), *qkv, *out, blk.ln2.weight.detach(),
            blk.ln2.bias.detach(), *fc1, *fc2]


def _state(blocks) -> tuple:
    """What the op's arguments are derived from: every block's modules' forwards (the patched
    ones of a packed_linears block) and parameters, with their versions."""
    out = []
    for blk in blocks:
        for m in blk.modules():
            out.append(m.__dict__.get("forward"))
            out.extend((p, p._version) for p in m._parameters.values() if p is not None)
    return tuple(out)


def _same(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y if not isinstance(x, tuple) else (x[0] is y[0] and x[1] == y[1])
                                    for x, y in zip(a, b))


# blocks -> (their _state, (params, heads, causal, eps) or None): derived once per sampling loop
_MEMO: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _op_args(blocks) -> tuple | None:
    """(params, heads, causal, eps) for the op, or None where the blocks do not fit; memoised while
    :func:`_state` is unchanged (a sampling loop calls this at every step)."""
    state = _state(blocks)
    hit = _MEMO.get(blocks)
    if hit is not None and _same(hit[0], state):
        return hit[1]
    params, eps, out = [], [], None
    for blk in blocks:
        p = _block_params(blk, eps)
        if p is None:
            break
        params.extend(p)
    else:
        heads, causal = blocks[0].attn.heads, blocks[0].attn.causal
        if len(set(eps)) == 1 and all(blk.attn.heads == heads and blk.attn.causal == causal for blk in blocks):
            out = (params, heads, causal, eps[0])
    _MEMO[blocks] = (state, out)
    return out


def cached_blocks(blocks, x: torch.Tensor, cache: KVCache, last: int | None = None) -> torch.Tensor | None:
    """``blocks`` (TransformerBlocks) run on x (B, T, width), the tokens after the frozen ``cache``
    (positions already added), the last block only for the last ``last`` tokens: (B, last or T,
    width), equal to ``blk(x, None, cache.layers[i], last if last block)`` in turn to float
    rounding; or None where the one-call path does not apply (module docstring)."""
    if (not _ext.loaded() or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 3
            or torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling()
            or not 1 <= x.shape[1] <= FEW_ROWS or len(cache) != len(blocks)):
        return None
    args = _op_args(blocks)
    if args is None:
        return None
    params, heads, causal, eps = args
    B, T = x.shape[:2]
    keys, values, mask = [], [], None
    for la in cache.layers:
        if la.grow or la.k is None or la.k.dim() != 4 or la.k.dtype != torch.float32 or la.k.shape[:2] != (B, heads) \
                or la.k.device.type != "cpu":
            return None
        kb, vb, mask = la.tail_buffers((B, heads, T, la.k.shape[-1]), torch.float32)
        keys.append(kb)
        values.append(vb)
    return torch.ops.dalle2_fast.cached_blocks(x, params, keys, values, mask, heads, T if last is None else last,
                                               causal, eps)


__all__ = ["cached_blocks"]
