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
