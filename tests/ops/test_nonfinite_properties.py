"""Non-finite inputs to nearest_code, adagn and the fused sampling steps (hypothesis), on every
backend runnable here (torch, cpu, triton under the interpreter), against the reference:

- nearest_code: a row with NaN -> index 0, sqdist NaN; a row with +-Inf -> index 0, sqdist
  +inf; a code with NaN / +-Inf is never chosen (all codes non-finite: index 0, +inf);
- adagn: NaN / +-Inf in x, weight, bias, scale, shift give the reference's NaN, +Inf and
  -Inf at the same places (the kernels evaluate in the reference's order: an Inf scale is
  not folded into inf - inf), finite values everywhere else;
- sampling steps: NaN / +-Inf in x, the model output (both CFG halves), noise, previous x0,
  with static or dynamic clipping, give the reference's NaN / +-Inf pattern (a NaN x0 is never
  clipped to the bound; a NaN dynamic threshold makes its sample NaN)."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dalle2_fast.ops import adagn, adagn_ref, nearest_code, nearest_code_ref
from dalle2_fast.ops.adagn import adagn_family
from dalle2_fast.ops.codebook import nearest_code_family
from dalle2_fast.ops.sampling import sampling_family
from tests.conftest import cpu_backends
from tests.ops.test_sampling_ops import _call, _inputs, _ref

# NaN arithmetic inside the Triton interpreter (numpy) is expected here, not a defect
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

NONFINITE = [float("nan"), float("inf"), float("-inf")]
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _spray(draw, t, most=3):
    """Put 0..most non-finite values at random places of t (in place)."""
    for _ in range(draw(st.integers(0, most))):
        if t.numel():
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from(NONFINITE))


def _pattern(t):
    t = t.double()
    return torch.stack([torch.isnan(t), t == float("inf"), t == float("-inf")])


# ----------------------------------------------------------------------------- nearest_code
@st.composite
def codebook_problems(draw):
    n, k, d = draw(st.integers(0, 20)), draw(st.integers(1, 20)), draw(st.integers(1, 16))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x, c = torch.randn(n, d, generator=g), torch.randn(k, d, generator=g)
    _spray(draw, x, 4)
    _spray(draw, c, 3)
    if draw(st.integers(0, 9)) == 0:  # every code non-finite
        c[:, 0] = draw(st.sampled_from(NONFINITE))
    return x, c


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@settings(max_examples=40, **SETTINGS)
@given(problem=codebook_problems())
def test_nearest_code_nonfinite(backend, problem):
    if backend not in cpu_backends(nearest_code_family):
        pytest.skip("not built")
    x, c = problem
    nan_row = torch.isnan(x).any(1)
    inf_row = ~torch.isfinite(x).all(1) & ~nan_row
    bad_code = ~torch.isfinite(c).all(1)
    for idx, sqd in (nearest_code(x, c, backend=backend), nearest_code_ref(x, c)):
        assert (idx[nan_row | inf_row] == 0).all()
        assert torch.isnan(sqd[nan_row]).all() and (sqd[inf_row] == float("inf")).all()
        ok = ~(nan_row | inf_row)
        if bad_code.all():
            assert (idx[ok] == 0).all() and (sqd[ok] == float("inf")).all()
            continue
        assert not bad_code[idx[ok]].any(), "a non-finite code is never chosen"
        x64, c64 = x[ok].double(), c[idx[ok]].double()
        chosen = ((x64 - c64) ** 2).sum(1)
        _, ref_d = nearest_code_ref(x[ok], c)
        assert (chosen <= ref_d.double() + 1e-4).all() and torch.allclose(sqd[ok].double(), chosen, atol=1e-4)


# ----------------------------------------------------------------------------- adagn
@st.composite
def adagn_problems(draw):
    groups, cg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    C, B = groups * cg, draw(st.integers(1, 2))
    spatial = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=2)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(B, C, *spatial, generator=g)
    params = dict(weight=torch.randn(C, generator=g), bias=torch.randn(C, generator=g),
                  scale=0.5 * torch.randn(B, C, generator=g), shift=torch.randn(B, C, generator=g))
    for t in (x, *params.values()):  # each input non-finite somewhere with probability 1/2
        if draw(st.booleans()):
            _spray(draw, t, 2)
    for name in ("weight", "bias", "scale", "shift"):
        if draw(st.integers(0, 3)) == 0:
            params[name] = None
    if draw(st.booleans()):
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    return x, groups, params, draw(st.sampled_from([None, "silu"]))


def _ambiguous(x, groups, params):
    """Elements where the reference multiplies a value within rounding of 0 by a non-finite
    weight or scale (0 * inf = NaN, tiny * inf = +-inf): float32 and float64 may round the
    value to 0 differently, so there the NaN-vs-Inf answer is precision's, not the kernel's."""
    B, C = x.shape[:2]
    xg = x.double().reshape(B, groups, -1)
    xhat = ((xg - xg.mean(-1, keepdim=True)) / (xg.var(-1, unbiased=False, keepdim=True) + 1e-5).sqrt())
    xhat = xhat.reshape(x.shape)
    shape = (1, C) + (1,) * (x.dim() - 2)
    w = params["weight"].double().reshape(shape) if params["weight"] is not None else 1.0
    b = params["bias"].double().reshape(shape) if params["bias"] is not None else 0.0
    return (xhat.abs() < 1e-3) | ((xhat * torch.nan_to_num(torch.as_tensor(w), posinf=1, neginf=-1) + b).abs() < 1e-3)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@settings(max_examples=40, **SETTINGS)
@given(problem=adagn_problems())
def test_adagn_nonfinite(backend, problem):
    if backend not in cpu_backends(adagn_family):
        pytest.skip("not built")
    x, groups, params, act = problem
    y = adagn(x, groups, act=act, backend=backend, **params)
    ref = adagn_ref(x, groups, act=act, upcast=True, **params)
    differ = (_pattern(y) != _pattern(ref)).any(0)
    assert not (differ & ~_ambiguous(x, groups, params)).any(), "NaN / +Inf / -Inf where the reference has them"
    fin = torch.isfinite(ref) & torch.isfinite(y.double())
    torch.testing.assert_close(y.double()[fin], ref[fin], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("act", [None, "silu"])
@pytest.mark.parametrize("where", ["x", "weight", "bias", "scale", "shift"])
def test_adagn_nonfinite_cases(backend, act, where):
    """One NaN / +Inf / -Inf in each input: the cases where the C++ and Triton kernels differed
    from the reference (an Inf scale folded into inf - inf = NaN; silu(-inf) = -inf; an Inf in
    x whose group variance was clamped from NaN to 0)."""
    if backend not in cpu_backends(adagn_family):
        pytest.skip("not built")
    for val in NONFINITE:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, 4, 3, 3, generator=g)
        params = dict(weight=torch.randn(4, generator=g), bias=torch.randn(4, generator=g),
                      scale=0.5 * torch.randn(2, 4, generator=g), shift=torch.randn(2, 4, generator=g))
        if where == "x":
            x[0, 1, 1, 1] = val
        elif where in ("weight", "bias"):
            params[where][1] = val
        else:
            params[where][0, 1] = val
        for xx in (x, x.contiguous(memory_format=torch.channels_last), x[:, :, :1, :1]):
            y = adagn(xx, 2, act=act, backend=backend, **params)
            ref = adagn_ref(xx, 2, act=act, upcast=True, **params)
            assert torch.equal(_pattern(y), _pattern(ref)), (where, val, act)
    if where == "x":  # a channel's first element is the kernels' shift: an Inf after it made m2 = inf - inf
        x = torch.tensor([[[1.5410, float("inf")]]])
        assert torch.isnan(adagn(x, 1, act=act, backend=backend)).all()


# ----------------------------------------------------------------------------- sampling steps
@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@settings(max_examples=40, **SETTINGS)
@given(B=st.integers(1, 3), dims=st.lists(st.integers(1, 6), min_size=1, max_size=2),
       kind=st.sampled_from(["ddpm", "ddim", "dpmpp_2m"]), pred=st.sampled_from(["eps", "x0", "v"]),
       clip=st.sampled_from([None, "static", "dynamic"]), cfg=st.booleans(), seed=st.integers(0, 2**31 - 1),
       data=st.data())
def test_sampling_nonfinite(backend, B, dims, kind, pred, clip, cfg, seed, data):
    if backend not in cpu_backends(sampling_family):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(seed)
    learned = kind == "ddpm" and seed % 2 == 0
    x, mo, coefs, guid, extra = _inputs((B, *dims), kind, cfg, learned, g, torch.float32)
    for t in (x, mo, extra):  # mo: both CFG halves and, for a learned variance, its v channels
        _spray(data.draw, t, 2)
    out, x0 = _call(kind, x, mo, coefs, guid, extra, pred, clip, learned, backend)
    ref, ref_x0 = _ref(kind, x, mo, coefs, guid, extra, pred, clip, learned, upcast=False)
    for got, want in ((out, ref), (x0, ref_x0)):
        assert torch.equal(_pattern(got), _pattern(want)), "NaN / +Inf / -Inf where the reference has them"
        fin = torch.isfinite(want)
        torch.testing.assert_close(got[fin].double(), want[fin].double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@pytest.mark.parametrize("clip", ["static", "dynamic"])
def test_sampling_clip_keeps_nan(backend, clip):
    """A NaN x0 is never clipped to the bound (the Triton min/max returned the bound), and a NaN
    dynamic threshold makes its sample NaN (the C++ kernel skipped clipping)."""
    if backend not in cpu_backends(sampling_family):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(0)
    for kind in ("ddpm", "ddim", "dpmpp_2m"):
        for what in ("x", "m"):
            x, mo, coefs, guid, extra = _inputs((2, 3, 4), kind, False, False, g, torch.float32)
            (x if what == "x" else mo)[0, 1, 2] = float("nan")
            out, x0 = _call(kind, x, mo, coefs, guid, extra, "eps", clip, False, backend)
            ref, ref_x0 = _ref(kind, x, mo, coefs, guid, extra, "eps", clip, False, upcast=True)
            assert torch.equal(torch.isnan(out), torch.isnan(ref)) and torch.isnan(out[0, 1, 2])
            assert torch.equal(torch.isnan(x0), torch.isnan(ref_x0))
            assert not torch.isnan(out[1]).any()
