"""The priors' caches equal the uncached path to float tolerance: the diffusion priors' prefix cache
(ours with learned nulls; the PriorTransformer conventions — empty-prompt guidance, raw
embeddings, input / z_t norms, no query token, x0 clamp — both as config options and imported
from diffusers; the LAION prior's multi-query stack) with guidance, padding masks and several
candidates, at the forward and over a whole sampling call; and the AR prior's KV-cached decoding
(every step's logits, and the samples)."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dalle2_fast.models.prior import DiffusionPrior, DiffusionPriorConfig
from dalle2_fast.models.prior.laion import LaionDiffusionPrior, LaionPriorConfig
from tests.models.test_prior import Toy, fitted_ar_prior, text_of

pytestmark = pytest.mark.usefixtures("one_thread")

D, L, W = 16, 6, 8
TOL = dict(atol=1e-5, rtol=1e-5)


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 2e-5) -> None:
    """Max abs error within tol x max(1, output scale) (raw embeddings are far from unit scale)."""
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"max abs err {err:.3g}"
SEEDS = [3, 1, 4]

KARLO_LIKE = dict(embed_norm="mean_std", raw_embeddings=True, uncond="empty_prompt", cond_drop_prob=0.0,
                  x0_clamp=2.0, input_norm=True, embed_proj_norm=True, query_token=False, time_act="gelu",
                  time_embed_dim=48)


def _text(b=3, d=D, width=W, length=L, seed=0):
    """A caption encoding with varied padding (row 1 after 3 tokens, row 2 after 1)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, length, dtype=torch.bool)
    if b > 2:
        mask[1, 3:] = False
        mask[2, 1:] = False
    emb = torch.randn(b, d, generator=g)
    return SimpleNamespace(tokens=torch.randn(b, length, width, generator=g), mask=mask,
                           embed=F.normalize(emb, dim=-1), raw_embed=emb * 2)


def _null(d=D, width=W, length=L):
    t = _text(1, d, width, length, seed=9)
    t.mask[0, 2:] = False
    return t


@pytest.mark.parametrize("options", [{}, KARLO_LIKE], ids=["ours", "prior_transformer_options"])
def test_diffusion_prior_prefix_cache_equals_the_whole_sequence(options):
    torch.manual_seed(0)
    p = DiffusionPrior(DiffusionPriorConfig(clip_dim=D, text_width=W, text_len=L, width=32, layers=2, heads=2,
                                            **options)).eval()
    if options:  # non-trivial per-dimension normalisation
        p.clip_mean.normal_()
        p.clip_std.uniform_(0.5, 2.0)
    text, null = _text(), _null()
    tok, mask, emb = text.tokens, text.mask, (text.raw_embed if options else text.embed)
    x, t = torch.randn(3, D), torch.tensor([0, 500, 999])
    drop = None if options else torch.tensor([False, True, False])
    with torch.no_grad():
        want = p(x, t, tok, mask, emb, drop)
        torch.testing.assert_close(p(x, t, prefix=p.prefix_cache(tok, mask, emb, drop)), want, **TOL)
        for guidance in (1.0, 4.0):
            kw = dict(steps=6, guidance=guidance, n_candidates=3, null_text=null)
            cached = p.sample_candidates(text, SEEDS, **kw)
            _close(cached, p.sample_candidates(text, SEEDS, prefix_cache=False, **kw))
            assert cached.shape == (3, 3, D)
        with pytest.raises(ValueError, match="not both"):
            p(x, t, tok, mask, emb, prefix=p.prefix_cache(tok, mask, emb))
        with pytest.raises(ValueError, match="prefix must cache"):
            p(x, t, prefix=p.transformer.prefill(torch.randn(3, 2, 32))[1])


@pytest.mark.parametrize("options", [{}, KARLO_LIKE], ids=["ours", "prior_transformer_options"])
def test_compacted_prefix_equals_the_padded_prefix(options):
    """Every row padded (so the compact prefix is shorter than L + 1), one with holes inside the
    caption: the compacted cache gives the uncached forward's outputs, and whole sampling calls
    equal those of the padded cache and of the uncached path."""
    torch.manual_seed(2)
    p = DiffusionPrior(DiffusionPriorConfig(clip_dim=D, text_width=W, text_len=L, width=32, layers=2, heads=2,
                                            **options)).eval()
    if options:
        p.clip_mean.normal_()
        p.clip_std.uniform_(0.5, 2.0)
    text = _text(4, seed=int(torch.randint(0, 1000, ())))
    text.mask[:] = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 0, 1, 0, 1], [1, 1, 0, 0, 0, 0]],
                                dtype=torch.bool)
    emb = text.raw_embed if options else text.embed
    x, t = torch.randn(4, D), torch.tensor([0, 17, 500, 999])
    drop = None if options else torch.tensor([False, True, False, False])
    with torch.no_grad():
        want = p(x, t, text.tokens, text.mask, emb, drop)
        compact = p.prefix_cache(text.tokens, text.mask, emb, drop)
        padded = p.prefix_cache(text.tokens, text.mask, emb, drop, compact=False)
        assert padded.length == L + 1 and compact.position == padded.position == L + 1
        # learned nulls replace a dropped row's caption by L real null tokens
        assert compact.length == (L + 1 if drop is not None else 5)
        torch.testing.assert_close(p(x, t, prefix=compact), want, **TOL)
        torch.testing.assert_close(p(x, t, prefix=padded), want, **TOL)
        if drop is not None:  # without the learned-null row the compaction does shorten the cache
            keep = torch.tensor([0, 2, 3])
            c3 = p.prefix_cache(text.tokens[keep], text.mask[keep], emb[keep], drop[keep])
            assert c3.length == 5
            torch.testing.assert_close(p(x[keep], t[keep], prefix=c3), want[keep], **TOL)
        null = _null()
        null.mask[0, 1:] = False  # a one-token null caption: its cache is shorter than the captions'
        for guidance in (1.0, 3.0):
            kw = dict(steps=5, guidance=guidance, n_candidates=2, null_text=null)
            cached = p.sample_candidates(text, SEEDS + [7], **kw)
            _close(cached, p.sample_candidates(text, SEEDS + [7], prefix_cache=False, **kw))


def test_imported_prior_transformer_prefix_cache_equals_the_whole_sequence(tmp_path):
    pytest.importorskip("diffusers")
    from tests.interop._unclip_refs import D as RD, HIDDEN, L as RL, prior

    prior(seed=11, norm_in_type="layer").save_pretrained(str(tmp_path / "prior"))
    p = DiffusionPrior.from_diffusers(tmp_path / "prior").eval()
    text, null = _text(3, RD, HIDDEN, RL), _null(RD, HIDDEN, RL)
    for guidance in (1.0, 4.0):
        kw = dict(steps=5, guidance=guidance, n_candidates=2, null_text=null)
        _close(p.sample_candidates(text, SEEDS, **kw), p.sample_candidates(text, SEEDS, prefix_cache=False, **kw))


LAION_VARIANTS = {
    "cosine": {},
    "pb_relax_multi_embeds": dict(attention="pb_relax", norm_in=True, num_timesteps=None, num_text_embeds=2,
                                  num_image_embeds=2, num_time_embeds=2, normformer=True),
}


@pytest.mark.parametrize("name", sorted(LAION_VARIANTS))
def test_laion_prior_prefix_cache_equals_the_whole_sequence(name):
    torch.manual_seed(1)
    p = LaionDiffusionPrior(LaionPriorConfig(dim=32, depth=2, heads=4, dim_head=8, max_text_len=7,
                                             **LAION_VARIANTS[name])).eval()
    text = _text(3, 32, 32, 5)  # 5 tokens of a 7-token context: padded by the model too
    x, t = torch.randn(3, 32), torch.tensor([0, 500, 999])
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        want = p(x, t, text.tokens, text.mask, text.embed, drop=drop, image_drop=~drop)
        got = p(x, t, prefix=p.prefix_cache(text.tokens, text.mask, text.embed, drop), image_drop=~drop)
        torch.testing.assert_close(got, want, **TOL)
        for guidance in (1.0, 3.0):
            kw = dict(steps=6, guidance=guidance, n_candidates=3)
            torch.testing.assert_close(p.sample_candidates(text, SEEDS, **kw),
                                       p.sample_candidates(text, SEEDS, prefix_cache=False, **kw), **TOL)
        with pytest.raises(ValueError, match="not both"):
            p(x, t, text.tokens, text.mask, text.embed, prefix=p.prefix_cache(text.tokens, text.mask, text.embed))


def test_ar_prior_kv_cached_decoding_equals_rerunning_the_sequence():
    toy = Toy(noise=0.05)
    p = fitted_ar_prior(toy).eval()
    batch, _ = toy.batch(4, torch.Generator().manual_seed(3))
    batch["text_mask"][1, 2:] = False  # padding inside the prefix
    c = p.config
    codes = torch.randint(0, c.n_buckets, (4, c.n_components - 1))
    dot = torch.tensor([0, 1, 2, 3])
    drop = torch.tensor([False, True, False, False])
    args = (batch["text_tokens"], batch["text_mask"], batch["text_embed"], dot, drop)
    with torch.no_grad():
        want = p(codes, *args)  # (B, K, n_buckets): the logits of every step, teacher-forced
        seq, seq_mask = p._prefix(*args)
        h, cache = p.transformer.prefill(seq, key_padding_mask=~seq_mask, grow=True)
        steps = [p.head(h[:, -1])]
        for k in range(c.n_components - 1):
            h = p.transformer(p.code_emb(codes[:, k] + k * c.n_buckets)[:, None], cache=cache)
            steps.append(p.head(h[:, -1]))
        torch.testing.assert_close(torch.stack(steps, dim=1), want, **TOL)
        text = text_of(batch)
        for guidance in (1.0, 3.0):
            kw = dict(guidance=guidance, n_candidates=3)
            torch.testing.assert_close(p.sample(text, [5, 6, 7, 8], **kw),
                                       p.sample(text, [5, 6, 7, 8], kv_cache=False, **kw), **TOL)


@pytest.mark.gpu
def test_prefix_cache_in_a_captured_cuda_graph_is_a_static_buffer():
    """cuda_graph=True: the cache kwarg is cloned into the graph's buffers and copied in before
    every replay, so a second call with another caption's cache (same shapes) replays with it."""
    from dalle2_fast.diffusion import run_sampler

    torch.manual_seed(0)
    p = DiffusionPrior(DiffusionPriorConfig(clip_dim=D, text_width=W, text_len=L, width=32, layers=2,
                                            heads=2)).cuda().eval()
    out = {}
    for seed in (0, 1):
        t = _text(seed=seed)
        with torch.no_grad():
            kw = {"prefix": p.prefix_cache(t.tokens.cuda(), t.mask.cuda(), t.embed.cuda())}
            for graph in (False, True):
                out[seed, graph] = run_sampler("ddim", p, p.diffusion, (3, D), steps=5, model_kwargs=dict(kw),
                                               seeds=SEEDS, device="cuda", cuda_graph=graph)
        torch.testing.assert_close(out[seed, True], out[seed, False], **TOL)
    assert not torch.allclose(out[0, True], out[1, True])
