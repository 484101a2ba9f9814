"""Linear layers for a few rows at a time on the CPU: the weights packed once for a whole loop.

A decoding loop (a diffusion prior's trailing tokens at every sampling step, an AR prior's next
token) calls each linear layer with a handful of rows, where a GEMM library spends most of the
call reformatting the weight matrix. Inside ``with packed_linears(module):`` every float32
``nn.Linear`` of ``module`` on the CPU has its weight packed once (``dalle2_fast::pack_linear``:
column panels, the weight's own size) and runs its inference calls of at most :data:`MAX_ROWS`
rows through ``dalle2_fast::packed_linear`` (csrc/cpu/linear_cpu.cpp), 1.4-1.6x F.linear for
8-24 rows on the development Xeon; other calls (more rows, gradients, autocast, other dtypes, a
weight changed inside the block) take F.linear, the reference. Results equal F.linear's to
float rounding. Costs one extra copy of the linear weights: while the block runs, and kept for the
next block (so a sampling loop called again does not repack) when they total at most
:data:`KEEP_BYTES`; without the C++ extension the block changes nothing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast import _ext
from dalle2_fast.nn.transformed_weights import KeptTransforms, patched_forwards, transformed_weight

MAX_ROWS = 64  # above this many rows F.linear's GEMM is as fast (measured: 48 rows 1.2-1.4x, 166 rows ~1x)
PANEL = 32  # output columns per panel (csrc/cpu/linear_cpu.cpp kPanel)
KEEP_BYTES = 256 << 20  # packed copies kept between blocks for modules whose linear weights total at most this


def pack_linear(weight: torch.Tensor) -> torch.Tensor:
    """A linear weight (N, K) float32 on the CPU -> its panels (ceil(N / 32), K, 32)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.dtype != torch.float32 \
            or weight.device.type != "cpu":
        got = ((tuple(weight.shape), weight.dtype, str(weight.device)) if isinstance(weight, torch.Tensor)
               else type(weight))
        raise ValueError(f"pack_linear: weight must be a 2-D float32 CPU tensor (N, K), got {got}")
    return torch.ops.dalle2_fast.pack_linear(weight.detach())


def packed_linear(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
    """x (M, K) float32 @ weight^T + bias -> (M, n), the weight given as :func:`pack_linear`'s
    panels. Reference: ``F.linear(x, weight, bias)``."""
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.dtype != torch.float32 or x.device.type != "cpu":
        got = (tuple(x.shape), x.dtype, str(x.device)) if isinstance(x, torch.Tensor) else type(x)
        raise ValueError(f"packed_linear: x must be a 2-D float32 CPU tensor (M, K), got {got}")
    if panels.dim() != 3 or panels.shape[2] != PANEL or panels.dtype != torch.float32 or not panels.is_contiguous():
        raise ValueError(f"packed_linear: panels must come from pack_linear ((P, K, {PANEL}) float32), got "
                         f"{tuple(panels.shape)} {panels.dtype}")
    if panels.shape[1] != x.shape[1]:
        raise ValueError(f"packed_linear: x has K = {x.shape[1]} but the panels K = {panels.shape[1]}")
    if not (panels.shape[0] - 1) * PANEL < n <= panels.shape[0] * PANEL:
        raise ValueError(f"packed_linear: n = {n} does not fit {panels.shape[0]} panels of {PANEL} columns")
    if bias is not None and (bias.shape != (n,) or bias.dtype != torch.float32):
        raise ValueError(f"packed_linear: bias must be float32 ({n},), got {tuple(bias.shape)} {bias.dtype}")
    return torch.ops.dalle2_fast.packed_linear(x, panels, bias, n)


def _packed_forward(lin: nn.Linear, panels: torch.Tensor, version: int, x: torch.Tensor) -> torch.Tensor:
    rows = x.numel() // max(1, lin.in_features)
    if (x.dtype != torch.float32 or x.device.type != "cpu" or rows > MAX_ROWS or x.shape[-1] != lin.in_features
            or lin.weight._version != version or torch.is_autocast_enabled("cpu")
            or (torch.is_grad_enabled() and (x.requires_grad or lin.weight.requires_grad))):
        return F.linear(x, lin.weight, lin.bias)
    bias = None if lin.bias is None else lin.bias.detach()
    # the op itself, not packed_linear(): its checks hold by construction here (a hot path)
    y = torch.ops.dalle2_fast.packed_linear(x.reshape(rows, lin.in_features), panels, bias, lin.out_features)
    return y.view(*x.shape[:-1], lin.out_features)


_KEPT = KeptTransforms()


def packed_panels(lin: nn.Linear) -> torch.Tensor | None:
    """The panels ``lin`` runs its few-row calls on inside a :func:`packed_linears` block; None
    outside one, or when its weight changed inside the block (its calls then take F.linear)."""
    return transformed_weight(lin, _packed_forward)


def packed_linears(module: nn.Module, keep: bool | None = None):
    """Within the block, ``module``'s float32 CPU ``nn.Linear`` layers run few-row inference calls
    on packed weights (module docstring); restored on exit. keep: hold the packed copies for the
    next block (repacked when a weight changes) instead of packing at every block; default when
    the linear weights total at most :data:`KEEP_BYTES` (their copy then stays in memory while
    the module lives)."""
    lins = []
    if _ext.loaded():
        lins = [lin for lin in module.modules()
                if type(lin) is nn.Linear and lin.weight.device.type == "cpu" and lin.weight.dtype == torch.float32
                and "forward" not in lin.__dict__ and lin.in_features > 0 and lin.out_features > 0]
    if keep is None:
        keep = sum(lin.weight.numel() * 4 for lin in lins) <= KEEP_BYTES
    return patched_forwards(lins, _KEPT, pack_linear, _packed_forward, keep)


__all__ = ["KEEP_BYTES", "MAX_ROWS", "PANEL", "pack_linear", "packed_linear", "packed_linears", "packed_panels"]
