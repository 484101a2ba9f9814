"""adagn: every backend against the float64 reference (forward and all five gradients,
error-budget style), awkward shapes, large-offset cancellation, gradcheck, bad input,
torch.compile traceability, and the nn.AdaGN module."""
import zlib

import pytest
import torch

from dalle2_fast import _ext
from dalle2_fast.nn import AdaGN
from dalle2_fast.ops import BackendNotSupported, adagn, adagn_ref
from dalle2_fast.ops.adagn import adagn_family as FAM
from tests.conftest import cpu_backends

# (shape, groups, layout, what it catches); layout: 'nchw', 'cl' (channels-last), 'strided'.
CASES = [
    ((2, 32, 8, 8), 8, "nchw", "plain 2-D case"),
    ((2, 32, 8, 8), 8, "cl", "channels-last 2-D: NHWC tiles, rows strided by C"),
    ((3, 16, 5, 5), 1, "nchw", "groups=1: one group spans every channel"),
    ((2, 24, 4, 6), 24, "cl", "groups=C: one channel per group, many groups per NHWC tile"),
    ((2, 24, 4, 6), 24, "nchw", "groups=C, NCHW"),
    ((2, 320, 7, 7), 32, "nchw", "C=320 (not a power of two), Cg=10, odd 7x7 spatial"),
    ((2, 320, 7, 7), 32, "cl", "C=320 channels-last: last NHWC tile narrower than the rest"),
    ((4, 64, 1, 1), 16, "nchw", "H*W=1: statistics over channels only"),
    ((3, 8, 1, 1), 8, "nchw", "one element per group: variance 0, output = shifted bias"),
    ((1, 64, 64, 64), 32, "nchw", "64x64: several reduction chunks per channel"),
    ((1, 64, 64, 64), 32, "cl", "64x64 channels-last: several row chunks"),
    ((2, 12, 3, 4, 5), 3, "cl", "3-D spatial, channels_last_3d"),
    ((2, 12, 3, 4, 5), 4, "nchw", "3-D spatial"),
    ((2, 8, 33), 2, "nchw", "1-D spatial, odd length"),
    ((2, 8, 33), 4, "cl", "1-D spatial, channels-last (B, L, C) memory"),
    ((3, 16, 9, 10), 4, "strided", "non-contiguous (sliced) input: copied first"),
]
# The Triton interpreter is slow: a few small shapes that still cover each layout, group size
# and spatial rank.
CASES_INTERP = [
    ((2, 16, 5, 5), 1, "cl", "groups=1, channels-last"),
    ((2, 24, 4, 6), 24, "nchw", "groups=C"),
    ((2, 40, 3, 3), 4, "cl", "Cg=10: channel tile (16) wider than the group"),
    ((3, 8, 1, 1), 8, "nchw", "one element per group: variance 0"),
    ((2, 6, 3, 4, 5), 3, "cl", "3-D spatial, channels_last_3d"),
    ((2, 8, 33), 4, "nchw", "1-D spatial, odd length"),
    ((2, 8, 5, 6), 2, "strided", "non-contiguous input"),
]

EPS = {torch.float32: 1.2e-7, torch.float16: 9.8e-4, torch.bfloat16: 7.8e-3, torch.float64: 2.2e-16}


def _make_x(shape, layout, dtype, g, offset=0.0):
    if layout == "strided":
        big = (torch.randn(shape[0], shape[1], shape[2], 2 * shape[3], generator=g) * 1.5 + offset).to(dtype)
        return big[..., ::2]  # (B, C, H, W) view with stride 2 in W
    x = torch.randn(*shape, generator=g) * 1.5 + offset
    if layout == "cl":
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)  # channels-last for any spatial rank
    return x.to(dtype)


def _inputs(shape, layout, dtype, g, offset=0.0, pdtype=None):
    B, C = shape[:2]
    x = _make_x(shape, layout, dtype, g, offset)
    pdt = pdtype or dtype
    w = (1 + 0.5 * torch.randn(C, generator=g)).to(pdt)
    b = (0.5 * torch.randn(C, generator=g)).to(pdt)
    sc = (0.5 * torch.randn(B, C, generator=g)).to(pdt)
    sh = (0.5 * torch.randn(B, C, generator=g)).to(pdt)
    dy = torch.randn(*shape, generator=g)
    return x, [w, b, sc, sh], dy


def _run(fn, x, params, dy):
    """Forward + backward; returns [out, dx, dweight, dbias, dscale, dshift] (detached)."""
    x = x.detach().requires_grad_()
    ps = [p.detach().requires_grad_() for p in params]
    y = fn(x, *ps)
    y.backward(dy.to(y.dtype))
    return [y.detach(), x.grad] + [p.grad for p in ps]


NAMES = ["out", "dx", "dweight", "dbias", "dscale", "dshift"]


def _check_budget(backend, dtype, shape, groups, layout, act, g, offset=0.0):
    x, params, dy = _inputs(shape, layout, dtype, g, offset)
    ours = _run(lambda x, *p: adagn(x, groups, *p, act=act, backend=backend), x, params, dy)
    ref = _run(lambda x, *p: adagn_ref(x, groups, *p, act=act, upcast=True), x.double(),
               [p.double() for p in params], dy.double())
    low = _run(lambda x, *p: adagn_ref(x, groups, *p, act=act), x, params, dy)  # torch at `dtype`
    assert ours[0].dtype == dtype and ours[0].shape == x.shape
    assert layout != "strided" or not x.is_contiguous()
    if layout == "cl" and backend != "torch":
        assert ours[0].stride() == x.stride(), "channels-last in must give channels-last out"
    # dx carries 1/sqrt(var + eps) of each group: float32 rounding of the normalised values is
    # amplified by it (large for near-constant groups, e.g. one element per group).
    xg = x.double().reshape(shape[0], groups, -1)
    amp = (xg.var(-1, unbiased=False) + 1e-5).rsqrt().max().item()
    for name, o, r, t in zip(NAMES, ours, ref, low):
        assert o.shape == r.shape, name
        scale = r.abs().max().item() + 1.0
        if name == "dx":
            scale += amp * dy.abs().max().item()
        err = (o.double() - r).abs().max().item()
        torch_err = (t.double() - r).abs().max().item()
        budget = 3 * torch_err + 8 * EPS[dtype] * scale
        assert err <= budget, f"{name}: error {err:.3g} > budget {budget:.3g} (torch's own error {torch_err:.3g})"


@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_matches_reference(backend, dtype, act):
    if backend not in cpu_backends(FAM, dtype):
        pytest.skip(f"{backend} not built or no {dtype} kernel")
    if backend == "triton" and dtype == torch.bfloat16:
        with pytest.raises(BackendNotSupported, match="bfloat16"):
            adagn(torch.randn(2, 4, 3, 3, dtype=dtype), 2, backend="triton")
        return
    g = torch.Generator().manual_seed(zlib.crc32(f"{backend}{dtype}{act}".encode()))
    for shape, groups, layout, _why in CASES_INTERP if backend == "triton" else CASES:
        _check_budget(backend, dtype, shape, groups, layout, act, g)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_forward_rounds_like_torch(dtype, layout):
    """The CPU kernel's half / bfloat16 forward (run on float copies of each row, then rounded)
    equals the float32 kernel's output rounded to the dtype, up to one unit in the last place
    (the float32 math on the same rounded inputs), NaN / +-Inf inputs included: NaN where the
    reference has NaN."""
    if "cpu" not in cpu_backends(FAM, dtype):
        pytest.skip(f"cpu kernel not built for {dtype}")
    g = torch.Generator().manual_seed(int(torch.randint(0, 1 << 30, ())))
    shape = (2, 40, 17, 19)
    x = _make_x(shape, layout, dtype, g)
    for i in range(3):  # NaN at three random places, +Inf at one
        x[i % 2, int(torch.randint(0, 40, (), generator=g)), int(torch.randint(0, 17, (), generator=g)),
          int(torch.randint(0, 19, (), generator=g))] = float("nan")
    x[1, 5, 3, 7] = float("inf")
    params = [torch.randn(40, generator=g), torch.randn(40, generator=g),
              torch.randn(2, 40, generator=g) * 0.3, torch.randn(2, 40, generator=g) * 0.3]
    got = adagn(x, 8, *params, act="silu", backend="cpu")
    want = adagn(x.float(), 8, *params, act="silu", backend="cpu").to(dtype)
    fmt = torch.channels_last if layout == "cl" else torch.contiguous_format
    assert got.dtype == dtype and got.is_contiguous(memory_format=fmt)
    assert torch.equal(got.isnan(), want.isnan())
    ok = ~want.isnan()
    ulp = EPS[dtype] * want[ok].float().abs().clamp_min(1e-3)
    assert ((got[ok].float() - want[ok].float()).abs() <= ulp * 1.01).all()


@pytest.mark.parametrize("act", [None, "silu"])
def test_torch_backend_against_float64(act):
    """The torch backend (float32) against the float64 reference with a fixed tolerance."""
    g = torch.Generator().manual_seed(1)
    for shape, groups, layout, _why in CASES[:8]:
        x, params, dy = _inputs(shape, layout, torch.float32, g)
        ours = _run(lambda x, *p: adagn(x, groups, *p, act=act, backend="torch"), x, params, dy)
        ref = _run(lambda x, *p: adagn_ref(x, groups, *p, act=act, upcast=True), x.double(),
                   [p.double() for p in params], dy.double())
        for name, o, r in zip(NAMES, ours, ref):
            torch.testing.assert_close(o.double(), r, rtol=1e-4, atol=1e-4 * (r.abs().max().item() + 1), msg=name)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_large_offset_no_cancellation(backend, layout):
    """x = N(0, 1.5^2) + 1e4 in float32: E[x^2] - E[x]^2 would lose every digit (1e8 vs ~2;
    torch 2.14's own channels-last CPU group_norm returns errors ~1e3 here, so the torch
    backend is not part of this test). Shifted sums + Chan merges leave only the rounding of
    the float32 mean (ulp(1e4)/2 ~ 5e-4 in x - mean), which the tolerance allows."""
    if backend not in cpu_backends(FAM, torch.float32):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(7)
    shape = (2, 32, 16, 16) if backend != "triton" else (2, 8, 6, 6)
    for act in (None, "silu"):
        x, params, dy = _inputs(shape, layout, torch.float32, g, offset=1e4)
        ours = _run(lambda x, *p: adagn(x, 4, *p, act=act, backend=backend), x, params, dy)
        ref = _run(lambda x, *p: adagn_ref(x, 4, *p, act=act, upcast=True), x.double(),
                   [p.double() for p in params], dy.double())
        for name, o, r in zip(NAMES, ours, ref):
            err = (o.double() - r).abs().max().item()
            assert err <= 4e-3 * (1 + r.abs().max().item()), f"{name}: {err}"


@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_gradcheck_float64(backend, layout, act):
    if backend not in cpu_backends(FAM, torch.float64):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(3)
    for shape, groups in (((2, 4, 2, 3), 2), ((1, 4, 5), 4)):
        x, params, _ = _inputs(shape, layout, torch.float64, g)
        inputs = [x.requires_grad_()] + [p.requires_grad_() for p in params]
        assert torch.autograd.gradcheck(
            lambda x, *p: adagn(x, groups, *p, act=act, backend=backend), inputs, eps=1e-6, atol=1e-5)
    # fast_mode (random projections) on a larger channels-last-sensitive shape
    x, params, _ = _inputs((2, 8, 3, 3), layout, torch.float64, g)
    inputs = [x.requires_grad_()] + [p.requires_grad_() for p in params]
    assert torch.autograd.gradcheck(
        lambda x, *p: adagn(x, 4, *p, act=act, backend=backend), inputs, eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_optional_params_and_float32_params(backend):
    """None for any of weight/bias/scale/shift; float32 parameters with float16 x (mixed
    precision: gradients come back in the parameters' dtype)."""
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(5)
    x, (w, b, sc, sh), dy = _inputs((2, 8, 5, 5), "nchw", torch.float32, g)
    for ps in ([None, None, None, None], [w, None, sc, None], [None, b, None, sh]):
        out = adagn(x, 4, *ps, act="silu", backend=backend)
        ref = adagn_ref(x, 4, *ps, act="silu", upcast=True)
        torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    xh = x.half().requires_grad_()
    ps = [t.clone().requires_grad_() for t in (w, b, sc, sh)]
    out = adagn(xh, 4, *ps, act="silu", backend=backend)
    out.backward(dy.half())
    assert out.dtype == torch.float16 and all(p.grad.dtype == torch.float32 for p in ps)
    ref = _run(lambda x, *p: adagn_ref(x, 4, *p, act="silu", upcast=True), xh.detach().double(),
               [p.detach().double() for p in ps], dy.double())
    for name, o, r in zip(NAMES, [out.detach(), xh.grad] + [p.grad for p in ps], ref):
        torch.testing.assert_close(o.double(), r, rtol=1e-2, atol=1e-2 * (r.abs().max().item() + 1), msg=name)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_empty_batch(backend):
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    x = torch.randn(0, 8, 3, 3, requires_grad=True)
    y = adagn(x, 2, scale=torch.randn(0, 8), shift=torch.randn(0, 8), act="silu", backend=backend)
    assert y.shape == (0, 8, 3, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=torch.randn(2, 6, 4, 4), num_groups=4), "num_groups=4 must divide the channel count C=6"),
        (dict(x=torch.randn(2, 8, 4, 4), num_groups=2, scale=torch.randn(2, 4)), r"scale must have shape \(2, 8\)"),
        (dict(x=torch.randn(2, 8, 4, 4), num_groups=2, shift=torch.randn(8)), r"shift must have shape \(2, 8\)"),
        (dict(x=torch.randn(2, 8, 4, 4), num_groups=2, weight=torch.randn(2, 8)), r"weight must have shape \(8,\)"),
        (dict(x=torch.randn(2, 8), num_groups=2), "1-3 spatial dims"),
        (dict(x=torch.randn(2, 8, 1, 1, 1, 1), num_groups=2), "1-3 spatial dims"),
        (dict(x=torch.randn(2, 8, 3).half(), num_groups=2, bias=torch.randn(8).double()), "bias must be"),
        (dict(x=torch.ones(2, 8, 3, dtype=torch.int32), num_groups=2), "x must be float32"),
        (dict(x=torch.randn(2, 8, 3), num_groups=2, act="relu"), "act must be None or 'silu'"),
        (dict(x=torch.randn(2, 8, 3), num_groups=0), "num_groups must be a positive int"),
        (dict(x=torch.randn(2, 8, 3), num_groups=2, scale=torch.randn(2, 8, device="meta")), "scale is on meta"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        adagn(**kwargs)


def test_forced_backend_never_falls_back(monkeypatch):
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(BackendNotSupported, match="cuda"):
        adagn(x, 2, backend="cuda")
    monkeypatch.setenv("DALLE2_FAST_BACKEND", "cuda")
    with pytest.raises(BackendNotSupported, match="requested"):
        adagn(x, 2)


def test_auto_picks_cpu_kernel_on_cpu():
    expected = "cpu" if _ext.loaded() else "torch"
    assert FAM.select(torch.randn(2, 8, 3, 3)).backend == expected


@pytest.mark.parametrize("backend, layout", [("torch", "nchw"), ("cpu", "nchw"), ("cpu", "cl")])
def test_torch_compile_fullgraph(backend, layout):
    """Forward and backward trace with no graph break (custom ops + fakes + autograd.Function)."""
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(11)
    x, params, dy = _inputs((2, 16, 6, 6), layout, torch.float32, g)

    def f(x, w, b, sc, sh):
        return adagn(x, 4, w, b, sc, sh, act="silu", backend=backend)

    compiled = torch.compile(f, fullgraph=True)
    got = _run(compiled, x, params, dy)
    want = _run(f, x, params, dy)
    for name, o, r in zip(NAMES, got, want):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5, msg=name)
    assert got[0].stride() == want[0].stride()


# ----------------------------------------------------------------------------- nn.AdaGN
def test_module_forms_agree():
    """(B, 2C) embedding-projection output == (scale, shift) pair == the op; one_plus=False
    gives the paper's y_s * GN(h) + y_b."""
    torch.manual_seed(0)
    m = AdaGN(16, num_groups=4, act="silu")
    with torch.no_grad():
        m.weight.normal_(1, 0.3)
        m.bias.normal_(0, 0.3)
    x, emb = torch.randn(3, 16, 5, 5), torch.randn(3, 32)
    s, t = emb.chunk(2, dim=1)
    y1 = m(x, emb)
    y2 = m(x, (s, t))
    y3 = adagn(x, 4, m.weight, m.bias, s, t, act="silu")
    torch.testing.assert_close(y1, y3)
    torch.testing.assert_close(y2, y3)
    paper = AdaGN(16, num_groups=4, one_plus=False, affine=False)
    gn = torch.nn.functional.group_norm(x, 4)
    torch.testing.assert_close(paper(x, emb), s[..., None, None] * gn + t[..., None, None], rtol=1e-5, atol=1e-5)
    # No embedding: plain GroupNorm (+ act).
    torch.testing.assert_close(AdaGN(16, 4)(x), gn, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"emb must be \(B, 2C\) = \(3, 32\)"):
        m(x, torch.randn(3, 16))


def test_module_gradients_reach_parameters():
    m = AdaGN(8, num_groups=2, act="silu")
    proj = torch.nn.Linear(4, 16)
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    m(x, proj(torch.randn(2, 4))).square().mean().backward()
    assert m.weight.grad is not None and m.bias.grad is not None and proj.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_module_fits_parameter_dtypes():
    """Autocast mixes dtypes: a bf16 embedding projection next to a float32 x (or an fp16 one
    next to a bf16 x) is cast to float32 inside the module (the op takes x's dtype or float32
    only); the result equals the all-float32 computation on the rounded embedding."""
    torch.manual_seed(1)
    m = AdaGN(16, num_groups=4, act="silu")
    with torch.no_grad():
        m.weight.normal_(1, 0.3)
        m.bias.normal_(0, 0.3)
    x = torch.randn(2, 16, 3, 5)
    for xd, ed in ((torch.float32, torch.bfloat16), (torch.bfloat16, torch.float16)):
        emb = torch.randn(2, 32).to(ed)
        with pytest.raises(TypeError, match="float32"):  # what the module saves the caller from
            adagn(x.to(xd), 4, m.weight, m.bias, *emb.chunk(2, dim=1), act="silu")
        out = m(x.to(xd), emb)
        assert out.dtype == xd
        ref = adagn_ref(x.to(xd).double(), 4, m.weight.double(), m.bias.double(), *emb.double().chunk(2, dim=1),
                        act="silu")
        torch.testing.assert_close(out.double(), ref, rtol=2e-2 if xd != torch.float32 else 1e-5,
                                   atol=2e-2 if xd != torch.float32 else 1e-5)


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_backends(backend, dtype):
    g = torch.Generator().manual_seed(0)
    extra = [((16, 320, 64, 64), 32, "cl", "ADM-sized, NHWC"), ((16, 640, 32, 32), 32, "nchw", "split path"),
             ((64, 256, 4, 4), 32, "nchw", "small H*W, many groups per block")]
    for shape, groups, layout, _ in CASES + extra:
        for act in (None, "silu"):
            x, params, dy = _inputs(shape, layout, dtype, g)
            dev = [t.cuda() for t in [x] + params + [dy]]
            ours = _run(lambda x, *p: adagn(x, groups, *p, act=act, backend=backend), dev[0], dev[1:5], dev[5])
            ref = _run(lambda x, *p: adagn_ref(x, groups, *p, act=act, upcast=True), x.double(),
                       [p.double() for p in params], dy.double())
            low = _run(lambda x, *p: adagn_ref(x, groups, *p, act=act), dev[0], dev[1:5], dev[5])
            for name, o, r, t in zip(NAMES, ours, ref, low):
                err = (o.cpu().double() - r).abs().max().item()
                budget = 3 * (t.cpu().double() - r).abs().max().item() + 8 * EPS[dtype] * (r.abs().max().item() + 1)
                assert err <= budget, (shape, layout, act, name, err, budget)


@pytest.mark.gpu
def test_gpu_compile_triton():
    x = torch.randn(4, 64, 16, 16, device="cuda")
    f = torch.compile(lambda a: adagn(a, 8, act="silu", backend="triton"), fullgraph=True)
    torch.testing.assert_close(f(x), adagn_ref(x, 8, act="silu"), rtol=1e-4, atol=1e-4)

