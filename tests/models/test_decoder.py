"""unCLIP decoder and upsamplers on tiny U-Nets: shapes, conditioning paths, a training step,
per-seed sampling, checkpoints, and the whole pipeline saved and loaded."""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("dalle2_fast.models.unet")
pytest.importorskip("dalle2_fast.diffusion")

from dalle2_fast.models.clip import TextEncoding  # noqa: E402
from dalle2_fast.models.decoder import DecoderConfig, UnCLIPDecoder  # noqa: E402
from dalle2_fast.checkpoint import load_pretrained, save_pretrained  # noqa: E402
from dalle2_fast.models.unet import UNetConfig  # noqa: E402
from dalle2_fast.models.upsampler import UnCLIPUpsampler, UpsamplerConfig  # noqa: E402

D, L, W = 16, 6, 8


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_decoder(**kw):
    u = UNetConfig(image_size=16, in_channels=3, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(8,), num_head_channels=16, learn_sigma=True, use_scale_shift_norm=True,
                   resblock_updown=True, cond_dim=D, context_dim=32, cond_tokens=4, num_groups=8)
    torch.manual_seed(0)
    return UnCLIPDecoder(DecoderConfig(unet=u, clip_dim=D, text_width=W, text_len=L, **kw))


def tiny_upsampler(residual=False):
    u = UNetConfig(image_size=32, in_channels=3, low_res_channels=3, model_channels=16, channel_mult=(1, 2),
                   num_res_blocks=1, attention_resolutions=(), num_groups=8)
    torch.manual_seed(0)
    return UnCLIPUpsampler(UpsamplerConfig(unet=u, low_res=16, high_res=32, residual=residual))


def cond(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, D, generator=g), dim=-1)
    mask = torch.ones(b, L, dtype=torch.bool)
    mask[:, 4:] = False
    return z, TextEncoding(torch.randn(b, L, W, generator=g), mask, z)


def test_decoder_config_checks():
    u = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(8,),
                   learn_sigma=True, cond_dim=D + 1, context_dim=32, cond_tokens=4, num_groups=8)
    with pytest.raises(ValueError, match="cond_dim"):
        UnCLIPDecoder(DecoderConfig(unet=u, clip_dim=D))
    with pytest.raises(ValueError, match="cond_tokens"):
        UnCLIPDecoder(DecoderConfig(unet=u.replace(cond_dim=D, cond_tokens=0), clip_dim=D))
    with pytest.raises(ValueError, match="learn_sigma"):
        UnCLIPDecoder(DecoderConfig(unet=u.replace(cond_dim=D, learn_sigma=False), clip_dim=D))


def test_decoder_conditioning_paths():
    dec = tiny_decoder().eval()
    with torch.no_grad():  # zero-initialised residual outputs would hide the conditioning: randomise them
        for p in dec.parameters():
            if not p.any():
                p.normal_(std=0.1)
    z, text = cond(3)
    x = torch.randn(3, 3, 16, 16)
    t = torch.tensor([10, 500, 900])
    out = dec(x, t, z, text.tokens, text.mask)
    assert out.shape == (3, 6, 16, 16)  # eps and the learned-variance channels
    assert dec.unet.config.cond_tokens == 4  # z_i also enters as 4 context tokens (added by the U-Net)
    # padded caption tokens are ignored
    tok2 = text.tokens.clone()
    tok2[:, 4:] = 50.0
    torch.testing.assert_close(dec(x, t, z, tok2, text.mask), out)
    # z_i reaches the output through both paths (cond and context tokens)
    assert not torch.allclose(dec(x, t, -z, text.tokens, text.mask), out)
    # the caption matters when present, and not at all when dropped (mask all False)
    none = torch.zeros_like(text.mask)
    assert not torch.allclose(dec(x, t, z, text.tokens * 2, text.mask), out)
    torch.testing.assert_close(dec(x, t, z, text.tokens, none), dec(x, t, z, text.tokens * 2, none))


def test_decoder_training_step_lowers_loss_on_a_fixed_batch():
    dec = tiny_decoder(clip_drop_prob=0.0, text_drop_prob=0.0)
    z, text = cond(8)
    x0 = torch.tanh(torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    opt = torch.optim.Adam(dec.parameters(), lr=2e-3)
    first = None
    batch = {"image": x0, "image_embed": z, "text_tokens": text.tokens, "text_mask": text.mask}
    for i in range(15):
        loss = dec.loss(dict(batch, generator=torch.Generator().manual_seed(0)))["loss"]  # same t and noise
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.8 * first, (first, float(loss.detach()))


def test_decoder_sampling_is_per_seed_and_guided():
    dec = tiny_decoder().eval()
    z, text = cond(4)
    out = dec.sample(z, text, seeds=range(4), steps=4, guidance=3.0)
    assert out.shape == (4, 3, 16, 16) and out.abs().max() <= 1
    split = torch.cat([dec.sample(z[:1], TextEncoding(text.tokens[:1], text.mask[:1], z[:1]), seeds=[0], steps=4,
                                  guidance=3.0),
                       dec.sample(z[1:], TextEncoding(text.tokens[1:], text.mask[1:], z[1:]), seeds=[1, 2, 3],
                                  steps=4, guidance=3.0)])
    torch.testing.assert_close(split, out, atol=1e-5, rtol=0)
    assert dec.sample(z, None, seeds=range(4), steps=4, guidance=1.0).shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="text tokens"):
        dec.sample(z, TextEncoding(text.tokens[:, :3], text.mask[:, :3], z), seeds=range(4), steps=2, guidance=1.0)
    with pytest.raises(ValueError, match="4 seeds"):
        dec.sample(z, text, seeds=range(3), steps=2)


def test_decoder_loss_draws_per_item():
    """Item i's timestep, noise and condition drops come from its own seeds: a batch and its
    halves give the same per-item loss terms (what makes DDP ranks agree)."""
    from dalle2_fast.seeding import ItemSeeds

    dec = tiny_decoder().eval()
    z, text = cond(4)
    x0 = torch.tanh(torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)))

    def loss(sl, start):
        b = {"image": x0[sl], "image_embed": z[sl], "text_tokens": text.tokens[sl], "text_mask": text.mask[sl],
             "seeds": ItemSeeds(7, start, len(x0[sl]))}
        return dec.loss(b)["loss"]

    whole = loss(slice(0, 4), 0)
    halves = (loss(slice(0, 2), 0) + loss(slice(2, 4), 2)) / 2
    torch.testing.assert_close(whole, halves, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(whole, loss(slice(0, 4), 100))  # other items, other draws


def test_upsampler_has_no_attention_and_trains_on_crops():
    up = tiny_upsampler()
    assert not any("Attention" in type(m).__name__ for m in up.modules())
    hr = torch.tanh(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    crop = hr[:, :, 8:24, 4:20]  # 16 x 16 crops of the 32 x 32 images, with their 8 x 8 low-res
    opt = torch.optim.Adam(up.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = up.loss({"image": crop, "low_res": F.avg_pool2d(crop, 2),
                        "generator": torch.Generator().manual_seed(3)})["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses
    # convolutional: the same weights run on the full 16 -> 32 image
    lr = F.avg_pool2d(hr, 2)
    out = up.sample(lr, seeds=range(4), steps=3)
    assert out.shape == (4, 3, 32, 32) and out.abs().max() <= 1
    torch.testing.assert_close(up.sample(lr[2:], seeds=[2, 3], steps=3), out[2:], atol=1e-5, rtol=0)


def test_residual_upsampler_adds_the_bicubic_base():
    up = tiny_upsampler(residual=True).eval()
    lr = torch.tanh(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)))
    with torch.no_grad():
        for p in up.parameters():
            p.zero_()  # a model that predicts x0 = 0 (eps 0 at every step) draws nothing on top of the base
    out = up.sample(lr, seeds=[0, 1], steps=2)
    assert out.shape == (2, 3, 32, 32) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="low_res x 2"):
        up.loss({"image": torch.zeros(2, 3, 32, 32), "low_res": torch.zeros(2, 3, 15, 15)})


def test_upsampler_config_checks():
    u = UNetConfig(image_size=32, in_channels=3, low_res_channels=3, model_channels=16, channel_mult=(1, 2),
                   attention_resolutions=(), num_groups=8)
    with pytest.raises(ValueError, match="multiple"):
        UnCLIPUpsampler(UpsamplerConfig(unet=u, low_res=12, high_res=32))
    with pytest.raises(ValueError, match="attention"):
        UnCLIPUpsampler(UpsamplerConfig(unet=u.replace(attention_resolutions=(16,))))


def test_checkpoints_round_trip(tmp_path):
    dec, up = tiny_decoder().eval(), tiny_upsampler(residual=True).eval()
    for m, name in ((dec, "d"), (up, "u")):
        back = load_pretrained(save_pretrained(m, tmp_path / f"{name}.safetensors"))
        assert back.config == m.config and type(back) is type(m)
        again = type(m).from_pretrained(m.save_pretrained(tmp_path / f"{name}_dir"))  # directory form
        assert again.config == m.config
        for a, b in zip(m.state_dict().values(), back.state_dict().values()):
            assert torch.equal(a, b)


def test_pipeline_save_load_and_sample(tmp_path):
    from dalle2_fast.models.clip import TINY_SHAPES_MODEL, ClipAdapter, WordTokenizer
    from dalle2_fast.models.prior import DiffusionPrior, DiffusionPriorConfig
    from dalle2_fast.pipeline import UnCLIPPipeline
    from tests._toy_captions import PROMPTS

    torch.manual_seed(0)
    clip = ClipAdapter.create(TINY_SHAPES_MODEL, tokenizer=WordTokenizer.fit(PROMPTS, 128, 24))
    prior = DiffusionPrior(DiffusionPriorConfig(clip_dim=64, text_width=128, text_len=24, width=32, layers=1,
                                                heads=2))
    u = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                   attention_resolutions=(8,), num_head_channels=16, learn_sigma=True, cond_dim=64,
                   context_dim=32, cond_tokens=4, num_groups=8)
    dec = UnCLIPDecoder(DecoderConfig(unet=u, clip_dim=64, text_width=128, text_len=24))
    pipe = UnCLIPPipeline(clip, prior.eval(), dec.eval(), [tiny_upsampler().eval()],
                          defaults=dict(prior_steps=3, decoder_steps=3, upsampler_steps=2))
    pipe.save_pretrained(tmp_path / "p")
    back = UnCLIPPipeline.from_pretrained(tmp_path / "p")
    a = pipe(["a red square", "a blue square on the left"], seed=4)
    assert a.shape == (2, 3, 32, 32)
    torch.testing.assert_close(back(["a red square", "a blue square on the left"], seed=4), a)
    torch.testing.assert_close(pipe(["a blue square on the left"], seed=5, batch_size=1), a[1:], atol=1e-5, rtol=0)
    x = a[0] * 2 - 1
    assert pipe.variations(x, n=2).shape == (2, 3, 32, 32)
    assert pipe.interpolate(x, a[1] * 2 - 1, n=3).shape == (3, 3, 32, 32)
    assert pipe.text_diff(x, "a red square", "a blue square", n=2, invert=True).shape == (2, 3, 32, 32)


def test_decoder_ddim_inversion_round_trip():
    dec = tiny_decoder().eval()
    z, text = cond(2)
    x0 = dec.sample(z, text, seeds=[0, 1], steps=6, guidance=1.0, eta=0.0, clip="static")
    x_T = dec.invert(x0, z, text, steps=6)
    back = dec.sample(z, text, seeds=[5, 6], steps=6, guidance=1.0, x_T=x_T, eta=0.0, clip="static")
    assert (back - x0).abs().mean() < 0.05, (back - x0).abs().mean()
    with pytest.raises(ValueError, match="invert"):
        dec.invert(x0[:, :, :8], z)
