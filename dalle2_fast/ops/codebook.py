"""Codebook nearest-neighbour lookup: ``nearest_code(x, codebook) -> (indices, sqdist)``.

The op behind every vector quantiser in the suite (VQ-VAE, VQ-VAE-2, the AR prior's
tokenisers). Squared L2 distance; ties go to the lowest code index; the N x K distance
matrix is never materialised (kernels tile the codes and fuse the argmin).

Non-finite values (documented behaviour, the same on every backend):
- a row of ``x`` containing NaN gets index 0 and sqdist NaN;
- a row containing +-Inf (and no NaN) gets index 0 and sqdist +inf (every finite code is
  infinitely far; IEEE arithmetic alone would pick whichever code's expanded distance
  ||c||^2 - 2 x.c came out -inf, an artefact of the expansion);
- a code containing NaN or +-Inf is never chosen (its distance counts as +inf);
- if every code is non-finite, the index is 0 and sqdist is +inf (or NaN for a NaN row).
- Rows whose squared norm overflows the compute precision (|x|^2 > 3e38 in float32) are
  outside this contract.
"""
from __future__ import annotations

import torch

from dalle2_fast import _ext
from dalle2_fast.ops._backends import family

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)

nearest_code_family = family("nearest_code")


def nearest_code_ref(
    x: torch.Tensor, codebook: torch.Tensor, upcast: bool = True, max_elems: int = 1 << 22
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch reference (test oracle, ``torch`` backend, benchmark baseline).

    x: (N, D), codebook: (K, D) -> indices (N,) int64, sqdist (N,) float32.
    Computes in float64 with ``upcast`` (else float32, or float64 for float64 inputs), in
    row chunks of at most ``max_elems`` distances so memory stays bounded.
    """
    dt = torch.float64 if (upcast or x.dtype == torch.float64) else torch.float32
    c = codebook.to(dt)
    cn = (c * c).sum(1)  # (K,)
    chunk = max(1, max_elems // max(1, codebook.shape[0]))
    idx, dist = [], []
    for s in range(0, x.shape[0], chunk):
        xb = x[s : s + chunk].to(dt)  # (n, D)
        part = cn[None, :] - 2.0 * (xb @ c.T)  # (n, K): ||c||^2 - 2 x.c
        part = torch.where(torch.isnan(part), torch.full_like(part, float("inf")), part)
        best, j = part.min(dim=1)  # first minimal index on ties
        d = ((xb * xb).sum(1) + best).clamp_min(0.0)
        finite = torch.isfinite(xb).all(1)  # non-finite rows: index 0, sqdist NaN or +inf
        j = torch.where(finite, j, torch.zeros_like(j))
        d = torch.where(finite, d, torch.where(torch.isnan(xb).any(1), float("nan"), float("inf")).to(d.dtype))
        idx.append(j)
        dist.append(d.float())
    if not idx:
        return x.new_zeros((0,), dtype=torch.long), x.new_zeros((0,), dtype=torch.float32)
    return torch.cat(idx), torch.cat(dist)


def _validate(x: torch.Tensor, codebook: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(codebook, torch.Tensor):
        raise TypeError("nearest_code: x and codebook must be tensors")
    if x.dim() != 2:
        raise ValueError(f"nearest_code: x must be 2-D (N, D), got shape {tuple(x.shape)}")
    if codebook.dim() != 2:
        raise ValueError(f"nearest_code: codebook must be 2-D (K, D), got shape {tuple(codebook.shape)}")
    if codebook.shape[0] == 0:
        raise ValueError("nearest_code: codebook is empty (K=0); it needs at least one code")
    if x.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"nearest_code: x has D={x.shape[1]} but codebook has D={codebook.shape[1]}; they must match"
        )
    if not x.is_floating_point():
        raise TypeError(f"nearest_code: x must be a floating tensor (float32/float16/bfloat16), got {x.dtype}")
    if not codebook.is_floating_point():
        raise TypeError(f"nearest_code: codebook must be a floating tensor, got {codebook.dtype}")
    if x.dtype != codebook.dtype:
        raise TypeError(f"nearest_code: x is {x.dtype} but codebook is {codebook.dtype}; they must match")
    if x.device != codebook.device:
        raise ValueError(f"nearest_code: x is on {x.device} but codebook is on {codebook.device}")


@nearest_code_family.register("torch", dtypes=_FLOATS + (torch.float64,), devices=("cpu", "cuda"))
def _nearest_code_torch(x, codebook):
    return nearest_code_ref(x, codebook, upcast=False)


def _nearest_code_ext(x, codebook):
    return torch.ops.dalle2_fast.nearest_code(x, codebook)


nearest_code_family.register("cpu", dtypes=_FLOATS, devices=("cpu",))(_nearest_code_ext)
nearest_code_family.register("cuda", dtypes=_FLOATS, devices=("cuda",))(_nearest_code_ext)


def _triton_limits(x, codebook):
    if x.device.type == "cpu" and x.dtype == torch.bfloat16:
        return ["the Triton interpreter has no bfloat16 arithmetic"]
    if x.device.type == "cuda":  # only audited launches that fit this GPU (triton/launch.py)
        from dalle2_fast.triton import launch as L

        target, D = L.target_for(x), x.shape[1]
        if L.codebook_config(x.dtype, D, target) is None:
            return [L.refusal("nearest_code", x.dtype, target, L.codebook_candidates(x.dtype, D), "audited launch")]
    return []


@nearest_code_family.register("triton", dtypes=_FLOATS, devices=("cpu", "cuda"), limits=_triton_limits)
def _nearest_code_triton(x, codebook):
    from dalle2_fast.triton.codebook import nearest_code_triton

    return nearest_code_triton(x, codebook)


if _ext.loaded():

    @torch.library.register_fake("dalle2_fast::nearest_code")
    def _nearest_code_fake(x, codebook):
        n = x.shape[0]
        return x.new_empty((n,), dtype=torch.long), x.new_empty((n,), dtype=torch.float32)


def nearest_code(
    x: torch.Tensor, codebook: torch.Tensor, backend: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest code of each row of ``x`` in squared L2.

    Args:
        x: (N, D) float32/float16/bfloat16 (any strides).
        codebook: (K, D), same dtype and device as ``x``, K >= 1.
        backend: None (fastest available), 'torch', 'cpu', 'cuda' or 'triton'
            (``DALLE2_FAST_BACKEND`` forces one globally).

    Returns:
        indices (N,) int64 and sqdist (N,) float32 = ||x_i - codebook[indices_i]||^2.
        Ties go to the lowest index; see the module docstring for NaN handling.
    """
    _validate(x, codebook)
    impl = nearest_code_family.select(x, codebook, backend=backend)
    return impl.fn(x, codebook)


__all__ = ["nearest_code", "nearest_code_ref", "nearest_code_family"]

