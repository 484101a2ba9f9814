"""Triton nearest-code kernel: a fused distance-GEMM + running argmin.

Each program owns BLOCK_N rows of x, walks the codebook in BLOCK_K-code tiles, accumulates
x_tile @ codes_tile^T over BLOCK_D chunks with ``tl.dot`` (fp32 accumulate), turns the tile
into partial distances ||c||^2 - 2 x.c (NaN -> +inf, as in csrc/include/dalle2_fast/codebook.h)
and folds its row minimum into a running best (the interpreter sums products instead of ``tl.dot``
so that equal codes get bit-equal distances wherever they sit). Ties: ``tl.argmin`` picks the first index in a
tile and a later tile must be strictly better, so the lowest index wins.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from dalle2_fast.triton.launch import Target, codebook_candidates, codebook_config, launch, refusal, target_for


@triton.jit
def _nearest_code_kernel(
    x_ptr, c_ptr, cn_ptr, idx_ptr, part_ptr,
    N, K, D,
    sxn, sxd, scn, scd,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    best_d = tl.full((BLOCK_N,), float("inf"), tl.float32)
    best_j = tl.zeros((BLOCK_N,), tl.int64)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        cmask = cols < K
        acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            dmask = ds < D
            xt = tl.load(x_ptr + rows[:, None] * sxn + ds[None, :] * sxd,
                         mask=rmask[:, None] & dmask[None, :], other=0.0)
            ct = tl.load(c_ptr + cols[:, None] * scn + ds[None, :] * scd,
                         mask=cmask[:, None] & dmask[None, :], other=0.0)
            if IEEE:  # the interpreter: a product-and-sum, so a code's distance does not depend on its column
                # in the tile (numpy's matmul rounds edge columns differently, and duplicate codes must tie)
                acc += tl.sum(xt[:, None, :] * ct[None, :, :], axis=2)
            else:
                acc = tl.dot(xt, tl.trans(ct), acc, input_precision="tf32x3")
        cn = tl.load(cn_ptr + cols, mask=cmask, other=float("inf"))
        d = cn[None, :] - 2.0 * acc  # (BLOCK_N, BLOCK_K) partial distances
        d = tl.where((d == d) & cmask[None, :], d, float("inf"))
        tile_min = tl.min(d, axis=1)
        tile_arg = tl.argmin(d, axis=1)
        better = tile_min < best_d
        best_d = tl.where(better, tile_min, best_d)
        best_j = tl.where(better, k0 + tile_arg.to(tl.int64), best_j)
    tl.store(idx_ptr + rows, best_j, mask=rmask)
    tl.store(part_ptr + rows, best_d, mask=rmask)


def _config(x: torch.Tensor, D: int, target: Target | None) -> dict:
    if target is None:  # interpreter: small tiles, tl.dot needs >= 16
        return dict(BLOCK_N=16, BLOCK_K=32, BLOCK_D=16, num_warps=1)
    cfg = codebook_config(x.dtype, D, target)  # audited for this dtype and GPU (launch.py)
    if cfg is None:  # the dispatcher refuses these inputs first (ops.codebook._triton_limits)
        raise RuntimeError(refusal("nearest_code", x.dtype, target, codebook_candidates(x.dtype, D), "nearest_code"))
    return cfg


@triton_op("dalle2_fast::nearest_code_triton", mutates_args=())
def nearest_code_triton_op(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    N, D = x.shape
    K = codebook.shape[0]
    idx = torch.zeros((N,), dtype=torch.long, device=x.device)
    part = torch.empty((N,), dtype=torch.float32, device=x.device)
    cn = codebook.float().pow(2).sum(1)  # (K,) code norms, O(K D)
    if N > 0:
        target = target_for(x)
        cfg = _config(x, D, target)
        grid = (triton.cdiv(N, cfg["BLOCK_N"]),)
        launch(
            _nearest_code_kernel, grid,
            x, codebook, cn, idx, part, N, K, D,
            x.stride(0), x.stride(1), codebook.stride(0), codebook.stride(1),
            IEEE=target is None, **cfg,
        )
    xsq = x.float().pow(2).sum(1)
    bad = ~(xsq <= 3.402823466e38)  # a non-finite row: index 0, sqdist NaN or +inf (codebook.h finish_row)
    idx = torch.where(bad, torch.zeros_like(idx), idx)
    return idx, torch.where(bad, xsq, (xsq + part).clamp_min(0.0))


def nearest_code_triton(x: torch.Tensor, codebook: torch.Tensor):
    return nearest_code_triton_op(x, codebook)


__all__ = ["nearest_code_triton"]
