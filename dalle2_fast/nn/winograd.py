"""3x3 convolutions by Winograd's F(4x4, 3x3) on the CPU, on channels-last activations.

The image stages' U-Nets spend most of their float32 CPU time in 3x3, stride-1, 'same'
convolutions, which oneDNN already runs near this machine's GEMM rate as direct convolutions.
Winograd's minimal filtering (Lavin & Gray 2016) does the same convolution with 4x fewer
multiplies: ``dalle2_fast::winograd_conv3x3`` (csrc/cpu/winograd_cpu.cpp) transforms 6x6 input
tiles, runs 36 GEMMs (tiles x C) @ (C x K) in one batched call, and transforms back, on
transformed filters (``dalle2_fast::winograd_weight``: (36, K, C)).

Inside ``with winograd_convs(module):`` every eligible ``nn.Conv2d`` of ``module`` (3x3, stride
1, padding 1, no dilation or groups, zero padding, float32 on the CPU, at least
:data:`MIN_CHANNELS` input and output channels) runs its inference calls on channels-last
activations that way (the transforms read and write NHWC; converting NCHW activations there and
back costs more than it saves on large images); other calls (NCHW inputs, gradients, autocast,
other dtypes, a weight changed inside the block) take the layer's own forward, the reference.

Measured on the development Xeon, one thread, channels-last, against F.conv2d (oneDNN direct),
the convolution on transformed filters alone, this layout (the GEMMs read the (36, K, C) filters
transposed), min of 7: (4, 128 -> 128, 32 px) 3.40 vs 7.26 ms; (4, 192 -> 192, 16 px) 1.81 vs
3.84 ms; (4, 64 -> 64, 64 px) 4.50 vs 6.88 ms; (2, 64 -> 32, 256 px) 24.6-27.0 vs 31.3-32.8 ms;
(2, 32 -> 32, 256 px) 13.9-14.9 vs 15.5-16.2 ms; (4, 32 -> 32, 32 px) 0.47 vs 0.51 ms. The gain
is largest at 128+ channels and small at 32 (memory-bound transforms); the VM's speed moved by
~20% within the day, so compare within one run.

Which calls, and memory. Each call transforms its layer's filters (36 values per 9 filter taps:
4x the filter's size) and drops them after: nothing is held between calls, and a sampling loop's
memory grows only by one layer's transformed filters at a time. The transform reads a
channels-last filter in place and is vectorised over input channels: one thread, (192, 192) 0.34
ms, (256, 256) 0.60 ms (3.0 ms in an earlier layout vectorised over output channels). A call on
fewer than :data:`MIN_TILES` 4x4 output tiles takes the direct convolution: there the transform
costs as much as Winograd saves (8 px, 256 channels, batch 4: direct 1.65 ms, Winograd 0.99 +
transform 0.60 ms). Holding every layer's transformed filters for a whole stage instead was
measured too: on the unclip-peers decoder (Karlo architecture, reduced) it held 126-297 MB for a
few percent less time per pipeline call.

Rounding: the transforms' constants cost about one decimal digit against the direct
convolution (relative error ~4e-6 vs ~4e-7 in float32), far below what a sampled image shows,
but not bit-equal: it is opt-in (``UnCLIPPipeline.fast_convs``), never the default. Without the
C++ extension the block changes nothing.
"""
from __future__ import annotations

import torch
from torch import nn

from dalle2_fast import _ext
from dalle2_fast.nn.transformed_weights import is_patched, patched_forwards

MIN_CHANNELS = 32  # fewer channels: GEMMs too thin to beat the direct convolution (not measured below 32)
MIN_TILES = 64  # fewer 4x4 output tiles (e.g. 8 px at batch 4): the direct convolution (the filter transform
# of each call would cost more than Winograd saves)


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 convolution weight (K, C, 3, 3) float32 on the CPU -> its transform (36, K, C)."""
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3) \
            or weight.dtype != torch.float32 or weight.device.type != "cpu":
        got = ((tuple(weight.shape), weight.dtype, str(weight.device)) if isinstance(weight, torch.Tensor)
               else type(weight))
        raise ValueError(f"winograd_weight: weight must be a (K, C, 3, 3) float32 CPU tensor, got {got}")
    return torch.ops.dalle2_fast.winograd_weight(weight.detach())


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for x (N, C, H, W) float32 on the CPU, the weight
    given as :func:`winograd_weight`'s transform u (36, K, C) -> (N, K, H, W) in x's memory format."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.dtype != torch.float32 or x.device.type != "cpu":
        got = (tuple(x.shape), x.dtype, str(x.device)) if isinstance(x, torch.Tensor) else type(x)
        raise ValueError(f"winograd_conv3x3: x must be a (N, C, H, W) float32 CPU tensor, got {got}")
    if not isinstance(u, torch.Tensor) or u.dim() != 3 or u.shape[0] != 36 or u.dtype != torch.float32 \
            or not u.is_contiguous():
        raise ValueError(f"winograd_conv3x3: u must come from winograd_weight ((36, K, C) float32), got "
                         f"{tuple(u.shape) if isinstance(u, torch.Tensor) else type(u)}")
    if u.shape[2] != x.shape[1]:
        raise ValueError(f"winograd_conv3x3: x has C = {x.shape[1]} channels but u was made for C = {u.shape[2]}")
    if bias is not None and (bias.shape != (u.shape[1],) or bias.dtype != torch.float32):
        raise ValueError(f"winograd_conv3x3: bias must be float32 ({u.shape[1]},), got {tuple(bias.shape)} {bias.dtype}")
    return _run(x, u, bias)


def _run(x, u, bias):
    y = torch.ops.dalle2_fast.winograd_conv3x3(x, u, bias)  # channels-last memory
    return y if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else y.contiguous()


def _eligible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and conv.weight.dtype == torch.float32
            and conv.weight.device.type == "cpu" and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS
            and "forward" not in conv.__dict__)


def _winograd_forward(conv: nn.Conv2d, _unused, version: int, x: torch.Tensor) -> torch.Tensor:
    if (x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4 or conv.weight._version != version
            or not x.is_contiguous(memory_format=torch.channels_last)
            or x.shape[0] * ((x.shape[2] + 3) // 4) * ((x.shape[3] + 3) // 4) < MIN_TILES
            or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))):
        return nn.Conv2d.forward(conv, x)
    # the filters transformed for this call and dropped after it: nothing held between calls
    return _run(x, winograd_weight(conv.weight), None if conv.bias is None else conv.bias.detach())


def winograd_convs(module: nn.Module):
    """Within the block, ``module``'s eligible 3x3 convolutions run their float32 CPU inference
    calls by Winograd's F(4x4, 3x3) (module docstring); restored on exit."""
    convs = [m for m in module.modules() if _eligible(m)] if _ext.loaded() else []
    return patched_forwards(convs, None, None, _winograd_forward, False)


def winograd_enabled(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` runs by Winograd (its eligible calls) inside a :func:`winograd_convs` block."""
    return is_patched(conv, _winograd_forward)


__all__ = ["MIN_CHANNELS", "MIN_TILES", "winograd_conv3x3", "winograd_convs", "winograd_enabled", "winograd_weight"]
