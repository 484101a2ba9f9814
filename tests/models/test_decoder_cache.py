"""The decoder's context key/value cache (UNet.context_cache: every attention block's projected
context, once per sampling call) equals the uncached path to float tolerance: at the forward and
over whole sampling calls with and without a caption, with classifier-free guidance rows (masked
and empty-prompt unconditional captions, learned null z_i, z_t in the time embedding), and
errors."""
import pytest
import torch

from dalle2_fast.models.clip import TextEncoding
from dalle2_fast.models.unet import UNet, UNetConfig
from tests.models.test_decoder import D, L, W, cond, tiny_decoder

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = dict(atol=2e-5, rtol=2e-5)


def _randomised(dec):
    """Zero-initialised outputs (attention projections, the last conv) would hide the context."""
    with torch.no_grad():
        for p in dec.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    return dec.eval()


def _padded_text(b, seed=0):
    z, text = cond(b, seed)
    text.mask[0, 2:] = False
    text.mask[-1, 1:] = False
    return z, text


def test_unet_context_cache_equals_the_context_path():
    u = UNetConfig(image_size=16, in_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(8, 16), num_head_channels=16, cond_dim=D, context_dim=24, cond_tokens=2,
                   num_groups=8)
    torch.manual_seed(0)
    net = _randomised(UNet(u))
    x, t, c = torch.randn(3, 3, 16, 16), torch.tensor([1, 500, 999]), torch.randn(3, D)
    ctx, mask = torch.randn(3, 5, 24), torch.zeros(3, 5, dtype=torch.bool)
    mask[1, 2:] = True
    with torch.no_grad():
        cache = net.context_cache(c, ctx, mask)
        assert len(cache) == sum(1 for m in net.modules() if type(m).__name__ == "AttentionBlock") > 2
        assert cache.length == 2 + 5
        torch.testing.assert_close(net(x, t, cond=c, context_kv=cache), net(x, t, cond=c, context=ctx,
                                                                           context_mask=mask), **TOL)
        with pytest.raises(ValueError, match="not both"):
            net(x, t, cond=c, context=ctx, context_kv=cache)
        with pytest.raises(ValueError, match="batch"):
            net(x[:2], t[:2], cond=c[:2], context_kv=cache)
        with pytest.raises(ValueError, match="cond"):
            net.context_cache(None, ctx, mask)
    with pytest.raises(ValueError, match="no context"):
        UNet(u.replace(context_dim=None, cond_tokens=0)).context_cache(c)


OPTIONS = {
    "ours": {},
    "karlo_conventions": dict(uncond="empty_prompt", text_drop_prob=0.0, null_image_embed="learned",
                              text_embed_to_time=True, text_proj_order="linear_norm"),
}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_decoder_context_cache_equals_the_uncached_sampling(name):
    dec = _randomised(tiny_decoder(**OPTIONS[name]))
    z, text = _padded_text(3)
    null = None
    if dec.null_prompt is not None:
        nz, null = cond(1, seed=5)
        null.mask[0, 1:] = False
    with torch.no_grad():
        x, t = torch.randn(3, 3, 16, 16), torch.tensor([3, 400, 999])
        kw = dec._kwargs(z, *dec._text(text))
        want = dec(x, t, **kw)
        got = dec(x, t, **dec._cached_kwargs(kw))
        torch.testing.assert_close(got, want, **TOL)
        captions = [text] if dec.null_prompt is not None else [text, None]  # None: variations (no caption)
        for caption in captions:
            for guidance in (1.0, 3.0):
                kw = dict(seeds=[7, 8, 9], steps=4, guidance=guidance, null_text=null)
                cached = dec.sample(z, caption, **kw)
                torch.testing.assert_close(cached, dec.sample(z, caption, context_cache=False, **kw), **TOL)
        with pytest.raises(ValueError, match="not both"):
            dec(x, t, z, text.tokens, text.mask, z, context=dec.context_cache(z, text.tokens, text.mask))


def test_decoder_context_cache_broadcasts_a_batch1_null_and_inverts():
    dec = _randomised(tiny_decoder())
    z, text = _padded_text(2)
    with torch.no_grad():
        one = dec.context_cache(torch.zeros(1, D), text.tokens[:1], torch.zeros(1, L, dtype=torch.bool))
        assert one.batch == 1
        tok2 = text.tokens[:1].repeat(2, 1, 1)
        both = dec.context_cache(torch.zeros(2, D), tok2, torch.zeros(2, L, dtype=torch.bool))
        for a, b in zip(one.expand(2).layers, both.layers):
            torch.testing.assert_close(a.k, b.k, **TOL)
        images = dec.sample(z, text, seeds=[1, 2], steps=3, guidance=1.0, eta=0.0, clip=None)
        x_T = dec.invert(images, z, text, steps=3)
        assert x_T.shape == images.shape and torch.isfinite(x_T).all()
    assert isinstance(text, TextEncoding) and W == text.tokens.shape[-1]
