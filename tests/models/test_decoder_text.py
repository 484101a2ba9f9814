"""The decoder's GLIDE text transformer (models.decoder_text): shapes, causality and padding, the
final token in the time embedding, the context cache equal to the uncached path, a training
smoke, checkpoints, config checks, the option off as before, and the shipped decoder as its recipe says."""
import pytest
import torch

from dalle2_fast.checkpoint import load_pretrained, save_pretrained
from dalle2_fast.models.clip import TextEncoding
from dalle2_fast.models.decoder_text import DecoderTextTransformer, TextTransformerConfig
from tests.models.test_decoder import D, L, W, cond, tiny_decoder

pytestmark = pytest.mark.usefixtures("one_thread")

XF = TextTransformerConfig(layers=2, width=24, heads=3)  # width / heads = 8: a non-power-of-two head count


def _randomised(dec):
    with torch.no_grad():  # zero-initialised outputs would hide the conditioning
        for p in dec.parameters():
            if not p.any():
                p.normal_(0, 0.2)
    return dec.eval()


def test_text_transformer_shapes_causality_and_padding():
    torch.manual_seed(1)
    xf = DecoderTextTransformer(XF, text_width=W, text_len=L, context_dim=20, emb_dim=44).eval()
    tok = torch.randn(3, L, W)
    mask = torch.ones(3, L, dtype=torch.bool)
    mask[1, 3:] = False
    mask[2, :] = False  # a dropped caption: every position reads the padding embedding
    ctx, fin = xf(tok, mask)
    assert ctx.shape == (3, L, 20) and fin.shape == (3, 44)
    # padded positions ignore the token features there
    tok2 = tok.clone()
    tok2[1, 3:] = 100.0
    tok2[2] = -7.0
    ctx2, fin2 = xf(tok2, mask)
    torch.testing.assert_close(ctx2[1:], ctx[1:])
    torch.testing.assert_close(fin2[1:], fin[1:])
    # causal: changing token 2 leaves positions 0, 1 alone and reaches the final token
    tok3 = tok.clone()
    tok3[0, 2] += 1.0
    ctx3, fin3 = xf(tok3, mask)
    torch.testing.assert_close(ctx3[0, :2], ctx[0, :2])
    assert not torch.allclose(ctx3[0, 2:], ctx[0, 2:]) and not torch.allclose(fin3[0], fin[0])
    with pytest.raises(ValueError, match="tokens must be"):
        xf(tok[:, :-1], mask[:, :-1])


@pytest.mark.parametrize("bad", [dict(layers=0), dict(width=10, heads=3), dict(heads=True)])
def test_text_transformer_config_checks(bad):
    with pytest.raises(ValueError, match="TextTransformerConfig"):
        TextTransformerConfig(**{"layers": 1, "width": 12, "heads": 2, **bad})


def test_decoder_with_text_transformer_conditions_on_the_caption_and_the_final_token():
    dec = _randomised(tiny_decoder(text_transformer=XF))
    assert dec.text_proj is None and dec.text_xf is not None
    z, text = cond(3)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([5, 400, 950])
    out = dec(x, t, z, text.tokens, text.mask)
    assert out.shape == (3, 6, 16, 16)
    assert not torch.allclose(dec(x, t, z, text.tokens * 2, text.mask), out)
    # the final token alone (the U-Net's cross-attention cut off) still carries the caption
    with torch.no_grad():
        for p in dec.text_xf.to_context.parameters():
            p.zero_()
    a = dec(x, t, z, text.tokens, text.mask)
    assert not torch.allclose(dec(x, t, z, text.tokens * 2, text.mask), a)


def test_text_transformer_context_cache_equals_the_uncached_sampling():
    dec = _randomised(tiny_decoder(text_transformer=XF))
    z, text = cond(3, seed=2)
    text.mask[1, 2:] = False
    for guidance, txt in ((3.0, text), (1.0, text), (2.0, None)):
        a = dec.sample(z, txt, seeds=[4, 5, 6], steps=3, guidance=guidance, context_cache=True)
        b = dec.sample(z, txt, seeds=[4, 5, 6], steps=3, guidance=guidance, context_cache=False)
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="caption_emb"):
        dec(torch.randn(1, 3, 16, 16), torch.tensor([3]), z[:1], text.tokens[:1], text.mask[:1],
            caption_emb=torch.zeros(1, 128))


def test_decoder_with_text_transformer_trains_a_few_steps():
    """The smoke the recipe runs at scale: the loss on a fixed batch drops and the transformer learns."""
    dec = tiny_decoder(text_transformer=XF, clip_drop_prob=0.0, text_drop_prob=0.0)
    z, text = cond(8)
    x0 = torch.tanh(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    opt = torch.optim.Adam(dec.parameters(), lr=2e-3)
    batch = {"image": x0, "image_embed": z, "text_tokens": text.tokens, "text_mask": text.mask}
    losses, w0 = [], dec.text_xf.inp.weight.detach().clone()
    for _ in range(12):
        loss = dec.loss(dict(batch, generator=torch.Generator().manual_seed(0)))["loss"]
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0], losses
    # the zero-initialised U-Net output passes no gradient at first; by now it reaches the transformer
    assert not torch.allclose(dec.text_xf.inp.weight, w0)


def test_text_transformer_decoder_round_trips(tmp_path):
    dec = _randomised(tiny_decoder(text_transformer=XF))
    path = save_pretrained(dec, tmp_path / "dec.safetensors")
    back = load_pretrained(path).eval()
    assert back.config.text_transformer == XF
    z, text = cond(2)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    torch.testing.assert_close(back(x, t, z, text.tokens, text.mask), dec(x, t, z, text.tokens, text.mask),
                               atol=0, rtol=0)


def test_option_off_keeps_the_plain_text_path():
    """text_transformer=None (the default): no text_xf keys, and the decoder computes exactly the
    plain path (text_proj of the CLIP token features as the context), as decoders trained before
    the option do."""
    dec = _randomised(tiny_decoder())
    assert dec.config.text_transformer is None and dec.text_xf is None
    assert not any(k.startswith("text_xf.") for k in dec.state_dict())
    z, text = cond(2)
    x, t = torch.randn(2, 3, dec.image_size, dec.image_size), torch.tensor([10, 600])
    by_hand = dec.unet(x, t, cond=z, context=dec.text_proj(text.tokens), context_mask=~text.mask)
    torch.testing.assert_close(dec(x, t, z, text.tokens, text.mask), by_hand, atol=0, rtol=0)


def test_shipped_decoder_has_the_text_path_its_recipe_names():
    """The shipped decoder was trained by the recipe in its recipe.json (none: the default recipe,
    no text transformer): without one it computes exactly the plain path; with one, GLIDE's text
    transformer of that depth and width, sampling with its own text guidance scale."""
    import json

    from dalle2_fast.pipeline import shipped_weights_dir

    d = shipped_weights_dir()
    if d is None:
        pytest.skip("no shipped weights in this build")
    rec = json.loads((d / "recipe.json").read_text()) if (d / "recipe.json").is_file() else {}
    dec = load_pretrained(d / "decoder.safetensors").eval()
    c, xf = dec.config, dec.config.text_transformer
    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(2, c.clip_dim, generator=g), dim=-1)
    mask = torch.zeros(2, c.text_len, dtype=torch.bool)
    mask[:, :5] = True
    text = TextEncoding(torch.randn(2, c.text_len, c.text_width, generator=g), mask, z)
    x, t = torch.randn(2, 3, dec.image_size, dec.image_size, generator=g), torch.tensor([10, 600])
    if not rec.get("decoder_text_layers"):
        assert xf is None and dec.text_xf is None
        assert not any(k.startswith("text_xf.") for k in dec.state_dict())
        by_hand = dec.unet(x, t, cond=z, context=dec.text_proj(text.tokens), context_mask=~mask)
        torch.testing.assert_close(dec(x, t, z, text.tokens, mask), by_hand, atol=0, rtol=0)
    else:
        assert (xf.layers, xf.width) == (rec["decoder_text_layers"], rec["decoder_text_width"])
    a = dec.sample(z, text, seeds=[0, 1], steps=2, guidance=3.0)
    b = dec.sample(z, text, seeds=[0, 1], steps=2, guidance=3.0, text_guidance=6.0)
    assert a.shape == b.shape == (2, 3, dec.image_size, dec.image_size)
    assert not torch.equal(a, b)  # the caption's scale is its own


# ---- separate guidance scales for z_i and the caption (SplitGuidance) ---------------------------
@pytest.mark.parametrize("variant", ["plain", "text_transformer", "empty_prompt"])
def test_decoder_split_guidance(variant):
    from dalle2_fast.diffusion import ClassifierFreeGuidance, SplitGuidance

    kw = {"plain": {}, "text_transformer": {"text_transformer": XF},
          "empty_prompt": {"uncond": "empty_prompt", "text_drop_prob": 0.0, "null_image_embed": "learned"}}[variant]
    dec = _randomised(tiny_decoder(**kw))
    z, text = cond(3, seed=5)
    text.mask[2, 1:] = False
    null = None
    if variant == "empty_prompt":
        nm = torch.zeros(1, L, dtype=torch.bool)
        nm[:, :2] = True
        null = TextEncoding(torch.randn(1, L, W), nm, z[:1])
    run = dict(seeds=[1, 2, 3], steps=3, null_text=null)
    one = dec.sample(z, text, guidance=3.0, **run)
    # equal scales: the one-scale path, bit for bit
    assert torch.equal(dec.sample(z, text, guidance=3.0, text_guidance=3.0, **run), one)
    # different scales: three branches, cached context equal to the uncached one
    a = dec.sample(z, text, guidance=1.0, text_guidance=5.0, **run)
    b = dec.sample(z, text, guidance=1.0, text_guidance=5.0, context_cache=False, **run)
    torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
    assert not torch.allclose(a, one, atol=1e-3)
    # the three-branch denoiser at equal scales is the two-branch one to rounding
    k = dec._kwargs(z, *dec._text(text), null_text=null)
    cap, nul = dec._null_branches(k, null)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([30, 500, 980])
    torch.testing.assert_close(SplitGuidance(dec, 3.0, 3.0, cap, nul)(x, t, **k),
                               ClassifierFreeGuidance(dec, 3.0, nul)(x, t, **k), atol=2e-5, rtol=2e-5)
    # no caption: the caption's scale has nothing to act on, z_i's scale alone guides
    assert torch.equal(dec.sample(z, None, guidance=2.0, text_guidance=6.0, **run),
                       dec.sample(z, None, guidance=2.0, **run))
