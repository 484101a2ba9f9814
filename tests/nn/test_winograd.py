"""3x3 convolutions by Winograd's F(4x4, 3x3) (dalle2_fast::winograd_conv3x3 / winograd_weight,
csrc/cpu/winograd_cpu.cpp) against F.conv2d on awkward shapes and memory formats, its errors, and
the winograd_convs context."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast import _ext
from dalle2_fast.nn import winograd as WG
from dalle2_fast.nn.winograd import (MIN_CHANNELS, MIN_TILES, winograd_conv3x3, winograd_convs, winograd_enabled,
                                     winograd_weight)

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason="C++ extension not built")


def _close(got, x, w, b):
    """Within float32 Winograd rounding of the float64 convolution: relative to the output's scale."""
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=1)
    scale = ref.abs().max().item() + 1e-12
    err = (got.double() - ref).abs().max().item() / scale
    assert err < 3e-5, f"relative error {err:.2e}"


@pytest.mark.parametrize("N,C,K,H,W", [(1, 1, 1, 1, 1), (2, 3, 5, 7, 9), (1, 16, 16, 4, 4), (3, 17, 33, 13, 10),
                                       (2, 64, 48, 16, 16), (1, 40, 70, 5, 23), (2, 128, 128, 8, 8)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("fmt", ["nchw", "nhwc", "strided"])
def test_winograd_conv_matches_conv2d(N, C, K, H, W, bias, fmt):
    g = torch.Generator().manual_seed(N * 1000 + C * 31 + K * 7 + H + W)
    x = torch.randn(N, C, H, W, generator=g)
    if fmt == "nhwc":
        x = x.contiguous(memory_format=torch.channels_last)
    elif fmt == "strided":  # every other column of a wider tensor
        x = torch.randn(N, C, H, 2 * W, generator=g)[..., ::2]
    w = torch.randn(K, C, 3, 3, generator=g) / (3 * C ** 0.5)
    b = torch.randn(K, generator=g) if bias else None
    y = winograd_conv3x3(x, winograd_weight(w), b)
    assert y.shape == (N, K, H, W)
    if fmt == "nhwc" and C > 1 and H * W > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    else:
        assert y.is_contiguous()
    _close(y, x, w, b)


@pytest.mark.parametrize("chunk", [1, 7, 40])
def test_chunks_of_tiles_give_the_same_result(chunk):
    """Large inputs run in chunks of tiles (a bounded workspace); any chunk size, with a remainder,
    gives the one-chunk result (the same arithmetic per tile; the GEMM may sum in another order for
    another row count: float rounding)."""
    g = torch.Generator().manual_seed(chunk)
    x = torch.randn(3, 20, 10, 13, generator=g).contiguous(memory_format=torch.channels_last)  # 3 * 3 * 4 tiles
    w, b = torch.randn(24, 20, 3, 3, generator=g) * 0.1, torch.randn(24, generator=g)
    u = winograd_weight(w)
    whole = winograd_conv3x3(x, u, b)
    got = torch.ops.dalle2_fast.winograd_conv3x3(x, u, b, chunk)
    torch.testing.assert_close(got, whole, rtol=0, atol=3e-5 * whole.abs().max().item())
    _close(got, x, w, b)


def test_winograd_weight_is_the_filter_transform():
    """U = G g G^T of each filter (float64 check of the (36, K, C) layout), from either memory format."""
    G = torch.tensor([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                      [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], dtype=torch.float64)
    w = torch.randn(5, 3, 3, 3)
    u = winograd_weight(w)
    ref = (G @ w.double() @ G.T).permute(2, 3, 0, 1).reshape(36, 5, 3)
    torch.testing.assert_close(u.double(), ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(winograd_weight(w.contiguous(memory_format=torch.channels_last)), u, rtol=0, atol=0)


def test_non_finite_input_stays_local():
    """A NaN pixel poisons the outputs of its 4x4 tile's neighbourhood at most, not the image
    (the tiles are independent), and the finite outputs far from it match F.conv2d."""
    x = torch.randn(1, 8, 16, 16)
    x[0, 3, 9, 9] = float("nan")
    w = torch.randn(8, 8, 3, 3) * 0.1
    y = winograd_conv3x3(x, winograd_weight(w))
    bad = ~torch.isfinite(y[0]).all(0)
    assert bad[9, 9] and not bad[:4].any() and not bad[:, :4].any()
    ref = F.conv2d(x, w, padding=1)
    torch.testing.assert_close(y[..., :4, :], ref[..., :4, :], rtol=1e-4, atol=1e-4)


def test_winograd_errors():
    w = torch.randn(8, 4, 3, 3)
    u = winograd_weight(w)
    with pytest.raises(ValueError, match="x must be a .N, C, H, W. float32"):
        winograd_conv3x3(torch.randn(1, 4, 5, 5).double(), u)
    with pytest.raises(ValueError, match="C = 5 channels but u was made for C = 4"):
        winograd_conv3x3(torch.randn(1, 5, 5, 5), u)
    with pytest.raises(ValueError, match="u must come from winograd_weight"):
        winograd_conv3x3(torch.randn(1, 4, 5, 5), w)
    with pytest.raises(ValueError, match="bias must be float32 .8,."):
        winograd_conv3x3(torch.randn(1, 4, 5, 5), u, torch.randn(7))
    with pytest.raises(ValueError, match="weight must be a .K, C, 3, 3. float32"):
        winograd_weight(torch.randn(8, 4, 5, 5))


def _counting(monkeypatch):
    calls = []
    real = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    return calls


def test_winograd_convs_context(monkeypatch):
    """Inside: eligible convolutions' inference calls skip F.conv2d and match it; ineligible ones
    (stride 2, too few channels, 1x1), NCHW activations, gradients, autocast and a weight changed inside the block
    take the layer's own forward; on exit the modules are as before."""
    torch.manual_seed(0)
    c = max(MIN_CHANNELS, 8)
    net = nn.Sequential(nn.Conv2d(c, c + 8, 3, padding=1), nn.SiLU(), nn.Conv2d(c + 8, c, 3, padding=1),
                        nn.Conv2d(c, c, 3, stride=2, padding=1), nn.Conv2d(c, 4, 3, padding=1), nn.Conv2d(4, c, 1))
    x = torch.randn(2, c, 23, 26).contiguous(memory_format=torch.channels_last)  # 2 * 6 * 7 = 84 tiles
    assert MIN_TILES <= 84
    with torch.no_grad():
        ref = net(x)
    calls = _counting(monkeypatch)
    with winograd_convs(net):
        assert [winograd_enabled(m) for m in net if isinstance(m, nn.Conv2d)] == [True, True, False, False, False]
        with torch.no_grad():
            got = net(x)
            assert len(calls) == 3  # the stride-2, 4-channel and 1x1 convolutions
            calls.clear()
            net(x.contiguous())  # NCHW activations: the direct convolution
            assert len(calls) == 5
            calls.clear()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                net(x)
            assert len(calls) == 5
            calls.clear()
        xg = x.clone().requires_grad_()
        net(xg).sum().backward()
        assert len(calls) == 5 and xg.grad is not None
        calls.clear()
        with torch.no_grad():
            net[0].weight.mul_(2.0)  # changed inside the block: its transform is stale
            net(x)
            assert len(calls) == 4
            net[0].weight.mul_(0.5)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    assert all("forward" not in m.__dict__ for m in net)


def test_which_calls_take_winograd(monkeypatch):
    """Fewer than MIN_TILES output tiles: the direct convolution; more: Winograd, the filters
    transformed at each call (nothing held between calls)."""
    torch.manual_seed(2)
    conv = nn.Conv2d(MIN_CHANNELS, MIN_CHANNELS, 3, padding=1)
    small = torch.randn(1, MIN_CHANNELS, 8, 8).contiguous(memory_format=torch.channels_last)  # 4 tiles
    side = 4 * int(MIN_TILES ** 0.5 + 1)
    big = torch.randn(1, MIN_CHANNELS, side, side).contiguous(memory_format=torch.channels_last)
    made = []
    real = WG.winograd_weight
    monkeypatch.setattr(WG, "winograd_weight", lambda w: made.append(1) or real(w))
    with torch.no_grad(), winograd_convs(conv):
        for x in (small, big, big):
            torch.testing.assert_close(conv(x), nn.Conv2d.forward(conv, x), rtol=1e-4, atol=1e-4)
    assert len(made) == 2  # the big calls only, one transform each
