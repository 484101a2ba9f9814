"""Property-based tests (hypothesis) for nearest_code: random shapes, strides, scales and
non-finite values against the float64 reference — no crash, documented NaN behaviour, and the
same answer as the reference up to the float32 error budget."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dalle2_fast.ops import nearest_code, nearest_code_ref
from dalle2_fast.ops.codebook import nearest_code_family as FAM
from tests.conftest import cpu_backends


@st.composite
def problems(draw):
    n = draw(st.integers(0, 40))
    k = draw(st.integers(1, 40))
    d = draw(st.integers(1, 40))
    scale = 10.0 ** draw(st.integers(-20, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * scale
    c = torch.randn(k, d, generator=g) * scale
    if draw(st.booleans()):  # non-contiguous x: a strided view of a wider tensor
        x = torch.cat([x, torch.randn(n, d, generator=g)], 1)[:, ::2]
    if draw(st.booleans()):  # transposed codebook storage
        c = c.t().contiguous().t()
    nan_rows = draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=3)) if n else []
    for r in nan_rows:
        x[r, draw(st.integers(0, d - 1))] = float("nan")
    inf_code = draw(st.booleans()) and k > 1
    if inf_code:
        c[0, 0] = float("inf")  # an infinitely far code is never the nearest
    return x, c, sorted(set(nan_rows))


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems())
def test_random_problems_match_reference(backend, problem):
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    x, c, nan_rows = problem
    idx, sqd = nearest_code(x, c, backend=backend)
    n, k = x.shape[0], c.shape[0]
    assert idx.shape == (n,) and sqd.shape == (n,)
    assert ((idx >= 0) & (idx < k)).all()
    for r in nan_rows:
        assert idx[r] == 0 and torch.isnan(sqd[r])
    ok = torch.ones(n, dtype=torch.bool)
    ok[nan_rows] = False
    if not ok.any():
        return
    ref_idx, ref_d = nearest_code_ref(x[ok], c)
    x64, c64 = x[ok].double(), c.double()
    chosen = ((x64 - c64[idx[ok]]) ** 2).sum(1)
    finite_codes = torch.isfinite(c64).all(1)
    scale = (x64 * x64).sum(1) + (c64[finite_codes] ** 2).sum(1).max()
    assert torch.isfinite(chosen).all()
    assert (chosen - ref_d.double() <= 1e-5 * scale + 1e-30).all()
    assert ((sqd[ok].double() - chosen).abs() <= 1e-5 * scale + 1e-30).all()
