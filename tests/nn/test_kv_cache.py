"""nn.KVCache: keys/values computed once equal the uncached computation to float tolerance —
a frozen prefix of nn.Transformer (with padding masks, input norm, batch operations for
candidates and guidance pairs), token-by-token decoding with a growing cache, the context
keys/values of nn.Attention ('cross' and 'concat'), the LAION prior's MultiQueryAttention with
rotary positions and a relative position bias; and the errors."""
import pytest
import torch

from dalle2_fast.nn import Attention, KVCache, KVLayer, Transformer
from dalle2_fast.nn.mq_attention import MultiQueryAttention
from dalle2_fast.nn.positional import RelativePositionBias

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = dict(atol=2e-6, rtol=2e-5)


def _padded_mask(b: int, s: int) -> torch.Tensor:
    """(b, s) True = padded: row 1 padded after 3 tokens, row 2 after 1 (token 0 always real)."""
    m = torch.zeros(b, s, dtype=torch.bool)
    m[1, 3:] = True
    if b > 2:
        m[2, 1:] = True
    return m


@pytest.mark.parametrize("input_norm", [False, True])
@pytest.mark.parametrize("n_prefix,n_suffix", [(7, 3), (1, 4), (9, 1)])
def test_transformer_prefix_cache_equals_the_whole_sequence(input_norm, n_prefix, n_suffix):
    torch.manual_seed(0)
    tr = Transformer(24, 3, 3, 16, causal=True, input_norm=input_norm).eval()
    b = 3
    x = torch.randn(b, n_prefix + n_suffix, 24)
    pad = torch.cat([_padded_mask(b, n_prefix), torch.zeros(b, n_suffix, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        full = tr(x, key_padding_mask=pad)
        h, cache = tr.prefill(x[:, :n_prefix], key_padding_mask=pad[:, :n_prefix])
        assert cache.length == n_prefix and cache.batch == b and len(cache) == 3
        torch.testing.assert_close(h, full[:, :n_prefix], **TOL)
        got = tr(x[:, n_prefix:], cache=cache)
        torch.testing.assert_close(got, full[:, n_prefix:], **TOL)
        assert cache.length == n_prefix  # frozen: the suffix was not stored
        # the same cache serves another suffix (the next sampling step)
        x2 = x.clone()
        x2[:, n_prefix:] = torch.randn(b, n_suffix, 24)
        torch.testing.assert_close(tr(x2[:, n_prefix:], cache=cache), tr(x2, key_padding_mask=pad)[:, n_prefix:],
                                   **TOL)


def test_compacted_prefix_with_positions_equals_the_padded_prefix():
    """A padded causal prefix run as its real tokens only (gathered to the front, own positions,
    rows padded to the longest): the tokens after it get the same outputs; caches of different
    lengths at one position pair by masked padding (cat_batch), a growing compact cache decodes on
    from its position."""
    torch.manual_seed(int(torch.randint(0, 10_000, ())))
    tr = Transformer(24, 2, 3, 16, causal=True).eval()
    b, P, S = 3, 9, 3
    real = torch.ones(b, P, dtype=torch.bool)
    real[0, 5:8] = False  # a hole before the prefix's last token
    real[1, 2:8] = False
    real[2, 1:8] = False
    x = torch.randn(b, P + S, 24)
    with torch.no_grad():
        full = tr(x, key_padding_mask=torch.cat([~real, torch.zeros(b, S, dtype=torch.bool)], 1))
        idx = torch.sort((~real).to(torch.uint8), dim=1, stable=True).indices[:, :6]  # longest row: 6 real
        _, cache = tr.prefill(x[:, :P].gather(1, idx[..., None].expand(-1, -1, 24)),
                              key_padding_mask=~real.gather(1, idx), positions=idx)
        assert cache.length == 6 and cache.position == P
        torch.testing.assert_close(tr(x[:, P:], cache=cache), full[:, P:], **TOL)
        # rows 1 and 2 alone compact to 3 tokens; paired with row 0's 6-token cache by masked padding
        short = tr.prefill(x[1:, :P].gather(1, idx[1:, :3, None].expand(-1, -1, 24)),
                           key_padding_mask=~real[1:].gather(1, idx[1:, :3]), positions=idx[1:, :3])[1]
        assert short.length == 3 and short.position == P
        row0 = KVCache([KVLayer(la.k[:1], la.v[:1], la.mask[:1]) for la in cache.layers], cache.position)
        paired = row0.cat_batch(short)
        assert paired.length == 6 and paired.position == P and short.pad_to(6).position == P
        torch.testing.assert_close(tr(x[:, P:], cache=paired), full[:, P:], **TOL)
        _, grow = tr.prefill(x[:, :P].gather(1, idx[..., None].expand(-1, -1, 24)),
                             key_padding_mask=~real.gather(1, idx), positions=idx, grow=True)
        steps = [tr(x[:, P + i: P + i + 1], cache=grow) for i in range(S)]
        assert grow.length == 6 + S and grow.position == P + S
        torch.testing.assert_close(torch.cat(steps, 1), full[:, P:], **TOL)
    with pytest.raises(ValueError, match="position"):
        row0.cat_batch(KVCache(short.layers))  # the same tokens claimed at positions 0..2
    with pytest.raises(ValueError, match="positions must"):
        tr(x[:, :2], positions=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, max_len=16\)"):
        tr(x[:, :2], positions=torch.tensor([3, 16]))
    with pytest.raises(ValueError, match="position must be an int >= the cached length"):
        KVCache(cache.layers, 2)
    with pytest.raises(ValueError, match="pad_to: length 2"):
        cache.pad_to(2)
    # rows assembled from per-row caches (from_rows) equal the batched compact cache
    with torch.no_grad():
        per_row = [(torch.tensor([i]), tr.prefill(x[i:i + 1, :P].gather(1, idx[i:i + 1, :m, None].expand(-1, -1, 24)),
                                                  positions=idx[i:i + 1, :m])[1]) for i, m in ((2, 2), (0, 6), (1, 3))]
        joined = KVCache.from_rows(per_row, 3)
        assert joined.length == 6 and joined.position == P and joined.layers[0].mask[1:, 3:].all() and not joined.layers[0].mask[0].any()
        torch.testing.assert_close(tr(x[:, P:], cache=joined), full[:, P:], **TOL)
    with pytest.raises(ValueError, match="cover 0 .. 2 once each"):
        KVCache.from_rows(per_row[:2], 3)
    with pytest.raises(ValueError, match="differ in position"):
        KVCache.from_rows([per_row[0], (torch.tensor([1, 2]), KVCache(short.layers))], 3)


def test_transformer_decoding_with_a_growing_cache_equals_the_whole_sequence():
    torch.manual_seed(1)
    tr = Transformer(16, 2, 2, 12, causal=True).eval()
    b, p, k = 3, 5, 6
    x = torch.randn(b, p + k, 16)
    pad = torch.cat([_padded_mask(b, p), torch.zeros(b, k, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        full = tr(x, key_padding_mask=pad)
        h, cache = tr.prefill(x[:, :p], key_padding_mask=pad[:, :p], grow=True)
        outs = [h]
        for i in range(p, p + k):  # one position per token
            outs.append(tr(x[:, i:i + 1], cache=cache))
            assert cache.length == i + 1
        torch.testing.assert_close(torch.cat(outs, dim=1), full, **TOL)
        with pytest.raises(ValueError, match="max_len"):
            tr(x[:, :2], cache=cache)  # 11 + 2 > 12


def test_cache_batch_operations_match_computing_on_the_batch():
    """repeat (candidates, candidate-major), expand (a batch-1 null branch) and cat_batch
    (guidance's [cond; uncond] rows) give the cache of the correspondingly batched prefix."""
    torch.manual_seed(2)
    tr = Transformer(16, 2, 2, 12, causal=True).eval()
    cond, null = torch.randn(2, 5, 16), torch.randn(1, 5, 16)
    pad = _padded_mask(2, 5)
    suffix = torch.randn(6 + 6, 2, 16)
    with torch.no_grad():
        c = tr.prefill(cond, key_padding_mask=pad)[1]
        u = tr.prefill(null)[1]
        paired = c.repeat(3).cat_batch(u.expand(6))  # 3 candidates x 2 captions, then 6 null rows
        assert paired.batch == 12 and paired.length == 5
        prefix = torch.cat([cond.repeat(3, 1, 1), null.expand(6, -1, -1)])
        prefix_pad = torch.cat([pad.repeat(3, 1), torch.zeros(6, 5, dtype=torch.bool)])
        want = tr(torch.cat([prefix, suffix], dim=1), key_padding_mask=torch.cat(
            [prefix_pad, torch.zeros(12, 2, dtype=torch.bool)], dim=1))[:, 5:]
        torch.testing.assert_close(tr(suffix, cache=paired), want, **TOL)
        # clone / copy_ / signature (static buffers of a captured CUDA graph)
        buf = paired.clone()
        assert buf.signature() == paired.signature()
        buf.copy_(c.repeat(3).cat_batch(c.repeat(3)))
        torch.testing.assert_close(tr(suffix, cache=buf)[:6], want[:6], **TOL)
        with pytest.raises(ValueError, match="differ"):
            buf.copy_(c)
        with pytest.raises(ValueError, match="batch-1"):
            c.expand(4)
        with pytest.raises(ValueError, match="layers or position"):
            c.cat_batch(tr.prefill(cond[:, :3])[1])


@pytest.mark.parametrize("mode", ["cross", "concat"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_context_kv_equals_the_context_path(mode, qk_norm):
    torch.manual_seed(3)
    att = Attention(24, heads=3, context_dim=10, context_mode=mode, qk_norm=qk_norm).eval()
    x, ctx = torch.randn(3, 7, 24), torch.randn(3, 5, 10)
    cmask = _padded_mask(3, 5)
    with torch.no_grad():
        past = att.context_kv(ctx, cmask)
        assert past.length == 5 and not past.grow
        torch.testing.assert_close(att(x, past=past), att(x, ctx, cmask), **TOL)
        if mode == "concat":
            kpm = torch.zeros(3, 7, dtype=torch.bool)
            kpm[0, 4:] = True
            torch.testing.assert_close(att(x, past=past, key_padding_mask=kpm), att(x, ctx, cmask, kpm), **TOL)
            torch.testing.assert_close(att(x, past=att.context_kv(ctx)), att(x, ctx), **TOL)
        with pytest.raises(ValueError, match="not both"):
            att(x, ctx, past=past)
        with pytest.raises(ValueError, match="batch"):
            att(x[:2], past=past)
    with pytest.raises(ValueError, match="context_dim"):
        Attention(24, heads=3).context_kv(ctx)


@pytest.mark.parametrize("similarity,rot_dim", [("cosine", 4), ("dot", 0)])
def test_multi_query_attention_with_a_cache_equals_the_whole_sequence(similarity, rot_dim):
    torch.manual_seed(4)
    att = MultiQueryAttention(16, 4, 8, similarity=similarity, scale=16.0 if similarity == "cosine" else None,
                              bias_scale=3.0, rot_dim=rot_dim).eval()
    rel = RelativePositionBias(4)
    b, p, s = 2, 6, 3
    x = torch.randn(b, p + s, 16)
    with torch.no_grad():
        full = att(x, rel(p + s, p + s + 1))
        past = KVLayer(grow=True)
        torch.testing.assert_close(att(x[:, :p], rel(p, p + 1), past), full[:, :p], **TOL)
        assert past.length == p and past.k.shape == (b, p, 8)
        past.grow = False
        bias = rel(s, p + s + 1, k_offset=p)  # the rows p.. of the whole sequence's bias
        torch.testing.assert_close(bias, rel(p + s, p + s + 1)[:, p:])
        torch.testing.assert_close(att(x[:, p:], bias, past), full[:, p:], **TOL)
        with pytest.raises(ValueError, match="bias"):
            att(x[:, p:], rel(s, s + 1), past)


def test_cache_errors_name_what_was_expected():
    tr = Transformer(16, 2, 2, 12, causal=True)
    with pytest.raises(ValueError, match="layers"):
        tr(torch.randn(1, 2, 16), cache=KVCache.empty(3))
    cache = tr.prefill(torch.randn(2, 3, 16))[1]
    with pytest.raises(ValueError, match="batch"):
        tr(torch.randn(3, 1, 16), cache=cache)
    with pytest.raises(ValueError, match="k and v"):
        KVLayer(torch.zeros(1, 2, 3, 4), None)
    with pytest.raises(ValueError, match="mask"):
        KVLayer(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4), torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="at least one layer"):
        KVCache([])


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("last", [1, 2])
def test_transformer_last_equals_the_trailing_outputs(cached, last):
    """``last=k`` runs only the final k tokens through the last block (queries and MLP), every token
    still giving keys and values: the same outputs as the trailing k rows of the whole call,
    with padding in the prefix, with and without a prefix cache."""
    torch.manual_seed(3)
    tr = Transformer(24, 3, 3, 16, causal=True).eval()
    b, p, s = 3, 6, 3
    x = torch.randn(b, p + s, 24)
    pad = torch.cat([_padded_mask(b, p), torch.zeros(b, s, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        full = tr(x, key_padding_mask=pad)
        if cached:
            cache = tr.prefill(x[:, :p], key_padding_mask=pad[:, :p])[1]
            got = tr(x[:, p:], cache=cache, last=last)
        else:
            got = tr(x, key_padding_mask=pad, last=last)
    assert got.shape == (b, last, 24)
    torch.testing.assert_close(got, full[:, -last:], **TOL)
    with pytest.raises(ValueError, match="last must be"):
        tr.blocks[0].attn(x, last=p + s + 1)


def test_frozen_cache_buffers_follow_the_cache_and_autograd():
    """A frozen layer reuses one [cached; new] buffer across eager no-grad calls: after the cached
    keys change in place (``KVCache.copy_``, as a captured graph's inputs do) the result follows
    them; with autograd on, each call gets its own tensors (both backward passes are right)."""
    torch.manual_seed(4)
    tr = Transformer(16, 2, 2, 12, causal=True).eval()
    b, p, s = 2, 5, 3
    xa, xb = torch.randn(b, p + s, 16), torch.randn(b, p + s, 16)
    with torch.no_grad():
        cache = tr.prefill(xa[:, :p])[1]
        torch.testing.assert_close(tr(xa[:, p:], cache=cache), tr(xa)[:, p:], **TOL)
        cache.copy_(tr.prefill(xb[:, :p])[1])  # same shapes, another prefix, in place
        torch.testing.assert_close(tr(xa[:, p:], cache=cache), tr(torch.cat([xb[:, :p], xa[:, p:]], 1))[:, p:],
                                   **TOL)
    s1 = xa[:, p:].clone().requires_grad_()
    s2 = xb[:, p:].clone().requires_grad_()
    out1, out2 = tr(s1, cache=cache), tr(s2, cache=cache)
    (out1.sum() + 2 * out2.sum()).backward()
    r1 = xa[:, p:].clone().requires_grad_()
    ref = tr(torch.cat([xb[:, :p], r1], 1))[:, p:]
    ref.sum().backward()
    torch.testing.assert_close(s1.grad, r1.grad, **TOL)
