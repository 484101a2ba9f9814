"""The transformer's blocks over trailing tokens in one C++ call (dalle2_fast::cached_blocks,
csrc/cpu/decode_cpu.cpp; nn.cached_blocks decides when it runs) against the blocks' own forward,
on awkward shapes, padded and compacted caches, and the diffusion prior's sampler."""
import pytest
import torch
from torch import nn

from dalle2_fast import _ext
from dalle2_fast.nn import cached_blocks as cb
from dalle2_fast.nn.packed_linear import packed_linears
from dalle2_fast.nn.transformer import Transformer

pytestmark = pytest.mark.skipif(not _ext.loaded(), reason="C++ extension not built")


def _randomise(module: nn.Module, g: torch.Generator) -> None:
    """Non-trivial values everywhere (LayerNorm gains and biases included)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.5) + (1.0 if p.dim() == 1 else 0))


def _prefix(tr: Transformer, B: int, P: int, pad: bool, g: torch.Generator):
    x = torch.randn(B, P, tr.pos.shape[1], generator=g)
    mask = None
    if pad:  # row b has its last b % P tokens padded (token 0 always real)
        mask = torch.zeros(B, P, dtype=torch.bool)
        for b in range(B):
            n = b % P
            if n:
                mask[b, P - n:] = True
    return tr.prefill(x, key_padding_mask=mask)[1]


def _reference(tr: Transformer, x, cache, last):
    """The blocks one by one (the one-call path switched off)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("dalle2_fast.nn.transformer.cached_blocks", lambda *a, **k: None)
        return tr(x, cache=cache, last=last)


@pytest.mark.parametrize("width,heads,layers,mlp_ratio", [(64, 4, 3, 4.0), (96, 3, 2, 2.5), (40, 5, 1, 1.0),
                                                          (256, 8, 2, 4.0)])
@pytest.mark.parametrize("B,P,T,last", [(1, 1, 1, 1), (3, 7, 3, 1), (5, 20, 4, 2), (2, 9, 16, 16), (8, 77, 3, None)])
@pytest.mark.parametrize("pad", [False, True])
@torch.no_grad()
def test_fused_blocks_match_the_blocks(width, heads, layers, mlp_ratio, B, P, T, last, pad):
    g = torch.Generator().manual_seed(width * 7 + B * 100 + P + T + int(pad))
    tr = Transformer(width, layers, heads, max_len=P + T, mlp_ratio=mlp_ratio)
    _randomise(tr, g)
    cache = _prefix(tr, B, P, pad, g)
    x = torch.randn(B, T, width, generator=g)
    ref = _reference(tr, x, cache, last)
    with packed_linears(tr):
        direct = cb.cached_blocks(tr.blocks, x + tr.pos[P:P + T], cache, last)
        got = tr(x, cache=cache, last=last)
    assert direct is not None, "the one-call path should apply here"
    assert got.shape == ref.shape == (B, T if last is None else last, width)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tr.ln(direct), ref, rtol=1e-4, atol=1e-4)
    # the tails the op wrote hold the new tokens' keys: a second call with other tokens agrees too
    x2 = torch.randn(B, T, width, generator=g)
    with packed_linears(tr):
        got2 = tr(x2, cache=cache, last=last)
    torch.testing.assert_close(got2, _reference(tr, x2, cache, last), rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_fused_path_falls_back_where_it_does_not_apply():
    """None (the blocks' own forward runs) outside packed_linears, with gradients, a growing cache,
    more than FEW_ROWS tokens, float64, and a block with QK norm."""
    g = torch.Generator().manual_seed(0)
    tr = Transformer(32, 2, 4, max_len=40)
    _randomise(tr, g)
    cache = _prefix(tr, 2, 5, False, g)
    x = torch.randn(2, 3, 32, generator=g)
    assert cb.cached_blocks(tr.blocks, x, cache) is None  # weights not packed
    with packed_linears(tr):
        assert cb.cached_blocks(tr.blocks, x, cache) is not None
        assert cb.cached_blocks(tr.blocks, x.double(), cache) is None
        assert cb.cached_blocks(tr.blocks, torch.randn(2, 17, 32), cache) is None
        grow = tr.prefill(torch.randn(2, 5, 32, generator=g), grow=True)[1]
        assert cb.cached_blocks(tr.blocks, x, grow) is None
        with torch.enable_grad():
            assert cb.cached_blocks(tr.blocks, x, cache) is None
    tr.blocks[1].attn.q_norm = nn.LayerNorm(8)
    with packed_linears(tr):
        assert cb.cached_blocks(tr.blocks, x, cache) is None


@torch.no_grad()
def test_non_finite_inputs_poison_like_the_blocks():
    """A NaN in one row's new token gives NaN in that row only, as the blocks' forward does."""
    g = torch.Generator().manual_seed(1)
    tr = Transformer(32, 2, 4, max_len=20)
    _randomise(tr, g)
    cache = _prefix(tr, 3, 6, True, g)
    x = torch.randn(3, 2, 32, generator=g)
    x[1, 0, 5] = float("nan")
    ref = _reference(tr, x, cache, 1)
    with packed_linears(tr):
        got = tr(x, cache=cache, last=1)
    assert torch.equal(torch.isnan(got), torch.isnan(ref))
    assert torch.isnan(got[1]).all() and torch.isfinite(got[[0, 2]]).all()
    torch.testing.assert_close(got[[0, 2]], ref[[0, 2]], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("guidance,n_cand", [(1.0, 1), (3.0, 2)])
def test_prior_sampling_with_the_fused_blocks_equals_without(guidance, n_cand, monkeypatch):
    """The diffusion prior's whole sampler (prefix cache, compacted padded captions, guidance,
    candidates): the same embeddings with the one-call blocks as with the blocks one by one."""
    from types import SimpleNamespace

    from dalle2_fast.models.prior.diffusion_prior import DiffusionPrior, DiffusionPriorConfig

    g = torch.Generator().manual_seed(2)
    cfg = DiffusionPriorConfig(clip_dim=16, text_width=24, text_len=9, width=48, layers=2, heads=4)
    prior = DiffusionPrior(cfg).eval()
    _randomise(prior, g)
    B = 3
    mask = torch.ones(B, 9, dtype=torch.bool)
    mask[1, 4:] = False
    mask[2, 7:] = False
    text = SimpleNamespace(tokens=torch.randn(B, 9, 24, generator=g), mask=mask,
                           embed=torch.nn.functional.normalize(torch.randn(B, 16, generator=g), dim=-1))
    calls = []
    real = cb.cached_blocks
    monkeypatch.setattr("dalle2_fast.nn.transformer.cached_blocks",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    # every draw (not sample()'s best-of: near-equal candidates of a random network may swap on rounding)
    fused = prior.sample_candidates(text, [5, 6, 7], steps=6, guidance=guidance, n_candidates=n_cand)
    assert calls, "the sampler should have taken the one-call blocks"
    monkeypatch.setattr("dalle2_fast.nn.transformer.cached_blocks", lambda *a, **k: None)
    plain = prior.sample_candidates(text, [5, 6, 7], steps=6, guidance=guidance, n_candidates=n_cand)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_the_op_writes_the_new_keys_into_the_cache_tails_and_declares_it():
    """The op writes the new tokens' keys / values into the cache layers' tail buffers (what the
    blocks' own forward writes there) and its schema declares exactly those two writes."""
    args = {a.name: a for a in torch.ops.dalle2_fast.cached_blocks.default._schema.arguments}
    assert [n for n, a in args.items() if a.alias_info is not None and a.alias_info.is_write] == ["keys", "values"]
    g = torch.Generator().manual_seed(3)
    tr = Transformer(32, 3, 4, max_len=12)
    _randomise(tr, g)
    cache = _prefix(tr, 3, 5, True, g)
    x = torch.randn(3, 4, 32, generator=g)
    tails = lambda: [t.clone() for la in cache.layers for t in la.tail_buffers((3, 4, 4, 8), torch.float32)[:2]]  # noqa: E731
    _reference(tr, x, cache, 1)
    ref = tails()
    for la in cache.layers:  # scribble over the tails: the op must write them
        la.tail_buffers((3, 4, 4, 8), torch.float32)[0][..., 5:, :].fill_(7.0)
    with packed_linears(tr):
        assert cb.cached_blocks(tr.blocks, x + tr.pos[5:9], cache, 1) is not None
    for got, want in zip(tails(), ref):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_derived_arguments_follow_the_modules():
    """The op's arguments are derived once per sampling loop (memoised): a norm changed in place
    between two calls is seen by the next one, a linear changed in place turns the path off (its
    packed copy is stale), and a new packed_linears block is picked up."""
    g = torch.Generator().manual_seed(4)
    tr = Transformer(32, 2, 4, max_len=12)
    _randomise(tr, g)
    cache = _prefix(tr, 2, 5, False, g)
    x = torch.randn(2, 3, 32, generator=g)
    with packed_linears(tr):
        assert cb.cached_blocks(tr.blocks, x, cache, 1) is not None
        tr.blocks[1].ln2.weight.mul_(1.5)
        got = tr(x, cache=cache, last=1)
        torch.testing.assert_close(got, _reference(tr, x, cache, 1), rtol=1e-4, atol=1e-4)
        tr.blocks[0].mlp[0].weight.mul_(0.5)
        assert cb.cached_blocks(tr.blocks, x, cache, 1) is None
        torch.testing.assert_close(tr(x, cache=cache, last=1), _reference(tr, x, cache, 1), rtol=1e-4, atol=1e-4)
    with packed_linears(tr):  # repacked: the path applies again, with the new weights
        assert cb.cached_blocks(tr.blocks, x, cache, 1) is not None
        torch.testing.assert_close(tr(x, cache=cache, last=1), _reference(tr, x, cache, 1), rtol=1e-4, atol=1e-4)
