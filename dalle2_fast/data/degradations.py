"""Conditioning-image corruptions for the unCLIP upsamplers (Ramesh et al. 2022, Sec. 2.2 / App. C).

- First upsampler: Gaussian blur of the low-resolution conditioning image (noise-conditioning
  augmentation, Ho et al. 2021 "Cascaded Diffusion Models").
- Second upsampler: the BSR degradation pipeline (Zhang et al. 2021, "Designing a Practical
  Degradation Model for Deep Blind Image Super-Resolution"): isotropic / anisotropic Gaussian blur,
  random resizing with a random interpolation, Gaussian noise, JPEG compression (Pillow), in a
  random order, then the final resize to the target size and a last JPEG.

Images are (B, 3, H, W) floats in [-1, 1]. Every random choice is drawn from the ``generator``
passed in (CPU ``torch.Generator``), so a corruption is reproducible from its seed.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _check_images(x: torch.Tensor, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"{name}: images must be float (B, 3, H, W), got {tuple(x.shape)} {x.dtype}")


def gaussian_kernel2d(sigma_x: float, sigma_y: float, theta: float = 0.0, radius: int | None = None) -> torch.Tensor:
    """Normalised (2r+1, 2r+1) Gaussian with std (sigma_x, sigma_y) along axes rotated by theta."""
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"gaussian_kernel2d: sigmas must be > 0, got ({sigma_x}, {sigma_y})")
    r = radius if radius is not None else max(1, math.ceil(3 * max(sigma_x, sigma_y)))
    ax = torch.arange(-r, r + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).float()


def blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D convolution of (B, C, H, W) with one (k, k) kernel, reflect padding."""
    r = kernel.shape[-1] // 2
    c = x.shape[1]
    pad = min(r, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < r:  # a tiny image: crop the kernel to what reflection can pad
        kernel = kernel[r - pad: r + pad + 1, r - pad: r + pad + 1]
        kernel = kernel / kernel.sum()
    w = kernel.to(x.dtype).to(x.device).expand(c, 1, *kernel.shape)
    return F.conv2d(F.pad(x, (pad,) * 4, mode="reflect"), w, groups=c)


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Isotropic Gaussian blur with one sigma, or a per-image sigma tensor (B,)."""
    _check_images(x, "gaussian_blur")
    sig = torch.as_tensor(sigma, dtype=torch.float64).flatten()
    if sig.numel() not in (1, x.shape[0]):
        raise ValueError(f"gaussian_blur: sigma must be a float or ({x.shape[0]},), got {tuple(sig.shape)}")
    if (sig <= 0).any():
        raise ValueError("gaussian_blur: sigma must be > 0")
    if sig.numel() == 1:
        return blur(x, gaussian_kernel2d(float(sig), float(sig)))
    return torch.cat([blur(x[i:i + 1], gaussian_kernel2d(float(s), float(s))) for i, s in enumerate(sig)])


def random_gaussian_blur(x: torch.Tensor, generator: torch.Generator,
                         sigma_range: tuple[float, float] = (0.4, 0.6)) -> torch.Tensor:
    """The first upsampler's conditioning augmentation: blur each image with sigma ~ U(sigma_range)."""
    sig = sigma_range[0] + (sigma_range[1] - sigma_range[0]) * torch.rand(x.shape[0], generator=generator,
                                                                          dtype=torch.float64)
    return gaussian_blur(x, sig)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG-compress and decode one (1, 3, H, W) image in [-1, 1] with Pillow at ``quality``."""
    from PIL import Image

    if not 1 <= quality <= 100:
        raise ValueError(f"jpeg: quality must be in [1, 100], got {quality}")
    arr = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = torch.from_numpy(np.asarray(Image.open(buf).convert("RGB")).copy())
    return (out.permute(2, 0, 1)[None].to(x.dtype) / 127.5 - 1).to(x.device)


_MODES = ("nearest", "bilinear", "bicubic", "area")


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    return F.interpolate(x, size=size, mode=mode)


@dataclass
class BSRConfig:
    """Ranges of the BSR pipeline's random choices (defaults scaled down for small images)."""

    blur_prob: float = 0.5            # each of the two blur stages
    sigma_range: tuple[float, float] = (0.2, 2.0)
    aniso_prob: float = 0.5           # anisotropic (rotated) kernel instead of isotropic
    resize_range: tuple[float, float] = (0.5, 1.5)  # intermediate resize, relative to the input
    noise_range: tuple[float, float] = (1 / 255, 25 / 255)  # Gaussian noise std, in [0, 1] units
    gray_noise_prob: float = 0.3
    jpeg_range: tuple[int, int] = (30, 95)
    jpeg_prob: float = 0.9


def _random_kernel(g: torch.Generator, cfg: BSRConfig, max_radius: int) -> torch.Tensor:
    sx = _uniform(g, *cfg.sigma_range)
    if float(torch.rand((), generator=g)) < cfg.aniso_prob:
        sy, theta = _uniform(g, *cfg.sigma_range), _uniform(g, 0, math.pi)
    else:
        sy, theta = sx, 0.0
    r = min(max_radius, max(1, math.ceil(3 * max(sx, sy))))
    return gaussian_kernel2d(sx, sy, theta, radius=r)


def bsr_degrade_one(x: torch.Tensor, out_size: tuple[int, int], g: torch.Generator,
                    cfg: BSRConfig = BSRConfig()) -> torch.Tensor:
    """BSR-degrade one image (1, 3, H, W) in [-1, 1] to (1, 3, *out_size)."""
    h, w = x.shape[-2:]
    y = x
    for op in torch.randperm(4, generator=g).tolist():   # shuffled order, as in BSR
        if op in (0, 1):                                   # two independent blur stages
            if float(torch.rand((), generator=g)) < cfg.blur_prob:
                y = blur(y, _random_kernel(g, cfg, max_radius=max(1, min(y.shape[-2:]) // 4)))
        elif op == 2:                                      # random resize, random interpolation
            s = _uniform(g, *cfg.resize_range)
            size = (max(4, round(h * s)), max(4, round(w * s)))
            y = _resize(y, size, _MODES[int(torch.randint(len(_MODES), (), generator=g))])
        else:                                              # Gaussian noise, colour or grey
            std = 2 * _uniform(g, *cfg.noise_range)         # x2: [-1, 1] range
            gray = float(torch.rand((), generator=g)) < cfg.gray_noise_prob
            n = torch.randn((1, 1 if gray else 3, *y.shape[-2:]), generator=g).to(y)
            y = y + std * n
        y = y.clamp(-1, 1)
    if float(torch.rand((), generator=g)) < cfg.jpeg_prob:
        y = jpeg(y, int(torch.randint(cfg.jpeg_range[0], cfg.jpeg_range[1] + 1, (), generator=g)))
    y = _resize(y, out_size, _MODES[int(torch.randint(1, len(_MODES), (), generator=g))])
    if float(torch.rand((), generator=g)) < cfg.jpeg_prob:
        y = jpeg(y.clamp(-1, 1), int(torch.randint(cfg.jpeg_range[0], cfg.jpeg_range[1] + 1, (), generator=g)))
    return y.clamp(-1, 1)


def bsr_degrade(x: torch.Tensor, out_size: int | tuple[int, int], generator: torch.Generator,
                cfg: BSRConfig = BSRConfig()) -> torch.Tensor:
    """The second upsampler's conditioning: BSR-degrade (B, 3, H, W) in [-1, 1] to (B, 3, *out_size)."""
    _check_images(x, "bsr_degrade")
    size = (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)
    if min(size) < 4:
        raise ValueError(f"bsr_degrade: out_size must be >= 4, got {size}")
    return torch.cat([bsr_degrade_one(x[i:i + 1], size, generator, cfg) for i in range(x.shape[0])])


def downsample(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Anti-aliased bicubic resize to ``size``, clamped to [-1, 1] (the clean low-res input)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return _resize(x, size, "bicubic").clamp(-1, 1)
