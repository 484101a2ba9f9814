"""CUDA-graph capture of a whole sampling loop (``cuda_graph=True`` in the samplers).

Shapes and the number of steps are fixed, so the S model calls and S fused steps are captured
once into one ``torch.cuda.CUDAGraph`` and replayed with a single launch: no per-kernel launch
cost and no host synchronisation per step. What the graph reads lives in static device
buffers: x_T, the tensors of ``model_kwargs`` and its key/value caches (``nn.KVCache``: anything
with ``signature``, ``clone`` and ``copy_``; copied in before each replay), the (S, B, 10)
coefficient table and the (S, B) model timesteps (both built before capture, on the device).
Per-sample generators are registered with the graph (``register_generator_state``) and
reseeded before replay, so sample i still depends only on its seed. NaN detection is recorded
on the device (one finiteness flag per step) and checked once after the replay, raising
``SamplingNaNError`` with the first bad step.

Graphs are cached per (denoiser, shapes, plan) — capture costs one loop plus a warm-up step;
later calls with the same key only copy inputs and replay. The denoiser must be graph-safe
(no host syncs, no data-dependent shapes); its parameters are read in place, so weight updates
between calls are seen.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from dalle2_fast.diffusion.plan import NoiseSource, Plan, SamplingNaNError

_CACHE: "OrderedDict[tuple, _Captured]" = OrderedDict()
_CACHE_SIZE = 4


class _Captured:
    def __init__(self, graph, x_in, kwargs_in, coefs, model_t, out, flags, noise):
        self.graph, self.x_in, self.kwargs_in = graph, x_in, kwargs_in
        self.coefs, self.model_t, self.out, self.flags, self.noise = coefs, model_t, out, flags, noise


def _buffered(v) -> bool:
    """A kwarg held in a static buffer: a tensor, or a batched object with ``signature`` / ``clone`` /
    ``copy_`` (a KV cache)."""
    return isinstance(v, torch.Tensor) or all(hasattr(v, a) for a in ("signature", "clone", "copy_"))


def _sig(k: str, v) -> tuple:
    if isinstance(v, torch.Tensor):
        return (k, tuple(v.shape), v.dtype)
    return (k, v.signature()) if _buffered(v) else (k, repr(v))


def _key(key: tuple, plan: Plan, x: torch.Tensor, model_kwargs: dict, noise: NoiseSource) -> tuple:
    kw = tuple(sorted((_sig(k, v) for k, v in model_kwargs.items()), key=lambda e: e[0]))
    return key + (plan.kind, tuple(x.shape), x.dtype, str(x.device), plan.num_steps, kw, noise.seeds is None)


def _capture(step, plan: Plan, x: torch.Tensor, model_kwargs: dict, noise: NoiseSource) -> _Captured:
    x_in = x.clone()
    kwargs_in = {k: v.clone() if _buffered(v) else v for k, v in model_kwargs.items()}
    model_kwargs.clear()
    model_kwargs.update(kwargs_in)  # the step closure reads this dict: point it at the static buffers
    graph = torch.cuda.CUDAGraph()
    if noise.gens is not None:
        for g in noise.gens:
            graph.register_generator_state(g)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: lazy init, cuBLAS/cuDNN workspaces, Triton compiles
        cur, prev = step(0, x_in, None)
        if plan.num_steps > 1:  # the second step has a previous x0 (DPM-Solver++): another variant
            step(1, cur, prev)
    torch.cuda.current_stream().wait_stream(side)
    with torch.cuda.graph(graph):
        cur, prev, flags = x_in, None, []
        for k in range(plan.num_steps):
            cur, prev = step(k, cur, prev)
            flags.append(torch.isfinite(cur).all())
        out = cur
        flags_t = torch.stack(flags)
    return _Captured(graph, x_in, kwargs_in, plan.coefs, plan.model_t, out, flags_t, noise)


def run_graphed(step, plan: Plan, x: torch.Tensor, model_kwargs: dict, noise: NoiseSource, key: tuple,
                draw_x: bool) -> torch.Tensor:
    """Runs the loop ``step(k, x, prev_x0)`` for k < S as one captured CUDA graph; returns x_0.
    ``key`` names what the step closes over (denoiser, process, options); ``draw_x``: x_T was
    drawn from ``noise`` (it is redrawn from the captured generators, so that the per-sample
    streams are positioned as in an eager run)."""
    if x.device.type != "cuda" or not torch.cuda.is_available():
        raise ValueError(f"cuda_graph=True needs CUDA tensors, got x on {x.device}")
    if noise.generator is not None:
        raise ValueError("cuda_graph=True draws noise from per-sample seeds or the global RNG; pass seeds, not generator")
    key = _key(key, plan, x, model_kwargs, noise)
    cap = _CACHE.get(key)
    user_kwargs = dict(model_kwargs)
    if cap is None:
        cap = _capture(step, plan, x, model_kwargs, noise)
        _CACHE[key] = cap
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    cap.noise.seeds = noise.seeds
    cap.noise.reseed()
    cap.x_in.copy_(cap.noise.draw() if draw_x else x)
    for k, v in user_kwargs.items():
        if _buffered(v):
            cap.kwargs_in[k].copy_(v)
    cap.coefs.copy_(plan.coefs)
    cap.model_t.copy_(plan.model_t)
    cap.graph.replay()
    flags = cap.flags.cpu()  # the one host sync of the whole loop
    if not bool(flags.all()):
        k = int((~flags).nonzero()[0])
        bad = (~torch.isfinite(cap.out)).reshape(x.shape[0], -1).any(1).nonzero().flatten().tolist()
        raise SamplingNaNError(k, plan.model_t[k].tolist(), bad)
    return cap.out.clone()


def clear_cache() -> None:
    _CACHE.clear()


__all__ = ["run_graphed", "clear_cache"]
