"""Upsampler conditioning corruptions: Gaussian blur and the BSR pipeline."""
import pytest
import torch

from dalle2_fast.data.degradations import (BSRConfig, blur, bsr_degrade, downsample, gaussian_blur,
                                           gaussian_kernel2d, jpeg, random_gaussian_blur)


def images(n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 2 - 1)


def test_kernels():
    k = gaussian_kernel2d(1.0, 1.0)
    assert k.shape == (7, 7) and k.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(k, k.T)
    torch.testing.assert_close(k, k.flip(0))
    # rotating an anisotropic kernel by 90 degrees swaps its axes
    a = gaussian_kernel2d(2.0, 0.5, theta=0.0, radius=5)
    b = gaussian_kernel2d(0.5, 2.0, theta=torch.pi / 2, radius=5)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert a[5].sum() > a[:, 5].sum()  # wide along x
    with pytest.raises(ValueError, match="sigmas"):
        gaussian_kernel2d(0.0, 1.0)


def test_blur_keeps_constants_and_smooths_noise():
    c = torch.full((2, 3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(c, 1.5), c)
    x = images()
    y = gaussian_blur(x, 1.0)
    assert y.shape == x.shape and y.std() < 0.6 * x.std()
    # a per-image sigma equals blurring each image on its own
    sig = torch.tensor([0.5, 1.0, 2.0])
    per = gaussian_blur(x, sig)
    for i in range(3):
        torch.testing.assert_close(per[i:i + 1], gaussian_blur(x[i:i + 1], float(sig[i])))
    # a 3x3 image still works (kernel cropped to what reflection can pad)
    assert blur(x[:, :, :3, :3], gaussian_kernel2d(2.0, 2.0)).shape == (3, 3, 3, 3)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        gaussian_blur(torch.zeros(3, 32, 32), 1.0)
    with pytest.raises(ValueError, match="sigma must be"):
        gaussian_blur(x, torch.ones(2))


def test_random_blur_is_seeded():
    x = images()
    a = random_gaussian_blur(x, torch.Generator().manual_seed(3))
    b = random_gaussian_blur(x, torch.Generator().manual_seed(3))
    c = random_gaussian_blur(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_jpeg_quality():
    x = gaussian_blur(images(1, 32), 1.0)
    hi, lo = jpeg(x, 95), jpeg(x, 5)
    assert hi.shape == x.shape and hi.dtype == x.dtype
    assert (hi - x).abs().mean() < 0.5 * (lo - x).abs().mean()
    assert torch.equal(jpeg(x, 50), jpeg(x, 50))  # Pillow's codec is deterministic
    with pytest.raises(ValueError, match="quality"):
        jpeg(x, 0)


def test_bsr_shapes_range_and_determinism():
    x = images(4, 64)
    a = bsr_degrade(x, 16, torch.Generator().manual_seed(0))
    assert a.shape == (4, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    b = bsr_degrade(x, 16, torch.Generator().manual_seed(0))
    c = bsr_degrade(x, 16, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # it is a degradation of the input: closer to the clean downsample than to another image
    clean = downsample(x, 16)
    assert (a - clean).abs().mean() < (a - clean.roll(1, 0)).abs().mean()
    # non-square output
    assert bsr_degrade(x[:1], (8, 12), torch.Generator().manual_seed(0)).shape == (1, 3, 8, 12)
    with pytest.raises(ValueError, match="out_size"):
        bsr_degrade(x, 2, torch.Generator())


def test_bsr_with_everything_off_is_the_clean_resize_path():
    cfg = BSRConfig(blur_prob=0.0, resize_range=(1.0, 1.0), noise_range=(0.0, 0.0), jpeg_prob=0.0)
    x = images(2, 32)
    y = bsr_degrade(x, 32, torch.Generator().manual_seed(0), cfg)
    torch.testing.assert_close(y, x.clamp(-1, 1), atol=1e-5, rtol=0)
