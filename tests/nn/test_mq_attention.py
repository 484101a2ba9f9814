"""nn.positional (rotary, T5 buckets) and nn.MultiQueryAttention against float64 formulas
written out here, forward and backward, on awkward sizes."""
import math

import pytest
import torch

from dalle2_fast.nn.mq_attention import GainLayerNorm, MultiQueryAttention
from dalle2_fast.nn.positional import RelativePositionBias, apply_rotary, relative_position_bucket, rotary_freqs


def test_rotary_is_a_complex_rotation_of_adjacent_pairs():
    torch.manual_seed(0)
    t = torch.randn(2, 3, 7, 24, dtype=torch.float64)  # head dim 24, rotate 16 channels, 7 positions
    pos = torch.arange(7)
    f = rotary_freqs(16)
    got = apply_rotary(t, pos, f)
    z = torch.view_as_complex(t[..., :16].reshape(2, 3, 7, 8, 2).contiguous())
    rot = torch.polar(torch.ones(7, 8, dtype=torch.float64), pos[:, None].double() * f.double()[None])
    want = torch.view_as_real(z * rot).reshape(2, 3, 7, 16)
    torch.testing.assert_close(got[..., :16], want, rtol=1e-6, atol=1e-6)  # freqs are float32
    torch.testing.assert_close(got[..., 16:], t[..., 16:], rtol=0, atol=0)
    torch.testing.assert_close(f, 1.0 / 10000 ** (torch.arange(0, 16, 2).float() / 16))


def test_t5_buckets():
    rel = -torch.arange(0, 300)  # key before the query by 0..299
    b = relative_position_bucket(rel)
    assert b[:16].tolist() == list(range(16))  # exact below num_buckets // 2
    for n in (16, 20, 50, 127, 128, 299):
        want = min(31, 16 + int(math.log(n / 16) / math.log(128 / 16) * 16))
        assert int(b[n]) == want, n
    assert bool((b[1:] >= b[:-1]).all()) and int(b.max()) == 31
    assert relative_position_bucket(torch.tensor([1, 5, 100])).tolist() == [0, 0, 0]  # later keys: one bucket
    bias = RelativePositionBias(heads=3)
    assert bias(4, 5).shape == (3, 4, 5)
    torch.testing.assert_close(bias(4, 5)[:, 2, 0], bias.relative_attention_bias.weight[2])  # rel = -2


def _reference(x, m: MultiQueryAttention, bias):
    """float64, written out: gain-only LN, per-head q, one shared rotated k/v with a null pair in
    front, logits scale * <q, k> (cosine: unit q, k) + bias_scale * bias, causal over [null; keys]."""
    d = lambda t: t.double()  # noqa: E731
    B, S, _ = x.shape
    ln = lambda t, w: torch.nn.functional.layer_norm(t, t.shape[-1:], d(w), None, 1e-5)  # noqa: E731
    h = ln(d(x), m.norm_in.weight)
    q = (h @ d(m.to_q.weight).T).view(B, S, m.heads, m.dim_head).transpose(1, 2)
    k, v = (h @ d(m.to_kv.weight).T).chunk(2, -1)
    if m.freqs.numel():
        q, k = apply_rotary(q, torch.arange(S), m.freqs), apply_rotary(k, torch.arange(S), m.freqs)
    k = torch.cat([d(m.null_kv[0]).expand(B, 1, -1), k], 1)
    v = torch.cat([d(m.null_kv[1]).expand(B, 1, -1), v], 1)
    if m.similarity == "cosine":
        q, k = q / q.norm(dim=-1, keepdim=True), k / k.norm(dim=-1, keepdim=True)
    logits = m.scale * torch.einsum("bhid,bjd->bhij", q, k)
    if bias is not None:
        logits = logits + m.bias_scale * d(bias)
    j, i = torch.arange(S + 1)[None], torch.arange(S)[:, None]
    logits = logits.masked_fill(j > i + 1, float("-inf"))  # query i sees the null key and keys 0..i
    out = torch.einsum("bhij,bjd->bhid", logits.softmax(-1), v).transpose(1, 2).reshape(B, S, -1)
    return ln(out @ d(m.proj_out.weight).T, m.norm_out.weight)


@pytest.mark.parametrize("S", [1, 7, 30])  # one token; odd; longer than the bucket's exact range
@pytest.mark.parametrize("similarity,scale,bias_scale,rot", [("cosine", 16.0, 1.0, 16), ("dot", None, 128.0, 8),
                                                              ("dot", None, 1.0, 0)])
def test_matches_written_out_attention(S, similarity, scale, bias_scale, rot):
    torch.manual_seed(S)
    m = MultiQueryAttention(40, heads=3, dim_head=16, similarity=similarity, scale=scale, bias_scale=bias_scale,
                            rot_dim=rot)
    with torch.no_grad():
        for p in (m.norm_in.weight, m.norm_out.weight):
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(2, S, 40, requires_grad=True)
    bias = 0.05 * torch.randn(3, S, S + 1)
    got = m(x, bias)
    want = _reference(x, m, bias)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(got)
    (gx,) = torch.autograd.grad(got, x, g)
    (gw,) = torch.autograd.grad(want, x, g.double())
    torch.testing.assert_close(gx.double(), gw.double(), rtol=1e-4, atol=1e-4)


def test_stable_layernorm_and_bad_config():
    x = torch.randn(3, 10) - 5.0  # all-negative rows: the stable norm divides by a negative max
    n = GainLayerNorm(10, stable=True)
    want = torch.nn.functional.layer_norm(x / x.amax(-1, keepdim=True), (10,), eps=1e-5)
    torch.testing.assert_close(n(x), want)
    with pytest.raises(ValueError, match="similarity"):
        MultiQueryAttention(8, 2, 4, similarity="l2")
    with pytest.raises(ValueError, match="fixed scale"):
        MultiQueryAttention(8, 2, 4, similarity="cosine")
    with pytest.raises(ValueError, match="rot_dim"):
        MultiQueryAttention(8, 2, 4, similarity="dot", rot_dim=6)
