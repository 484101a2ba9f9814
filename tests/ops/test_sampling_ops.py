"""Fused sampling steps: every backend against the float64 reference (error budget), every
sampler kind x parameterisation x guidance x clipping, awkward shapes, per-sample coefficients,
dynamic thresholding, bad input, custom-op checks and torch.compile traceability."""
import itertools

import numpy as np
import pytest
import torch

from dalle2_fast import _ext
from dalle2_fast.ops import BackendNotSupported, ddim_coefs, ddim_step, ddpm_coefs, ddpm_step, dpmpp_2m_coefs
from dalle2_fast.ops import dpmpp_2m_step, dynamic_threshold_values, predict_x0, sampling_step_ref
from dalle2_fast.ops.sampling import sampling_family as FAM
from tests.conftest import cpu_backends

# (shape, what it catches)
SHAPES = [
    (1, 1, 1, 1),  # batch 1, one element: degenerate loops, per-sample indexing
    (3, 3, 7, 9),  # odd sizes: no vector-width assumptions
    (2, 4, 33),  # 1-D signal (prior embeddings): any trailing rank
    (5, 3, 100, 97),  # 145500 elements > 2 x the 65536 grain: thread chunks split samples
]
SHAPES_INTERP = SHAPES[:3]  # the Triton interpreter is slow
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _inputs(shape, kind, cfg, learned, g, dtype):
    B = shape[0]
    x = torch.randn(shape, generator=g)
    C2 = shape[1] * (2 if learned else 1)
    mo = torch.randn((2 * B if cfg else B, C2, *shape[2:]), generator=g)
    if learned:
        mo[:, shape[1]:] = torch.rand(mo[:, shape[1]:].shape, generator=g) * 2 - 1  # v in [-1, 1]
    ab_t = torch.rand(B, generator=g, dtype=torch.float64) * 0.9 + 0.05  # each sample its own t
    ab_s = (ab_t + torch.rand(B, generator=g, dtype=torch.float64) * 0.05).clamp(max=1.0)
    if kind == "ddpm":
        lo = torch.log(1 - ab_t / ab_s + 1e-3)
        coefs = ddpm_coefs(ab_t, ab_s, lo, lo + 0.5, 1.0)
    elif kind == "ddim":
        coefs = ddim_coefs(ab_t, ab_s, 0.6)
    else:
        coefs, _ = dpmpp_2m_coefs(ab_t, ab_s, torch.rand(B, generator=g, dtype=torch.float64) + 0.1)
    guid = torch.rand(B, generator=g) * 6 if cfg else None
    extra = torch.randn(shape, generator=g)
    return x.to(dtype), mo.to(dtype), coefs, guid, extra.to(dtype)


def _call(kind, x, mo, coefs, guid, extra, pred, clip, learned, backend):
    if kind == "ddpm":
        return ddpm_step(x, mo, coefs.float(), extra, pred=pred, guidance=guid, clip=clip, learned_var=learned,
                         want_x0=True, backend=backend)
    if kind == "ddim":
        return ddim_step(x, mo, coefs.float(), extra, pred=pred, guidance=guid, clip=clip, want_x0=True,
                         backend=backend)
    return dpmpp_2m_step(x, mo, coefs.float(), extra, pred=pred, guidance=guid, clip=clip, backend=backend)


def _ref(kind, x, mo, coefs, guid, extra, pred, clip, learned, upcast):
    from dalle2_fast.ops.sampling import KINDS, PREDS

    thresh = None
    args = (x, mo, coefs.to(torch.float64 if x.dtype == torch.float64 else torch.float32))
    if clip == "static":
        thresh = torch.ones(x.shape[0])
    elif clip == "dynamic":
        raw, _ = sampling_step_ref(*args, guid, None, None, None, 0, PREDS[pred], learned, False, upcast=upcast)
        thresh = dynamic_threshold_values(raw)
    noise = extra if kind != "dpmpp_2m" else None
    prev = extra if kind == "dpmpp_2m" else None
    return sampling_step_ref(*args, guid, thresh, noise, prev, KINDS[kind], PREDS[pred], learned, True,
                             upcast=upcast)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_matches_reference(backend, dtype):
    if backend not in cpu_backends(FAM, dtype):
        pytest.skip(f"{backend} not built or no {dtype} kernel")
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 arithmetic (refusal: test_bad_input_messages)")
    g = torch.Generator().manual_seed(hash((backend, str(dtype))) % 2**31)
    combos = list(itertools.product(["ddpm", "ddim", "dpmpp_2m"], ["eps", "x0", "v"], [None, "static", "dynamic"],
                                    [False, True]))
    shapes = SHAPES_INTERP if backend == "triton" else SHAPES
    for i, (kind, pred, clip, cfg) in enumerate(combos):
        learned = kind == "ddpm" and i % 2 == 0
        shape = shapes[i % len(shapes)]
        x, mo, coefs, guid, extra = _inputs(shape, kind, cfg, learned, g, dtype)
        out, x0 = _call(kind, x, mo, coefs, guid, extra, pred, clip, learned, backend)
        ref, ref_x0 = _ref(kind, x, mo, coefs, guid, extra, pred, clip, learned, upcast=True)
        low, _ = _ref(kind, x, mo, coefs, guid, extra, pred, clip, learned, upcast=False)
        assert out.dtype == dtype and out.shape == x.shape and x0.shape == x.shape
        # Error budget: within a small multiple of the float32 reference's own error (which
        # includes rounding to dtype) plus the dtype's rounding of the result.
        budget = 3 * (low.double() - ref.double()).abs().max() + TOL[dtype] * (ref.double().abs().max() + 1)
        err = (out.double() - ref.double()).abs().max()
        assert err <= budget, (kind, pred, clip, cfg, learned, shape, float(err), float(budget))
        err0 = (x0.double() - ref_x0.double()).abs().max()
        assert err0 <= TOL[dtype] * (ref_x0.double().abs().max() + 1) * 4, (kind, pred, clip, cfg, float(err0))


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_float64(backend):
    """float64 inputs compute in float64 (the peer-agreement tests rely on it)."""
    if backend not in cpu_backends(FAM, torch.float64):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(1)
    x, mo, coefs, guid, z = _inputs((3, 2, 5, 5), "ddpm", True, True, g, torch.float64)
    out, x0 = ddpm_step(x, mo, coefs, z, pred="v", guidance=guid.double(), clip="dynamic", learned_var=True,
                        want_x0=True, backend=backend)
    ref, ref_x0 = _ref("ddpm", x, mo, coefs, guid.double(), z, "v", "dynamic", True, upcast=True)
    assert (out - ref).abs().max() < 1e-12 and (x0 - ref_x0).abs().max() < 1e-12


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_per_sample_coefficients(backend):
    """Sample b of a batch equals the same step run on sample b alone: coefficients, guidance
    scale and thresholds are per sample (samples at different timesteps in one call)."""
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(2)
    x, mo, coefs, guid, z = _inputs((4, 3, 6, 5), "ddim", True, False, g, torch.float32)
    out, _ = ddim_step(x, mo, coefs.float(), z, guidance=guid, clip="dynamic", backend=backend)
    for b in range(4):
        mo_b = torch.cat([mo[b : b + 1], mo[4 + b : 5 + b]])
        one, _ = ddim_step(x[b : b + 1], mo_b, coefs[b : b + 1].float(), z[b : b + 1], guidance=guid[b : b + 1],
                           clip="dynamic", backend=backend)
        torch.testing.assert_close(out[b : b + 1], one, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_non_contiguous(backend):
    """Strided x / model_out / noise (e.g. a channels-last view) give the contiguous result."""
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(3)
    x, mo, coefs, _, z = _inputs((2, 3, 8, 6), "ddpm", False, False, g, torch.float32)
    xs, ms, zs = (t.transpose(2, 3).contiguous().transpose(2, 3) for t in (x, mo, z))
    assert not xs.is_contiguous()
    a, _ = ddpm_step(x, mo, coefs.float(), z, backend=backend)
    b, _ = ddpm_step(xs, ms, coefs.float(), zs, backend=backend)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dynamic_threshold_matches_numpy():
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(5, 3, 7, 7, generator=g, dtype=torch.float64) * torch.tensor([0.2, 1, 2, 3, 5.0]).view(5, 1, 1, 1)
    for p in (0.9, 0.995, 1.0):
        want = np.maximum(np.percentile(x0.abs().reshape(5, -1).numpy(), p * 100, axis=1), 1.0)
        np.testing.assert_allclose(dynamic_threshold_values(x0, p).numpy(), want, rtol=1e-12)


def test_predict_x0_and_static_clip():
    g = torch.Generator().manual_seed(5)
    x, mo, coefs, _, _ = _inputs((3, 2, 4, 4), "ddim", False, False, g, torch.float64)
    a = coefs[:, 0].view(3, 1, 1, 1)
    s = coefs[:, 1].view(3, 1, 1, 1)
    want = (x - s * mo) / a
    torch.testing.assert_close(predict_x0(x, mo, coefs, pred="eps", backend="torch"), want)
    torch.testing.assert_close(predict_x0(x, mo, coefs, pred="eps", clip="static", backend="torch"), want.clamp(-1, 1))


def test_coefficients_match_closed_forms():
    """DDIM with eta = 1 has the DDPM posterior std; DPM++(2M) first order is DDIM eta = 0;
    the end of sampling (abar_s = 1) returns x0 exactly."""
    ab_t = torch.tensor([0.3, 0.7, 0.95], dtype=torch.float64)
    ab_s = torch.tensor([0.4, 0.8, 0.99], dtype=torch.float64)
    post_var = (1 - ab_t / ab_s) * (1 - ab_s) / (1 - ab_t)
    torch.testing.assert_close(ddim_coefs(ab_t, ab_s, 1.0)[:, 6], post_var.sqrt())
    dd = ddpm_coefs(ab_t, ab_s, post_var.log())
    torch.testing.assert_close(dd[:, 9], post_var.sqrt())
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 2, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 2, 3, generator=g, dtype=torch.float64)
    a, _ = ddim_step(x, eps, ddim_coefs(ab_t, ab_s, 0.0), backend="torch")
    b, _ = dpmpp_2m_step(x, eps, dpmpp_2m_coefs(ab_t, ab_s)[0], backend="torch")
    torch.testing.assert_close(a, b)
    end, x0 = ddim_step(x, eps, ddim_coefs(ab_t, 1.0, 0.0), want_x0=True, backend="torch")
    torch.testing.assert_close(end, x0)


def test_bad_input_messages():
    x = torch.randn(2, 3, 4)
    c = ddim_coefs(torch.tensor([0.5, 0.5]), 0.6)
    with pytest.raises(ValueError, match="model_out must be"):
        ddim_step(x, torch.randn(2, 5, 4), c)
    with pytest.raises(ValueError, match="model_out must be .4,"):
        ddim_step(x, torch.randn(2, 3, 4), c, guidance=torch.ones(2))  # CFG needs 2B rows
    with pytest.raises(ValueError, match="coefs must be"):
        ddim_step(x, torch.randn(2, 3, 4), c[:1])
    with pytest.raises(ValueError, match="pred must be"):
        ddim_step(x, torch.randn(2, 3, 4), c, pred="score")
    with pytest.raises(ValueError, match="clip must be"):
        ddim_step(x, torch.randn(2, 3, 4), c, clip="yes")
    with pytest.raises(ValueError, match="noise must have"):
        ddim_step(x, torch.randn(2, 3, 4), c, torch.randn(2, 3))
    with pytest.raises(ValueError, match="learned_var|model_out"):
        ddpm_step(x, torch.randn(2, 3, 4), c, learned_var=True)
    with pytest.raises(BackendNotSupported, match="bfloat16"):
        xb = x.bfloat16()
        ddim_step(xb, xb.clone(), c.float(), backend="triton")


@pytest.mark.skipif(not _ext.loaded(), reason="extension not built")
def test_opcheck():
    g = torch.Generator().manual_seed(7)
    x, mo, coefs, guid, z = _inputs((2, 3, 4, 4), "ddpm", True, True, g, torch.float32)
    args = (x, mo, coefs.float(), guid, torch.ones(2), z, None, 1, 2, True, True)
    torch.library.opcheck(torch.ops.dalle2_fast.sampling_step.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_torch_compile_fullgraph(backend):
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(8)
    x, mo, coefs, guid, z = _inputs((2, 3, 4, 4), "ddim", True, False, g, torch.float32)
    c = coefs.float()

    def f(x, mo, c, guid, z):
        return ddim_step(x, mo, c, z, guidance=guid, clip="static", want_x0=True, backend=backend)

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="eager")(x, mo, c, guid, z)
    want = f(x, mo, c, guid, z)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_backends_match_reference(backend, dtype):
    g = torch.Generator().manual_seed(9)
    for kind, pred, clip, cfg in itertools.product(["ddpm", "ddim", "dpmpp_2m"], ["eps", "v"], [None, "dynamic"],
                                                   [False, True]):
        learned = kind == "ddpm"
        x, mo, coefs, guid, extra = _inputs((5, 3, 40, 65), kind, cfg, learned, g, dtype)
        ref, ref_x0 = _ref(kind, x, mo, coefs, guid, extra, pred, clip, learned, upcast=True)
        low, _ = _ref(kind, x, mo, coefs, guid, extra, pred, clip, learned, upcast=False)
        cu = lambda t: None if t is None else t.cuda()  # noqa: E731
        out, x0 = _call(kind, cu(x), cu(mo), cu(coefs), cu(guid), cu(extra), pred, clip, learned, backend)
        budget = 3 * (low.double() - ref.double()).abs().max() + TOL[dtype] * (ref.double().abs().max() + 1)
        assert (out.cpu().double() - ref.double()).abs().max() <= budget, (kind, pred, clip, cfg)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_gpu_torch_compile_fullgraph(backend):
    g = torch.Generator().manual_seed(10)
    x, mo, coefs, guid, z = (t.cuda() for t in _inputs((2, 3, 8, 8), "ddim", True, False, g, torch.float32))
    c = coefs.float()

    def f(x, mo, c, guid, z):
        return ddim_step(x, mo, c, z, guidance=guid, clip="static", want_x0=True, backend=backend)

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True)(x, mo, c, guid, z)
    torch.testing.assert_close(got[0], f(x, mo, c, guid, z)[0])


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    given = None

if given is not None:

    @settings(max_examples=25, deadline=None)
    @given(B=st.integers(1, 6), dims=st.lists(st.integers(1, 17), min_size=1, max_size=3),
           kind=st.sampled_from(["ddpm", "ddim", "dpmpp_2m"]), pred=st.sampled_from(["eps", "x0", "v"]),
           clip=st.sampled_from([None, "static", "dynamic"]), cfg=st.booleans(), seed=st.integers(0, 2**31 - 1))
    def test_property_cpu_matches_reference(B, dims, kind, pred, clip, cfg, seed):
        """Any batch / trailing shape / switch combination: the cpu kernel within the float32 budget."""
        if "cpu" not in cpu_backends(FAM):
            pytest.skip("not built")
        g = torch.Generator().manual_seed(seed)
        learned = kind == "ddpm" and seed % 2 == 0
        x, mo, coefs, guid, extra = _inputs((B, *dims), kind, cfg, learned, g, torch.float32)
        out, x0 = _call(kind, x, mo, coefs, guid, extra, pred, clip, learned, "cpu")
        ref, _ = _ref(kind, x, mo, coefs, guid, extra, pred, clip, learned, upcast=True)
        low, _ = _ref(kind, x, mo, coefs, guid, extra, pred, clip, learned, upcast=False)
        budget = 3 * (low.double() - ref.double()).abs().max() + 1e-5 * (ref.double().abs().max() + 1)
        assert (out.double() - ref.double()).abs().max() <= budget


# ----------------------------------------------------------------------------- inpainting blend
MASK_SHAPES = ("per_channel", "one_channel", "shared")  # (B, C, *S), (B, 1, *S), (1, 1, *S)


def _known_inputs(shape, mask_kind, g, dtype, soft=False):
    B = shape[0]
    known = (torch.rand(shape, generator=g) * 2 - 1).to(dtype)
    mshape = {"per_channel": shape, "one_channel": (B, 1, *shape[2:]), "shared": (1, 1, *shape[2:])}[mask_kind]
    mask = torch.rand(mshape, generator=g) if soft else (torch.rand(mshape, generator=g) > 0.5).float()
    kz = torch.randn(shape, generator=g).to(dtype)
    return known, mask.to(dtype), kz


def _call_known(kind, x, mo, coefs, guid, extra, known, mask, kz, pred, clip, learned, backend):
    kw = dict(pred=pred, guidance=guid, clip=clip, known=known, mask=mask, known_noise=kz, backend=backend)
    if kind == "ddpm":
        return ddpm_step(x, mo, coefs.float(), extra, learned_var=learned, want_x0=True, **kw)
    if kind == "ddim":
        return ddim_step(x, mo, coefs.float(), extra, want_x0=True, **kw)
    return dpmpp_2m_step(x, mo, coefs.float(), extra, **kw)


def test_reference_blend_is_the_closed_form():
    """The reference's blend is mask (sqrt(abar_s) known + sqrt(1 - abar_s) kz) + (1 - mask) x_s
    on top of its plain step, with abar_s the step's target level, for every sampler kind."""
    g = torch.Generator().manual_seed(11)
    for kind in ("ddpm", "ddim", "dpmpp_2m"):
        for mk in MASK_SHAPES:
            x, mo, coefs, guid, extra = _inputs((3, 2, 5, 4), kind, True, False, g, torch.float64)
            known, mask, kz = _known_inputs((3, 2, 5, 4), mk, g, torch.float64, soft=True)
            plain, _ = _call(kind, x, mo, coefs.double(), guid.double(), extra, "eps", None, False, "torch")
            got, _ = _call_known(kind, x, mo, coefs.double(), guid.double(), extra, known, mask, kz, "eps", None,
                                 False, "torch")
            ab_s = coefs[:, 10].view(3, 1, 1, 1) ** 2
            want = mask * (ab_s.sqrt() * known + (1 - ab_s).sqrt() * kz) + (1 - mask) * plain
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(coefs[:, 11].view(3, 1, 1, 1), (1 - ab_s).sqrt())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_known_blend_matches_reference(backend, dtype):
    """Every backend's fused blend against the float64 reference: sampler kinds, mask layouts
    (per channel, one channel, one mask for the batch), soft and binary masks, with and without
    known-region noise, guidance, clipping, learned variance, per-sample coefficients."""
    if backend not in cpu_backends(FAM, dtype):
        pytest.skip(f"{backend} not built or no {dtype} kernel")
    if backend == "triton" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 arithmetic")
    g = torch.Generator().manual_seed(hash(("known", backend, str(dtype))) % 2**31)
    combos = list(itertools.product(["ddpm", "ddim", "dpmpp_2m"], MASK_SHAPES, [False, True], [None, "dynamic"]))
    shapes = SHAPES_INTERP if backend == "triton" else SHAPES
    for i, (kind, mk, with_kz, clip) in enumerate(combos):
        shape = shapes[i % len(shapes)]
        if len(shape) < 3 and mk != "per_channel":
            shape = (shape[0], shape[1], 5)
        learned, cfg, pred = kind == "ddpm" and i % 2 == 0, i % 3 != 0, ("eps", "x0", "v")[i % 3]
        x, mo, coefs, guid, extra = _inputs(shape, kind, cfg, learned, g, dtype)
        known, mask, kz = _known_inputs(shape, mk, g, dtype, soft=i % 4 == 1)
        kz = kz if with_kz else None
        out, x0 = _call_known(kind, x, mo, coefs, guid, extra, known, mask, kz, pred, clip, learned, backend)
        refs = []
        for upcast in (True, False):
            thresh = None
            c = coefs.float()
            if clip == "dynamic":
                raw, _ = sampling_step_ref(x, mo, c, guid, None, None, None, 0, ["eps", "x0", "v"].index(pred), learned,
                                           False, upcast=upcast)
                thresh = dynamic_threshold_values(raw)
            refs.append(sampling_step_ref(
                x, mo, c, guid, thresh, extra if kind != "dpmpp_2m" else None, extra if kind == "dpmpp_2m" else None,
                {"ddpm": 1, "ddim": 2, "dpmpp_2m": 3}[kind], ["eps", "x0", "v"].index(pred), learned, True,
                known, mask, kz, upcast=upcast))
        (ref, ref_x0), (low, _) = refs
        assert out.dtype == dtype and out.shape == x.shape
        budget = 3 * (low.double() - ref.double()).abs().max() + TOL[dtype] * (ref.double().abs().max() + 1)
        err = (out.double() - ref.double()).abs().max()
        assert err <= budget, (kind, mk, with_kz, clip, shape, float(err), float(budget))
        # x0 is the model's prediction, not blended
        assert (x0.double() - ref_x0.double()).abs().max() <= TOL[dtype] * (ref_x0.double().abs().max() + 1) * 4


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_known_kept_exactly_at_the_end(backend):
    """The last step (abar_s = 1) with a binary mask returns the known values bit for bit where
    the mask is 1 and the plain step's values where it is 0."""
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(12)
    ab_t = torch.tensor([0.97, 0.9], dtype=torch.float64)
    x, known = torch.randn(2, 3, 6, 7, generator=g), torch.rand(2, 3, 6, 7, generator=g) * 2 - 1
    mo, kz = torch.randn(2, 3, 6, 7, generator=g), torch.randn(2, 3, 6, 7, generator=g)
    mask = (torch.rand(2, 1, 6, 7, generator=g) > 0.5).float()
    keep = mask.expand_as(x).bool()
    for step, coefs, extra in ((ddpm_step, ddpm_coefs(ab_t, 1.0, -5.0, add_noise=0.0), kz),
                               (ddim_step, ddim_coefs(ab_t, 1.0), None), (dpmpp_2m_step, dpmpp_2m_coefs(ab_t, 1.0)[0], None)):
        plain, _ = step(x, mo, coefs.float(), extra, backend=backend)
        got, _ = step(x, mo, coefs.float(), extra, known=known, mask=mask, known_noise=kz, backend=backend)
        assert torch.equal(got[keep], known[keep])
        torch.testing.assert_close(got[~keep], plain[~keep], rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_known_blend_nan_semantics(backend):
    """NaN anywhere in either term of the blend gives NaN at that element, as the reference's
    IEEE arithmetic (0 * NaN = NaN): a NaN known value in the generated region, a NaN model
    output in the kept region. Finite elements stay finite."""
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(13)
    x, mo, coefs, _, extra = _inputs((2, 2, 4, 5), "ddim", False, False, g, torch.float32)
    known, mask, kz = _known_inputs((2, 2, 4, 5), "one_channel", g, torch.float32)
    mask[0, 0, 0, 0], mask[1, 0, 1, 1] = 0.0, 1.0
    known[0, 1, 0, 0] = float("nan")  # generated region
    mo[1, 0, 1, 1] = float("nan")  # kept region
    out, _ = ddim_step(x, mo, coefs.float(), extra, known=known, mask=mask, known_noise=kz, backend=backend)
    ref, _ = sampling_step_ref(x, mo, coefs.float(), None, None, extra, None, 2, 0, False, False, known, mask, kz)
    assert torch.equal(out.isnan(), ref.isnan())
    assert bool(out[0, 1, 0, 0].isnan()) and bool(out[1, 0, 1, 1].isnan()) and int(out.isnan().sum()) == 2


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_known_non_contiguous(backend):
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(14)
    x, mo, coefs, _, z = _inputs((2, 3, 8, 6), "ddpm", False, False, g, torch.float32)
    known, mask, kz = _known_inputs((2, 3, 8, 6), "one_channel", g, torch.float32)
    ks, ms, kzs = (t.transpose(2, 3).contiguous().transpose(2, 3) for t in (known, mask, kz))
    assert not ks.is_contiguous()
    a, _ = ddpm_step(x, mo, coefs.float(), z, known=known, mask=mask, known_noise=kz, backend=backend)
    b, _ = ddpm_step(x, mo, coefs.float(), z, known=ks, mask=ms, known_noise=kzs, backend=backend)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_known_bad_input_messages():
    x = torch.randn(2, 3, 4, 4)
    c = ddim_coefs(torch.tensor([0.5, 0.5]), 0.6)
    mo = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="known and mask go together"):
        ddim_step(x, mo, c, known=x)
    with pytest.raises(ValueError, match="known_noise needs"):
        ddim_step(x, mo, c, known_noise=x)
    with pytest.raises(ValueError, match="mask must be"):
        ddim_step(x, mo, c, known=x, mask=torch.ones(2, 2, 4, 4))
    with pytest.raises(ValueError, match="mask must be"):
        ddim_step(x, mo, c, known=x, mask=torch.ones(2, 1, 4, 5))
    with pytest.raises(ValueError, match="known must have"):
        ddim_step(x, mo, c, known=x[:1], mask=torch.ones(2, 1, 4, 4))
    with pytest.raises(ValueError, match="known_noise must have"):
        ddim_step(x, mo, c, known=x, mask=torch.ones(1, 1, 4, 4), known_noise=x[..., :2])


@pytest.mark.skipif(not _ext.loaded(), reason="extension not built")
def test_opcheck_known():
    g = torch.Generator().manual_seed(15)
    x, mo, coefs, guid, z = _inputs((2, 3, 4, 4), "ddpm", True, True, g, torch.float32)
    known, mask, kz = _known_inputs((2, 3, 4, 4), "one_channel", g, torch.float32)
    args = (x, mo, coefs.float(), guid, torch.ones(2), z, None, 1, 2, True, True, known, mask, kz)
    torch.library.opcheck(torch.ops.dalle2_fast.sampling_step.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_known_torch_compile_fullgraph(backend):
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    g = torch.Generator().manual_seed(16)
    x, mo, coefs, guid, z = _inputs((2, 3, 4, 4), "ddim", True, False, g, torch.float32)
    known, mask, kz = _known_inputs((2, 3, 4, 4), "shared", g, torch.float32)
    c = coefs.float()

    def f(x, mo, c, guid, z, known, mask, kz):
        return ddim_step(x, mo, c, z, guidance=guid, want_x0=True, known=known, mask=mask, known_noise=kz,
                         backend=backend)

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="eager")(x, mo, c, guid, z, known, mask, kz)
    torch.testing.assert_close(got[0], f(x, mo, c, guid, z, known, mask, kz)[0])


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_known_blend_matches_reference(backend, dtype):
    g = torch.Generator().manual_seed(17)
    for kind, mk in itertools.product(["ddpm", "ddim", "dpmpp_2m"], MASK_SHAPES):
        x, mo, coefs, guid, extra = _inputs((5, 3, 40, 65), kind, True, kind == "ddpm", g, dtype)
        known, mask, kz = _known_inputs((5, 3, 40, 65), mk, g, dtype)
        k = {"ddpm": 1, "ddim": 2, "dpmpp_2m": 3}[kind]
        ex = (extra, None) if kind != "dpmpp_2m" else (None, extra)
        ref, _ = sampling_step_ref(x, mo, coefs.float(), guid, None, *ex, k, 0, kind == "ddpm", False, known, mask, kz)
        cu = lambda t: None if t is None else t.cuda()  # noqa: E731
        out, _ = _call_known(kind, cu(x), cu(mo), cu(coefs), cu(guid), cu(extra), cu(known), cu(mask), cu(kz), "eps",
                             None, kind == "ddpm", backend)
        assert (out.cpu().double() - ref.double()).abs().max() <= TOL[dtype] * (ref.double().abs().max() + 1) * 4


if given is not None:

    @settings(max_examples=25, deadline=None)
    @given(B=st.integers(1, 5), C=st.integers(1, 4), dims=st.lists(st.integers(1, 13), min_size=1, max_size=2),
           kind=st.sampled_from(["ddpm", "ddim", "dpmpp_2m"]), mk=st.sampled_from(MASK_SHAPES),
           with_kz=st.booleans(), seed=st.integers(0, 2**31 - 1))
    def test_property_known_cpu_matches_reference(B, C, dims, kind, mk, with_kz, seed):
        """Any batch / channel / trailing shape / mask layout: the cpu kernel's blend within the
        float32 budget of the reference."""
        if "cpu" not in cpu_backends(FAM):
            pytest.skip("not built")
        g = torch.Generator().manual_seed(seed)
        shape = (B, C, *dims)
        x, mo, coefs, guid, extra = _inputs(shape, kind, True, False, g, torch.float32)
        known, mask, kz = _known_inputs(shape, mk, g, torch.float32, soft=seed % 2 == 1)
        kz = kz if with_kz else None
        out, _ = _call_known(kind, x, mo, coefs, guid, extra, known, mask, kz, "eps", None, False, "cpu")
        k = {"ddpm": 1, "ddim": 2, "dpmpp_2m": 3}[kind]
        ex = (extra, None) if kind != "dpmpp_2m" else (None, extra)
        ref, _ = sampling_step_ref(x, mo, coefs.float(), guid, None, *ex, k, 0, False, False, known, mask, kz)
        low, _ = sampling_step_ref(x, mo, coefs.float(), guid, None, *ex, k, 0, False, False, known, mask, kz,
                                   upcast=False)
        budget = 3 * (low.double() - ref.double()).abs().max() + 1e-5 * (ref.double().abs().max() + 1)
        assert (out.double() - ref.double()).abs().max() <= budget
