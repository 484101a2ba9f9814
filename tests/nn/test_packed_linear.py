"""The few-row linear kernel (dalle2_fast::pack_linear / packed_linear, csrc/cpu/linear_cpu.cpp)
against F.linear on awkward shapes, its errors, and the packed_linears context."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast import _ext
from dalle2_fast.nn.packed_linear import MAX_ROWS, pack_linear, packed_linear, packed_linears

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason="C++ extension not built")


@pytest.mark.parametrize("M", [1, 5, 11, 12, 13, 24, 64])
@pytest.mark.parametrize("K,N", [(1, 1), (7, 31), (256, 32), (33, 33), (256, 100), (1024, 65)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_matches_f_linear(M, K, N, bias):
    g = torch.Generator().manual_seed(M * 1000 + K + N)
    x, w = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g)
    b = torch.randn(N, generator=g) if bias else None
    panels = pack_linear(w)
    assert panels.shape == ((N + 31) // 32, K, 32)
    got = packed_linear(x, panels, b, N)
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5 * K ** 0.5)
    xs = torch.randn(K, M, generator=g).t()  # non-contiguous rows
    torch.testing.assert_close(packed_linear(xs, panels, b, N), F.linear(xs, w, b),
                               rtol=1e-5, atol=1e-5 * K ** 0.5)


def test_packed_linear_errors():
    """Bad input: a clear error naming the argument (checked in Python before the C++ op, whose own
    checks are a backstop)."""
    w = torch.randn(40, 8)
    p = pack_linear(w)
    with pytest.raises(ValueError, match="x must be a 2-D float32"):
        packed_linear(torch.randn(2, 8).double(), p, None, 40)
    with pytest.raises(ValueError, match="K = 9"):
        packed_linear(torch.randn(2, 9), p, None, 40)
    with pytest.raises(ValueError, match="n = 70 does not fit 2 panels"):
        packed_linear(torch.randn(2, 8), p, None, 70)
    with pytest.raises(ValueError, match="bias must be float32"):
        packed_linear(torch.randn(2, 8), p, torch.randn(39), 40)
    with pytest.raises(ValueError, match="panels must come from pack_linear"):
        packed_linear(torch.randn(2, 8), w, None, 40)
    with pytest.raises(ValueError, match="weight must be a 2-D float32"):
        pack_linear(torch.randn(4, 4, 4))


def _counting(monkeypatch):
    calls = []
    real = F.linear
    monkeypatch.setattr(F, "linear", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    return calls


def test_packed_linears_context(monkeypatch):
    """Inside: few-row inference calls take the kernel (F.linear not called) and match F.linear;
    more rows, gradients, autocast and a weight changed inside fall back to F.linear; on exit
    the modules are as before."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(48, 70), nn.GELU(), nn.Linear(70, 5, bias=False))
    x = torch.randn(3, 4, 48)  # 12 rows
    with torch.no_grad():
        ref = net(x)
    calls = _counting(monkeypatch)
    with packed_linears(net):
        assert all("forward" in m.__dict__ for m in (net[0], net[2]))
        with torch.no_grad():
            got = net(x)
            assert not calls
            big = torch.randn(MAX_ROWS + 1, 48)
            torch.testing.assert_close(net(big), net[2](net[1](F.linear(big, net[0].weight, net[0].bias))))
            assert calls
            calls.clear()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                net(x)
            assert calls
            calls.clear()
        xg = x.clone().requires_grad_()
        net(xg).sum().backward()  # gradients: F.linear, autograd as usual
        assert calls and xg.grad is not None
        calls.clear()
        with torch.no_grad():
            net[0].weight.mul_(2.0)  # changed inside the block: the packed copy is stale
            net(x)
            assert len(calls) == 1  # the changed layer only
            net[0].weight.mul_(0.5)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert all("forward" not in m.__dict__ for m in (net[0], net[2]))


def test_packed_copies_are_kept_and_follow_the_weights():
    """keep: the next block reuses the packed copy; a weight changed between blocks (in place or
    replaced) is repacked; keep=False packs anew and holds nothing."""
    from dalle2_fast.nn import packed_linear as PL

    torch.manual_seed(1)
    lin = nn.Linear(16, 40)
    x = torch.randn(5, 16)
    with torch.no_grad():
        with packed_linears(lin, keep=True):
            first = lin.forward.args[1]
        with packed_linears(lin, keep=True):
            assert lin.forward.args[1] is first
        lin.weight.add_(1.0)  # in place: the version moves
        with packed_linears(lin, keep=True):
            assert lin.forward.args[1] is not first
            torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
        lin.weight = nn.Parameter(torch.randn(40, 16))  # replaced
        with packed_linears(lin):
            torch.testing.assert_close(lin(x), F.linear(x, lin.weight, lin.bias), rtol=1e-5, atol=1e-5)
        with packed_linears(lin, keep=False):
            pass
        assert lin not in PL._KEPT
