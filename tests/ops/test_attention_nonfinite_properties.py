"""Non-finite inputs to attention (hypothesis): NaN / +-Inf in q, k, v and the scale, with
causal and padding masks (fully masked rows included), on every backend runnable here (torch,
cpu, triton under the interpreter, and the C++ CPU flash kernel that shares its math with the
CUDA one). Each must put NaN exactly where a pairwise oracle written out below says a
non-finite input reaches (ops/attention.py: a row that sees a key with non-finite k, or has a
non-finite q or scale; column d where a key it sees has a non-finite v[d]), never +-Inf, zeros
for rows that see no key, and the reference's values everywhere else."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dalle2_fast import _ext
from dalle2_fast.ops import attention, attention_ref
from dalle2_fast.ops.attention import _attention_ext, _poisoned

# NaN arithmetic inside the Triton interpreter (numpy) is expected here, not a defect
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

NONFINITE = [float("nan"), float("inf"), float("-inf")]
BACKENDS = ["torch", "cpu", "triton", "ext"]


def oracle(q, k, v, causal, mask, scale):
    """(B, H, Sq, D) bool: where a non-finite input reaches, from the visibility of every
    (query, key) pair — O(Sq Sk D), deliberately nothing like _poisoned's prefix counts."""
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    i = torch.arange(Sq)[:, None]
    j = torch.arange(Sk)[None, :]
    vis = torch.ones(B, 1, Sq, Sk, dtype=torch.bool)
    if causal:
        vis = vis & (j <= i + (Sk - Sq))
    if mask is not None:
        vis = vis & ~mask[:, None, None, :]
    has_key = vis.any(-1, keepdim=True)  # (B, 1, Sq, 1)
    kbad = ~torch.isfinite(k).all(-1)  # (B, H, Sk)
    row = (~torch.isfinite(q).all(-1, keepdim=True)) | (vis & kbad[:, :, None, :]).any(-1, keepdim=True)
    if not math.isfinite(scale):
        row = torch.ones_like(row)
    col = (vis[..., None] & ~torch.isfinite(v)[:, :, None, :, :]).any(-2)  # (B, H, Sq, D)
    return (row | col) & has_key, has_key.expand(B, H, Sq, D)


@st.composite
def problems(draw):
    B, H = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    Sq, Sk = draw(st.integers(1, 20)), draw(st.integers(0, 20))
    D = draw(st.integers(1, 40))
    causal = draw(st.booleans())
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    q, k, v = (torch.randn(B, H, S, D, generator=g) for S in (Sq, Sk, Sk))
    for t in (q, k, v):  # 0-3 non-finite entries in each
        for _ in range(draw(st.integers(0, 3))):
            if t.numel():
                t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from(NONFINITE))
    mask = None
    if draw(st.booleans()):
        mask = torch.rand(B, Sk, generator=g) < draw(st.sampled_from([0.3, 0.7, 1.0]))  # 1.0: all padding
    scale = draw(st.sampled_from([None, 0.4, 1.0] + NONFINITE))
    return q, k, v, causal, mask, scale


def _run(backend, q, k, v, causal, mask, scale):
    s = q.shape[-1] ** -0.5 if scale is None else scale
    if backend == "ext":
        return _attention_ext(q, k, v, mask, causal, s)
    return attention(q, k, v, causal=causal, key_padding_mask=mask, scale=scale, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_nonfinite_inputs_reach_exactly_the_oracle_positions(backend, problem):
    if backend in ("cpu", "ext") and not _ext.loaded():
        pytest.skip("C++ extension not built")
    q, k, v, causal, mask, scale = problem
    s = q.shape[-1] ** -0.5 if scale is None else scale
    want, has_key = oracle(q, k, v, causal, mask, s)
    assert torch.equal(_poisoned(q, k, v, causal, mask, s).expand_as(want), want)
    out = _run(backend, q, k, v, causal, mask, scale)
    assert torch.equal(torch.isnan(out), want), "NaN exactly where a non-finite input reaches"
    assert not torch.isinf(out).any()
    assert (out[~has_key] == 0).all(), "rows that see no key are zeros"
    ref = attention_ref(q.double(), k.double(), v.double(), causal=causal, key_padding_mask=mask, scale=scale)
    assert torch.equal(torch.isnan(ref), want)
    torch.testing.assert_close(out[~want].double(), ref[~want], rtol=1e-3, atol=2e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_issue_cases(backend):
    """The adversarial pass's cases: a NaN scale gave all zeros and a NaN row of q a zero row
    on the default CPU backend (SDPA), where the reference gave NaN."""
    if backend in ("cpu", "ext") and not _ext.loaded():
        pytest.skip("C++ extension not built")
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 8, generator=g) for _ in range(3))
    assert torch.isnan(_run(backend, q, k, v, False, None, float("nan"))).all()
    qn = q.clone()
    qn[0, 1, 2, 3] = float("nan")
    out = _run(backend, qn, k, v, False, None, None)
    assert torch.isnan(out[0, 1, 2]).all() and not torch.isnan(out[0, 0]).any()
    assert not torch.isnan(out[0, 1, [0, 1, 3, 4]]).any()
    # NaN behind the padding and in causally hidden keys never reaches a row
    kv = v.clone()
    kv[0, :, 4] = float("nan")
    pad = torch.tensor([[False, False, False, False, True]])
    assert not torch.isnan(_run(backend, q, kv, kv, False, pad, None)).any()
    out = _run(backend, q, kv, kv, True, None, None)
    assert torch.isnan(out[:, :, 4]).all() and not torch.isnan(out[:, :, :4]).any()
    # a fully masked row of finite input gives zeros, whatever the scale
    allpad = torch.ones(1, 5, dtype=torch.bool)
    assert (_run(backend, q, k, v, False, allpad, float("inf")) == 0).all()
