"""attention: every backend against the float64 reference (output and dq, dk, dv), causal
alignment, padding semantics, rows that see no key, Sq != Sk, odd lengths and head dims,
empty inputs, bad input, dispatch, torch.compile traceability.

Backends on CPU tensors: ``torch`` (explicit math), ``cpu`` (SDPA-backed), ``ext`` (our C++
flash kernel through the custom ops — the host run of the math the CUDA kernel shares; not a
dispatch backend on CPU, see CPU_BACKEND_REASON) and ``triton`` (interpreter, small shapes).
"""
import pytest
import torch
import torch.nn.functional as F

from dalle2_fast import _ext
from dalle2_fast.ops import BackendNotSupported, attention, attention_ref
from dalle2_fast.ops.attention import FEW_ROWS, _attention_ext, attention_family as FAM
from tests.conftest import HAS_GPU, cpu_backends

BACKENDS = ["torch", "cpu", "ext", "triton"]

# (B, H, Sq, Sk, D, causal, pad) and what each catches
SHAPES_FULL = [
    (2, 3, 1, 1, 32, False, False),  # single token: a 1-key softmax, tiny tiles
    (1, 2, 97, 97, 40, True, False),  # odd length + non-power-of-two head dim (padded D), causal
    (2, 2, 97, 81, 80, False, True),  # cross-attention to 77 text + 4 CLIP tokens, padded text, D=80
    (1, 1, 1025, 1025, 64, True, True),  # one past the C++ tiles (128/256) and Triton tiles, causal + pad
    (1, 2, 64, 300, 128, True, False),  # Sq < Sk causal: bottom-right alignment (KV-cache decoding)
    (2, 1, 130, 50, 96, True, True),  # Sq > Sk causal: the first 80 rows see no key; D=96
]
SHAPES_INTERP = [  # the Triton interpreter is slow: small shapes, same cases
    (1, 2, 1, 1, 32, False, False),
    (1, 1, 37, 37, 40, True, False),
    (2, 1, 20, 33, 80, False, True),
    (1, 1, 18, 40, 64, True, True),  # Sq < Sk causal across several key tiles
    (1, 1, 35, 17, 96, True, False),  # Sq > Sk causal: empty rows; partial last tiles
]
FLOOR = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _call(backend, q, k, v, causal=False, mask=None, scale=None):
    if backend == "ext":
        if not _ext.loaded():
            pytest.skip("C++ extension not built")
        return _attention_ext(q, k, v, mask, causal, q.shape[-1] ** -0.5 if scale is None else scale)
    return attention(q, k, v, causal=causal, key_padding_mask=mask, scale=scale, backend=backend)


def _skip_unavailable(backend, dtype=torch.float32):
    if backend == "ext":
        if not _ext.loaded():
            pytest.skip("C++ extension not built")
        return
    if backend not in cpu_backends(FAM, dtype):
        pytest.skip(f"{backend} not built or no {dtype} kernel")


def _inputs(g, B, H, Sq, Sk, D, pad, dtype):
    q = torch.randn(B, H, Sq, D, generator=g).to(dtype)
    k = torch.randn(B, H, Sk, D, generator=g).to(dtype)
    v = torch.randn(B, H, Sk, D, generator=g).to(dtype)
    mask = None
    if pad:
        lens = torch.randint(1, Sk + 1, (B,), generator=g)  # trailing padding, >= 1 real key
        mask = torch.arange(Sk)[None, :] >= lens[:, None]  # True = padding
        if B > 1:
            mask[-1] = True  # the last sequence is entirely padding: rows that see no key
    return q, k, v, mask


def _check_budget(name, got, low, ref, dtype):
    """|got - ref| <= 3 |torch-in-dtype - ref| + floor * max|ref| (flash-attention style)."""
    ref = ref.double()
    err = (got.double() - ref).abs().max().item()
    base = (low.double() - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    assert err <= 3 * base + FLOOR[dtype] * scale, f"{name}: err {err:.3g} vs torch {base:.3g}"


def _compare(backend, q, k, v, causal, mask, dtype):
    go = torch.randn_like(q, dtype=torch.float32).to(dtype)
    leaves64 = [t.double().requires_grad_() for t in (q, k, v)]
    ref = attention_ref(*leaves64, causal=causal, key_padding_mask=mask)
    ref_g = torch.autograd.grad(ref, leaves64, go.double())
    lows = [t.clone().requires_grad_() for t in (q, k, v)]
    low = attention_ref(*lows, causal=causal, key_padding_mask=mask, upcast=False)
    low_g = torch.autograd.grad(low, lows, go)
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = _call(backend, *ins, causal=causal, mask=mask)
    assert out.shape == q.shape and out.dtype == dtype
    got_g = torch.autograd.grad(out, ins, go)
    _check_budget("out", out, low, ref, dtype)
    for name, a, b, r in zip(("dq", "dk", "dv"), got_g, low_g, ref_g):
        assert a.shape == r.shape and a.dtype == dtype
        _check_budget(name, a, b, r, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_reference(backend, dtype):
    if backend == "triton" and dtype == torch.bfloat16:
        with pytest.raises(BackendNotSupported, match="bfloat16"):
            attention(*[torch.randn(1, 1, 2, 16, dtype=dtype)] * 3, backend="triton")
        return
    _skip_unavailable(backend, dtype)
    shapes = SHAPES_INTERP if backend == "triton" else SHAPES_FULL
    if dtype != torch.float32:  # half types: the cases with masks and odd sizes only
        shapes = shapes[2:4] if backend != "triton" else shapes[2:3]
    g = torch.Generator().manual_seed(hash((backend, str(dtype))) % 2**31)
    for B, H, Sq, Sk, D, causal, pad in shapes:
        q, k, v, mask = _inputs(g, B, H, Sq, Sk, D, pad, dtype)
        _compare(backend, q, k, v, causal, mask, dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_head_dims(backend):
    """Every head dim the models use, including the padded 40/80/96, at a short length."""
    _skip_unavailable(backend)
    g = torch.Generator().manual_seed(7)
    for D in (32, 40, 64, 80, 96, 128):
        q, k, v, _ = _inputs(g, 1, 2, 19, 23, D, False, torch.float32)
        _compare(backend, q, k, v, False, None, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_padding_mask_true_means_padding(backend):
    """Independent oracle: attending with True = padding equals attending over the kept keys only."""
    _skip_unavailable(backend)
    g = torch.Generator().manual_seed(1)
    q, k, v, _ = _inputs(g, 2, 2, 9, 21, 32, False, torch.float32)
    keep = [torch.tensor([0, 3, 4, 10, 20]), torch.arange(7)]  # arbitrary, not a suffix
    mask = torch.ones(2, 21, dtype=torch.bool)
    for b, idx in enumerate(keep):
        mask[b, idx] = False
    out = _call(backend, q, k, v, mask=mask)
    for b, idx in enumerate(keep):
        expect = F.scaled_dot_product_attention(q[b : b + 1], k[b : b + 1, :, idx], v[b : b + 1, :, idx])
        torch.testing.assert_close(out[b : b + 1], expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_is_bottom_right_aligned(backend):
    """Independent oracle: row i of a causal Sq x Sk attention equals plain attention of that
    row over keys [0, i + Sk - Sq]; for Sq = Sk it equals SDPA's is_causal."""
    _skip_unavailable(backend)
    g = torch.Generator().manual_seed(2)
    for Sq, Sk in ((5, 12), (12, 12), (12, 5)):
        q, k, v, _ = _inputs(g, 1, 2, Sq, Sk, 32, False, torch.float32)
        out = _call(backend, q, k, v, causal=True)
        for i in range(Sq):
            n = i + Sk - Sq + 1
            if n <= 0:
                assert torch.equal(out[:, :, i], torch.zeros_like(out[:, :, i])), f"row {i} must be zeros"
                continue
            expect = F.scaled_dot_product_attention(q[:, :, i : i + 1], k[:, :, :n], v[:, :, :n])
            torch.testing.assert_close(out[:, :, i : i + 1], expect, rtol=1e-5, atol=1e-5)
        if Sq == Sk:
            torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_that_see_no_key_are_zero(backend):
    """Fully padded sequences and causal rows before the first key: zeros and zero gradients,
    never NaN, and they do not disturb the gradients of the other rows."""
    _skip_unavailable(backend)
    g = torch.Generator().manual_seed(3)
    q, k, v, _ = _inputs(g, 2, 2, 11, 6, 40, False, torch.float32)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[1] = True  # batch 1: every key is padding
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = _call(backend, *ins, causal=True, mask=mask)  # Sq > Sk: rows 0..4 of batch 0 see no key
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.equal(out[0, :, :5], torch.zeros_like(out[0, :, :5]))
    assert (out[0, :, 5:].abs().sum(-1) > 0).all()
    dq, dk, dv = torch.autograd.grad(out, ins, torch.randn_like(out))
    for grad in (dq, dk, dv):
        assert torch.isfinite(grad).all()
    assert torch.equal(dq[1], torch.zeros_like(dq[1])) and torch.equal(dq[0, :, :5], torch.zeros_like(dq[0, :, :5]))
    assert torch.equal(dk[1], torch.zeros_like(dk[1])) and torch.equal(dv[1], torch.zeros_like(dv[1]))
    _compare(backend, q, k, v, True, mask, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_and_scale(backend):
    """(B, S, H, D) projections viewed as (B, H, S, D) — the layout nn.Attention produces —
    and an explicit scale."""
    _skip_unavailable(backend)
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 13, 3, 40, generator=g).transpose(1, 2)
    kv = torch.randn(2, 29, 2, 3, 40, generator=g)
    k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
    assert not q.is_contiguous() and not k.is_contiguous()
    out = _call(backend, q, k, v, scale=0.3)
    ref = attention_ref(q, k, v, scale=0.3)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    _skip_unavailable(backend)
    for shape_q, shape_k in (((0, 2, 5, 32), (0, 2, 7, 32)), ((2, 2, 0, 32), (2, 2, 7, 32))):
        q = torch.randn(shape_q, requires_grad=True)
        k = torch.randn(shape_k, requires_grad=True)
        v = torch.randn(shape_k, requires_grad=True)
        out = _call(backend, q, k, v)
        assert out.shape == shape_q
        out.sum().backward()
        assert k.grad is None or torch.equal(k.grad, torch.zeros_like(k))
    # Sk = 0: every row sees no key -> zeros
    q = torch.randn(1, 2, 3, 32)
    out = _call(backend, q, torch.randn(1, 2, 0, 32), torch.randn(1, 2, 0, 32))
    assert torch.equal(out, torch.zeros_like(q))


@pytest.mark.skipif(not _ext.loaded(), reason="C++ extension not built")
def test_ext_log_sum_exp():
    """The saved lse is the natural-log logsumexp of the visible scores, +inf for empty rows."""
    g = torch.Generator().manual_seed(5)
    q, k, v, _ = _inputs(g, 1, 2, 10, 4, 32, False, torch.float32)
    out, lse = torch.ops.dalle2_fast.attention_fwd(q, k, v, None, True, 0.2)  # rows 0..5 see no key
    s = (q.double() @ k.double().transpose(-1, -2)) * 0.2
    s = s.masked_fill(torch.ones(10, 4, dtype=torch.bool).triu(4 - 10 + 1), float("-inf"))
    ref = torch.logsumexp(s, -1)
    assert torch.isinf(lse[..., :6]).all() and (lse[..., :6] > 0).all()
    torch.testing.assert_close(lse[..., 6:].double(), ref[..., 6:], rtol=1e-6, atol=1e-6)


def _bad(shape_q=(1, 2, 4, 32), shape_k=(1, 2, 5, 32), shape_v=None, dtype=torch.float32):
    v_shape = shape_k if shape_v is None else shape_v
    return torch.randn(shape_q, dtype=dtype), torch.randn(shape_k, dtype=dtype), torch.randn(v_shape, dtype=dtype)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (_bad((2, 2, 4, 32)), {}, "batch B"),
        (_bad(shape_k=(1, 3, 5, 32)), {}, "heads H"),
        (_bad(shape_k=(1, 2, 5, 64)), {}, "head dim D"),
        (_bad(shape_v=(1, 2, 6, 32)), {}, "k and v must have the same shape"),
        (_bad((1, 4, 32)), {}, "q must be 4-D"),
        (_bad((1, 2, 4, 300), (1, 2, 5, 300)), {}, "D=300"),
        (_bad(), {"key_padding_mask": torch.zeros(1, 4, dtype=torch.bool)}, r"\(B, Sk\) = \(1, 5\)"),
        (_bad(), {"key_padding_mask": torch.zeros(1, 5)}, "must be bool"),
        ((torch.randn(1, 2, 4, 32), torch.randn(1, 2, 5, 32).half(), torch.randn(1, 2, 5, 32)), {}, "share a dtype"),
        ((torch.ones(1, 2, 4, 32, dtype=torch.long),) + _bad()[1:], {}, "floating"),
        (_bad(), {"causal": 1}, "causal must be a bool"),
    ],
)
def test_bad_input(args, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        attention(*args, **kwargs)


def test_forced_backend_never_falls_back(monkeypatch):
    q = torch.randn(1, 1, 3, 16)
    with pytest.raises(BackendNotSupported, match="cuda"):
        attention(q, q, q, backend="cuda")
    monkeypatch.setenv("DALLE2_FAST_BACKEND", "cuda")
    with pytest.raises(BackendNotSupported, match="requested"):
        attention(q, q, q)


def test_auto_dispatch_and_reason():
    q = torch.randn(1, 1, 3, 16)
    assert FAM.select(q, q, q, None).backend == ("cpu" if _ext.loaded() else "torch")
    assert FAM.select(q.double(), q.double(), q.double(), None).backend == "torch"
    assert "scaled_dot_product_attention" in FAM.notes


@pytest.mark.parametrize("backend", ["torch", "cpu", "ext", None])  # None: automatic dispatch
def test_torch_compile_fullgraph(backend):
    if backend is not None:
        _skip_unavailable(backend)
    g = torch.Generator().manual_seed(6)
    q, k, v, mask = _inputs(g, 2, 2, 17, 23, 40, True, torch.float32)
    f = torch.compile(lambda a, b, c, m: _call(backend, a, b, c, causal=True, mask=m), fullgraph=True)
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    out = f(*ins, mask)
    grads = torch.autograd.grad(out.square().sum(), ins)
    ref_ins = [t.clone().requires_grad_() for t in (q, k, v)]
    ref = attention_ref(*ref_ins, causal=True, key_padding_mask=mask)
    ref_grads = torch.autograd.grad(ref.square().sum(), ref_ins)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_backends(backend, dtype):
    g = torch.Generator().manual_seed(8)
    for B, H, Sq, Sk, D, causal, pad in SHAPES_FULL + [(2, 8, 1024, 1024, 64, False, False), (1, 2, 300, 300, 256, True, True)]:
        q, k, v, mask = _inputs(g, B, H, Sq, Sk, D, pad, dtype)
        cuda = [t.cuda() for t in (q, k, v)]
        ins = [t.clone().requires_grad_() for t in cuda]
        go = torch.randn_like(cuda[0])
        out = attention(*ins, causal=causal, key_padding_mask=None if mask is None else mask.cuda(), backend=backend)
        grads = torch.autograd.grad(out, ins, go)
        leaves = [t.double().requires_grad_() for t in (q, k, v)]
        ref = attention_ref(*leaves, causal=causal, key_padding_mask=mask)
        ref_g = torch.autograd.grad(ref, leaves, go.cpu().double())
        lows = [t.clone().requires_grad_() for t in (q, k, v)]
        low = attention_ref(*lows, causal=causal, key_padding_mask=mask, upcast=False)
        low_g = torch.autograd.grad(low, lows, go.cpu())
        _check_budget("out", out.cpu(), low, ref, dtype)
        for a, b, r in zip(grads, low_g, ref_g):
            _check_budget("grad", a.cpu(), b, r, dtype)


@pytest.mark.gpu
def test_gpu_compile_triton():
    q = torch.randn(2, 4, 300, 64, device="cuda", dtype=torch.float16)
    f = torch.compile(lambda a: attention(a, a, a, causal=True, backend="triton"), fullgraph=True)
    torch.testing.assert_close(f(q).float().cpu(), attention_ref(q.cpu(), q.cpu(), q.cpu(), causal=True).float(), atol=2e-3, rtol=2e-3)


@pytest.mark.skipif(not _ext.loaded(), reason="C++ extension not built")
def test_ext_ops_opcheck_for_compile():  # "compile" in the name: `make asan` skips it (it imports triton)
    """Schema, fake (meta) implementations and AOT dispatch of the C++ custom ops agree with the
    real kernels (what torch.compile relies on)."""
    g = torch.Generator().manual_seed(9)
    q, k, v, mask = _inputs(g, 2, 2, 7, 9, 40, True, torch.float32)
    torch.library.opcheck(torch.ops.dalle2_fast.attention_fwd, (q, k, v, mask, True, 0.3))
    out, lse = torch.ops.dalle2_fast.attention_fwd(q, k, v, mask, True, 0.3)
    go = torch.randn_like(out)
    torch.library.opcheck(torch.ops.dalle2_fast.attention_bwd, (go, q, k, v, out, lse, mask, True, 0.3))


def test_reference_row_chunks_are_exact():
    """attention_ref processes query rows in chunks (bounded memory): chunk boundaries must not
    change the result or its gradients, including the causal offset of each chunk."""
    g = torch.Generator().manual_seed(10)
    q, k, v, mask = _inputs(g, 2, 2, 23, 17, 32, True, torch.float64)
    ins_a = [t.clone().requires_grad_() for t in (q, k, v)]
    ins_b = [t.clone().requires_grad_() for t in (q, k, v)]
    a = attention_ref(*ins_a, causal=True, key_padding_mask=mask)
    b = attention_ref(*ins_b, causal=True, key_padding_mask=mask, max_elems=2 * 2 * 17 * 5)  # 5 rows a chunk
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    go = torch.randn_like(a)
    for x, y in zip(torch.autograd.grad(a, ins_a, go), torch.autograd.grad(b, ins_b, go)):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)


def test_cpu_mask_memo_follows_the_mask():
    """The cpu backend memoises the SDPA mask derived from a padding mask across calls (a sampling
    loop passes the same object every step): changing that mask in place, or passing another one
    with the same shape, must change the result exactly as a fresh call's."""
    g = torch.Generator().manual_seed(7)  # Sq > FEW_ROWS: the SDPA path (fewer rows take the C++ loops)
    q, k, v, _ = _inputs(g, 2, 2, FEW_ROWS + 4, FEW_ROWS + 8, 32, False, torch.float32)
    mask = torch.zeros(2, FEW_ROWS + 8, dtype=torch.bool)
    mask[0, 4:] = True
    for causal in (False, True):
        first = attention(q, k, v, causal=causal, key_padding_mask=mask, backend="cpu")
        torch.testing.assert_close(first, attention_ref(q, k, v, causal, mask), rtol=1e-5, atol=1e-5)
        mask[1, 9:] = True  # in place: the memo must see the new version
        torch.testing.assert_close(attention(q, k, v, causal=causal, key_padding_mask=mask, backend="cpu"),
                                   attention_ref(q, k, v, causal, mask), rtol=1e-5, atol=1e-5)
        other = torch.zeros(2, FEW_ROWS + 8, dtype=torch.bool)
        other[1, :2] = True  # another object with the same shape
        torch.testing.assert_close(attention(q, k, v, causal=causal, key_padding_mask=other, backend="cpu"),
                                   attention_ref(q, k, v, causal, other), rtol=1e-5, atol=1e-5)
        mask[1, 9:] = False


@pytest.mark.skipif(not _ext.loaded(), reason="C++ extension not built")
@pytest.mark.parametrize("Sq", [1, 3, FEW_ROWS, FEW_ROWS + 1])
@pytest.mark.parametrize("D", [1, 17, 64, 80, 136])
def test_few_rows_path_matches_reference(Sq, D):
    """The C++ forward's few-rows loops (Sq <= FEW_ROWS; FEW_ROWS + 1 is the tiled path beside
    them): output and lse against the float64 reference, for head dims that are not multiples of
    the 16- and 64-column blocks, key counts below and above the 4-key block, padding with holes
    (a compacted cache), a row with every key padded, causal with Sq < Sk and Sq > Sk."""
    g = torch.Generator().manual_seed(1000 * Sq + D)
    for Sk, causal in ((1, False), (7, True), (81, True), (Sq + 2, False), (max(1, Sq - 2), True)):
        B, H = 3, 2
        q, k, v = (torch.randn(B, H, S, D, generator=g) * 2 for S in (Sq, Sk, Sk))
        mask = torch.rand(B, Sk, generator=g) < 0.4  # holes anywhere
        mask[1] = True  # every key padded: zeros, lse +inf
        scale = 0.7 / D**0.5
        out, lse = torch.ops.dalle2_fast.attention_fwd(q, k, v, mask, causal, scale)
        ref = attention_ref(q.double(), k.double(), v.double(), causal, mask, scale)
        torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)
        s = (q.double() @ k.double().transpose(-1, -2)) * scale
        hidden = mask[:, None, None, :].expand(B, H, Sq, Sk)
        if causal:
            hidden = hidden | torch.ones(Sq, Sk, dtype=torch.bool).triu(Sk - Sq + 1)
        ref_lse = torch.logsumexp(s.masked_fill(hidden, float("-inf")), -1)
        seen = ~hidden.all(-1)
        torch.testing.assert_close(lse.double()[seen], ref_lse[seen], rtol=1e-5, atol=1e-5)
        assert torch.isinf(lse[~seen]).all() and (lse[~seen] > 0).all()


@pytest.mark.skipif(not _ext.loaded(), reason="C++ extension not built")
def test_cpu_backend_takes_the_few_rows_loops_for_inference_only(monkeypatch):
    """The cpu backend: float32 inference with <= FEW_ROWS queries runs the C++ loops (SDPA is
    not called); with gradients, or more queries, SDPA as before."""
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    g = torch.Generator().manual_seed(3)
    q, k, v, mask = _inputs(g, 2, 2, 3, 40, 64, True, torch.float32)
    with torch.no_grad():
        out = attention(q, k, v, causal=True, key_padding_mask=mask, backend="cpu")
    assert not calls
    torch.testing.assert_close(out, attention_ref(q, k, v, True, mask), rtol=1e-5, atol=1e-5)
    ins = [t.clone().requires_grad_() for t in (q, k, v)]
    attention(*ins, causal=True, key_padding_mask=mask, backend="cpu")
    assert calls
    calls.clear()
    q2 = torch.randn(2, 2, FEW_ROWS + 1, 64, generator=g)
    with torch.no_grad():
        attention(q2, k, v, causal=True, key_padding_mask=mask, backend="cpu")
    assert calls
