"""nearest_code: every backend against the float64 reference, awkward shapes, ties, NaN,
bad input, faiss agreement, torch.compile traceability."""
import pytest
import torch

from dalle2_fast import _ext
from dalle2_fast.ops import BackendNotSupported, nearest_code, nearest_code_ref
from dalle2_fast.ops.codebook import nearest_code_family as FAM
from tests.conftest import HAS_GPU, cpu_backends

# (N, K, D) and what each catches
SHAPES_FULL = [
    (1, 1, 3),  # single row, single code: trivial argmin, tiny D
    (97, 4097, 3),  # K one past a tile multiple, D far below a tile
    (97, 64, 768),  # wide D (CLIP-sized features), several D chunks
    (1025, 1500, 64),  # N past the row block, K not a multiple of the code block
]
SHAPES_INTERP = [(1, 1, 3), (37, 70, 20), (5, 33, 17)]  # the Triton interpreter is slow


def _check(x, c, idx, sqd, dtype):
    """Error-budget check: the chosen code must be optimal up to the rounding the input
    dtype allows, and sqdist must match the float64 distance of the chosen code."""
    ref_idx, ref_d = nearest_code_ref(x, c)
    x64, c64 = x.double(), c.double()
    chosen = ((x64 - c64[idx.cpu()]) ** 2).sum(1)
    scale = (x64 * x64).sum(1) + (c64 * c64).sum(1).max()
    eps = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    gap = chosen - ref_d.double()
    assert (gap <= eps * scale + 1e-6).all(), f"suboptimal codes: max gap {gap.max()}"
    assert ((sqd.double().cpu() - chosen).abs() <= eps * scale + 1e-5).all()
    # Where the reference's winner is clearly separated, the indices must agree exactly.
    agree = (idx.cpu() == ref_idx).float().mean().item()
    assert agree > (0.999 if dtype == torch.float32 else 0.9), agree


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_matches_reference(backend, dtype):
    if backend not in cpu_backends(FAM, dtype):
        pytest.skip(f"{backend} not built or no {dtype} kernel")
    shapes = SHAPES_INTERP if backend == "triton" else SHAPES_FULL
    if backend == "triton" and dtype == torch.bfloat16:
        with pytest.raises(BackendNotSupported, match="bfloat16"):
            nearest_code(torch.randn(3, 4, dtype=dtype), torch.randn(2, 4, dtype=dtype), backend="triton")
        return
    g = torch.Generator().manual_seed(hash((backend, str(dtype))) % 2**31)
    for n, k, d in shapes:
        x = torch.randn(n, d, generator=g).to(dtype)
        c = torch.randn(k, d, generator=g).to(dtype)
        idx, sqd = nearest_code(x, c, backend=backend)
        assert idx.dtype == torch.int64 and sqd.dtype == torch.float32
        assert idx.shape == (n,) and sqd.shape == (n,)
        _check(x, c, idx, sqd, dtype)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_non_contiguous(backend):
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    base = torch.randn(40, 2 * 24)
    x = base[:, ::2]  # strided columns
    c = torch.randn(24, 33).t()  # (33, 24) transposed view
    assert not x.is_contiguous() and not c.is_contiguous()
    idx, sqd = nearest_code(x, c, backend=backend)
    ref_idx, ref_d = nearest_code_ref(x.contiguous(), c.contiguous())
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(sqd, ref_d, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_ties_go_to_lowest_index(backend):
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    c = torch.randn(40, 16)
    c2 = torch.cat([c, c, c])  # every code three times: the first copy must win
    x = torch.randn(50, 16)
    idx, _ = nearest_code(x, c2, backend=backend)
    assert (idx < 40).all()
    # Equidistant by construction: x = 0 between +e and -e.
    c3 = torch.zeros(5, 16)
    c3[1, 0], c3[3, 0] = 1.0, -1.0
    c3[0], c3[2], c3[4] = 5.0, 7.0, 9.0
    idx, sqd = nearest_code(torch.zeros(3, 16), c3, backend=backend)
    assert idx.tolist() == [1, 1, 1]
    torch.testing.assert_close(sqd, torch.ones(3))


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_nan_documented_behaviour(backend):
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    x = torch.randn(6, 8)
    x[2, 3] = float("nan")
    c = torch.randn(20, 8)
    c[0, 0] = float("nan")  # a NaN code is never chosen
    idx, sqd = nearest_code(x, c, backend=backend)
    assert idx[2].item() == 0 and torch.isnan(sqd[2])
    ok = [0, 1, 3, 4, 5]
    assert (idx[ok] != 0).all() and torch.isfinite(sqd[ok]).all()
    ref_idx, _ = nearest_code_ref(x, c)
    assert torch.equal(idx, ref_idx)
    # All codes NaN: index 0, sqdist +inf for finite rows.
    idx, sqd = nearest_code(torch.randn(3, 8), torch.full((4, 8), float("nan")), backend=backend)
    assert idx.tolist() == [0, 0, 0] and torch.isinf(sqd).all()


@pytest.mark.parametrize("backend", ["torch", "cpu", "triton"])
def test_empty_batch(backend):
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    idx, sqd = nearest_code(torch.empty(0, 7), torch.randn(5, 7), backend=backend)
    assert idx.shape == (0,) and sqd.shape == (0,) and idx.dtype == torch.int64


@pytest.mark.parametrize(
    "x, c, match",
    [
        (torch.randn(4, 3), torch.randn(5, 4), "D=3 but codebook has D=4"),
        (torch.randn(4, 3, 1), torch.randn(5, 3), "x must be 2-D"),
        (torch.randn(4, 3), torch.randn(5), "codebook must be 2-D"),
        (torch.randn(4, 3), torch.randn(0, 3), "K=0"),
        (torch.ones(4, 3, dtype=torch.int32), torch.randn(5, 3), "x must be a floating tensor"),
        (torch.randn(4, 3), torch.randn(5, 3).half(), "must match"),
    ],
)
def test_bad_input(x, c, match):
    with pytest.raises((ValueError, TypeError), match=match):
        nearest_code(x, c)


def test_device_mismatch_message():
    x = torch.randn(4, 3)
    c = torch.randn(5, 3, device="meta")
    with pytest.raises(ValueError, match="codebook is on meta"):
        nearest_code(x, c)


def test_forced_backend_never_falls_back(monkeypatch):
    x = torch.randn(4, 3)
    with pytest.raises(BackendNotSupported, match="cuda"):
        nearest_code(x, torch.randn(5, 3), backend="cuda")
    monkeypatch.setenv("DALLE2_FAST_BACKEND", "cuda")
    with pytest.raises(BackendNotSupported, match="requested"):
        nearest_code(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match="backend must be one of"):
        nearest_code(x, torch.randn(5, 3), backend="nope")


def test_auto_picks_cpu_kernel_on_cpu():
    x, c = torch.randn(4, 3), torch.randn(5, 3)
    expected = "cpu" if _ext.loaded() else "torch"
    assert FAM.select(x, c).backend == expected
    # float64 has only the torch kernel: automatic dispatch finds it.
    assert FAM.select(x.double(), c.double()).backend == "torch"


def test_agrees_with_faiss():
    faiss = pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(2000, 48, generator=g), torch.randn(3000, 48, generator=g)
    index = faiss.IndexFlatL2(48)
    index.add(c.numpy())
    fd, fi = index.search(x.numpy(), 1)
    idx, sqd = nearest_code(x, c)
    agree = (idx.numpy() == fi[:, 0]).mean()
    assert agree > 0.999, agree
    torch.testing.assert_close(sqd, torch.from_numpy(fd[:, 0]), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_torch_compile_fullgraph(backend):
    if backend not in cpu_backends(FAM):
        pytest.skip("not built")
    x, c = torch.randn(33, 12), torch.randn(21, 12)
    f = torch.compile(lambda a, b: nearest_code(a, b, backend=backend), fullgraph=True)
    idx, sqd = f(x, c)
    ref_idx, ref_d = nearest_code_ref(x, c)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(sqd, ref_d, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_backends(backend, dtype):
    for n, k, d in SHAPES_FULL + [(4096, 16384, 256)]:
        x = torch.randn(n, d, device="cuda").to(dtype)
        c = torch.randn(k, d, device="cuda").to(dtype)
        idx, sqd = nearest_code(x, c, backend=backend)
        _check(x.cpu(), c.cpu(), idx.cpu(), sqd.cpu(), dtype)


@pytest.mark.gpu
def test_gpu_compile_triton():
    x, c = torch.randn(300, 64, device="cuda"), torch.randn(500, 64, device="cuda")
    f = torch.compile(lambda a, b: nearest_code(a, b, backend="triton"), fullgraph=True)
    assert torch.equal(f(x, c)[0].cpu(), nearest_code_ref(x.cpu(), c.cpu())[0])
