"""Inpainting through every pixel diffusion model's ``sample`` (suite DiffusionModel, unCLIP
decoder, upsampler, residual upsampler): the kept pixels come back exactly, the hole is
sampled, RePaint's jumps go through the same path, and the seed rule holds."""
import pytest
import torch

from dalle2_fast.diffusion.gaussian import DiffusionConfig
from dalle2_fast.models.diffusion_model import DiffusionModel, DiffusionModelConfig
from dalle2_fast.models.unet import UNetConfig
from tests.models.test_decoder import cond, tiny_decoder, tiny_upsampler

pytestmark = pytest.mark.usefixtures("one_thread")


def _known_mask(b, size, channels=3):
    g = torch.Generator().manual_seed(3)
    known = torch.rand(b, channels, size, size, generator=g) * 2 - 1
    mask = torch.ones(1, 1, size, size)
    mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 0  # a hole in the middle
    return known, mask


def _check(out, known, mask):
    keep = mask.expand_as(out).bool()
    assert torch.equal(out[keep], known.expand_as(out)[keep])
    assert not torch.equal(out[~keep], known.expand_as(out)[~keep])


@pytest.mark.parametrize("jumps", [None, (2, 2)])
def test_suite_diffusion_model(jumps):
    unet = UNetConfig(image_size=8, in_channels=3, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                      attention_resolutions=(4,), num_heads=2, num_groups=4)
    torch.manual_seed(0)
    dm = DiffusionModel(DiffusionModelConfig(unet=unet, diffusion=DiffusionConfig(num_timesteps=20))).eval()
    known, mask = _known_mask(3, 8)
    for sampler in ("ddpm", "ddim", "dpmpp"):
        out = dm.sample(seeds=[4, 5, 6], sampler=sampler, steps=5, known=known, mask=mask, jumps=jumps)
        _check(out, known, mask)
    one = dm.sample(seeds=[5], sampler="ddim", steps=5, known=known[1:2], mask=mask, jumps=jumps)
    torch.testing.assert_close(one, dm.sample(seeds=[4, 5, 6], sampler="ddim", steps=5, known=known, mask=mask,
                                              jumps=jumps)[1:2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("jumps", [None, (2, 2)])
def test_decoder(jumps):
    dec = tiny_decoder().eval()
    z, text = cond(2)
    known, mask = _known_mask(2, 16)
    out = dec.sample(z, text, seeds=[0, 1], steps=4, guidance=3.0, known=known, mask=mask, jumps=jumps)
    _check(out, known, mask)
    with pytest.raises(ValueError, match="mask must be"):
        dec.sample(z, text, seeds=[0, 1], steps=2, known=known, mask=mask[..., :8])
    with pytest.raises(ValueError, match="jumps"):
        dec.sample(z, text, seeds=[0, 1], steps=2, jumps=(2, 2))


@pytest.mark.parametrize("residual", [False, True])
def test_upsampler(residual):
    up = tiny_upsampler(residual).eval()
    lr = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    known, mask = _known_mask(2, 32)
    out = up.sample(lr, seeds=[0, 1], steps=3, known=known, mask=mask)
    _check(out, known, mask)
    out = up.sample(lr, seeds=[0, 1], steps=3, known=known, mask=mask, jumps=(1, 2))
    _check(out, known, mask)


def test_widened_decoder_starts_as_the_original_and_trains_on_masks():
    """widen_for_inpainting: zero weights on the 4 new input channels, so the mask-conditioned copy
    gives the original's output whatever the conditioning; its loss needs the fill mask; sampling
    takes inpaint_image; configs are checked."""
    from dalle2_fast.models.decoder import DecoderConfig, UnCLIPDecoder, widen_for_inpainting

    dec = tiny_decoder().eval()
    with torch.no_grad():  # a "trained" decoder: no zero-initialised layers left (they stop every gradient)
        for p in dec.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(p.numel()))
    wide = widen_for_inpainting(dec).eval()
    assert wide.config.inpaint and wide.config.unet.low_res_channels == 4
    z, text = cond(2)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 70])
    kw = dec._kwargs(z, text.tokens, text.mask)
    known, mask = _known_mask(2, 16)
    c = wide.inpaint_condition(known, mask)
    assert c.shape == (2, 4, 16, 16) and torch.equal(c[:, 3:], mask.expand(2, 1, 16, 16))
    torch.testing.assert_close(wide(x, t, **kw, inpaint_image=c), dec(x, t, **kw), rtol=0, atol=1e-6)
    batch = {"image": known, "image_embed": z, "text_tokens": text.tokens, "text_mask": text.mask,
             "fill": 1 - mask.expand(2, 1, 16, 16), "seeds": None}
    batch.pop("seeds")
    loss = wide.loss(batch)["loss"]
    loss.backward()
    first = next(p for n, p in wide.named_parameters() if p.dim() == 4 and p.shape[1] == 7)
    assert first.grad[:, 3:].abs().sum() > 0  # the new channels learn
    with pytest.raises(ValueError, match="fill"):
        wide.loss({k: v for k, v in batch.items() if k != "fill"})
    with pytest.raises(ValueError, match="inpaint_image"):
        wide(x, t, **kw)
    out = wide.sample(z, text, seeds=[0, 1], steps=2, inpaint_image=c)
    assert out.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="low_res_channels=4"):
        UnCLIPDecoder(DecoderConfig(**{**dec.config.__dict__, "inpaint": True}))
    with pytest.raises(ValueError, match="already"):
        widen_for_inpainting(wide)
