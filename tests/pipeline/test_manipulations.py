"""The paper's manipulations on the shipped pipeline (dalle2_fast.manipulations): DDIM inversion
over the strided steps reconstructs the input (PSNR bars set from measurements, with margin),
text diffs start at that reconstruction, variations and interpolations from inverted latents,
and the pipeline's stage options (split guidance, samplers) checked and passed through."""
import pytest
import torch
import torch.nn.functional as F

from dalle2_fast.manipulations import invert_images, slerp_latents
from dalle2_fast.pipeline import UnCLIPPipeline, inversion_steps, shipped_weights_dir

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(shipped_weights_dir() is None, reason="no shipped weights in this build")]
FAST = dict(decoder_steps=4, upsampler_steps=1)


@pytest.fixture(scope="module")
def pipe():
    return UnCLIPPipeline.from_pretrained(None)


@pytest.fixture(scope="module")
def images():
    """Two shapes images at the final size (128) and at the decoder's (32), in [-1, 1]."""
    from dalle2_fast.data.shapes import ShapesDataset

    x = ShapesDataset(resolution=128, seed=123, size=2).batch(0, 2)["image"]
    return x, F.interpolate(x, size=(32, 32), mode="bicubic", antialias=True).clamp(-1, 1)


def psnr(a, b):
    return 10 * torch.log10(4 / ((a.clamp(-1, 1) - b) ** 2).mean(dim=(1, 2, 3)))


# Measured on this machine (benchmarks/results/cpu-xeon-2core/unclip-manipulations/README.md), 15
# strided steps: 29.5 dB (guidance 1) and 20.8 dB (guidance 3) over 8 images; the even spacing,
# which ends at t = T - 1 (abar 2.4e-9), 5.8 dB. The bars leave ~5 dB of margin.
@pytest.mark.parametrize("guidance, bar", [(1.0, 24.0), (3.0, 16.0)])
def test_inversion_reconstructs_the_input(pipe, images, guidance, bar):
    x = images[1]
    dec = pipe.decoder
    z = pipe._image_embed(images[0])
    steps = inversion_steps(15)
    x_T = dec.invert(x, z, None, steps=steps, guidance=guidance)
    back = dec.sample(z, None, seeds=[0, 1], steps=steps, guidance=guidance, x_T=x_T, eta=0.0, clip=None,
                      sampler="ddim")
    assert bool((psnr(back, x) > bar).all()), psnr(back, x)
    if guidance == 1.0:  # the pitfall the strided steps avoid: the even spacing's last step at t = T - 1
        x_T = dec.invert(x, z, None, steps=15, guidance=guidance)
        bad = dec.sample(z, None, seeds=[0, 1], steps=15, guidance=guidance, x_T=x_T, eta=0.0, clip=None,
                         sampler="ddim")
        assert bool((psnr(bad, x) < 12.0).all()), psnr(bad, x)


def test_text_diff_starts_at_the_reconstruction(pipe, images):
    x = images[0][0]
    frames = pipe.text_diff(x, "a shape", "a blue shape", n=2, max_angle=0.5, seed=3, **FAST)
    z = pipe._image_embed(x[None])
    x_T = invert_images(pipe, x[None], z, FAST)
    first = pipe.decode_embeddings(z, None, [3], x_T=x_T, **FAST)
    torch.testing.assert_close(frames[:1], ((first + 1) / 2).clamp(0, 1), atol=2e-4, rtol=0)  # batch-size rounding
    assert not torch.allclose(frames[0], frames[1], atol=1e-3)
    assert psnr(frames[:1] * 2 - 1, images[0][:1]) > 12  # through the upsamplers, 4 decoder steps
    old = pipe.text_diff(x, "a shape", "a blue shape", n=2, seed=3, invert=False, **FAST)
    assert not torch.allclose(old, frames, atol=1e-3)


def test_variations_from_the_inverted_latent(pipe, images):
    x = images[0][0]
    base = UnCLIPPipeline(pipe.clip, pipe.prior, pipe.decoder, [])  # the decoder's images (no upsampler noise)
    same = base.variations(x, n=2, seed=0, eta=0.0, **FAST)  # eta 0: the reconstruction, twice
    torch.testing.assert_close(same[0], same[1], atol=2e-4, rtol=0)  # batch-size rounding
    assert psnr(same * 2 - 1, images[1][:1]).min() > 15
    varied = base.variations(x, n=2, seed=0, **FAST)  # eta 1 by default: new noise per seed
    assert not torch.allclose(varied[0], varied[1], atol=1e-3)
    varied = pipe.variations(x, n=2, seed=0, **FAST)
    assert not torch.allclose(varied[0], varied[1], atol=1e-3)
    fresh = pipe.variations(x, n=2, seed=0, latent="noise", **FAST)
    assert not torch.allclose(fresh, varied, atol=1e-3)
    with pytest.raises(ValueError, match="latent must be one of"):
        pipe.variations(x, n=1, latent="inverse")
    with pytest.raises(ValueError, match="eta must be"):
        pipe.variations(x, n=1, eta=-1.0)


def test_interpolation_of_inverted_latents_ends_at_the_inputs(pipe, images):
    xa, xb = images[0][0], images[0][1]
    frames = pipe.interpolate(xa, xb, n=3, seed=1, latent="inverted", **FAST)
    z = pipe._image_embed(images[0])
    lat = invert_images(pipe, images[0], z, FAST)
    ends = pipe.decode_embeddings(z, None, [1, 1], x_T=lat, **FAST)
    torch.testing.assert_close(frames[[0, 2]], ((ends + 1) / 2).clamp(0, 1), atol=2e-4, rtol=0)  # batch-size rounding


def test_slerp_latents():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 3, 5, 7, generator=g), 2 * torch.randn(1, 3, 5, 7, generator=g)
    out = slerp_latents(a, b, torch.tensor([0.0, 0.5, 1.0]))
    torch.testing.assert_close(out[0], a[0])
    torch.testing.assert_close(out[2], b[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1].norm(), (a.norm() + b.norm()) / 2, rtol=1e-5, atol=1e-5)


def test_stage_options(pipe):
    run = dict(seed=2, prior_steps=2, **FAST)
    base = pipe("a blue star", **run)
    # one scale given twice: the one-scale path, bit for bit
    assert torch.equal(pipe("a blue star", decoder_image_guidance=3.0, decoder_text_guidance=3.0, **run), base)
    split = pipe("a blue star", decoder_image_guidance=1.0, decoder_text_guidance=6.0, **run)
    ddpm = pipe("a blue star", decoder_sampler="ddpm", upsampler_sampler="ddpm", **run)
    for other in (split, ddpm):
        assert other.shape == base.shape and not torch.allclose(other, base, atol=1e-3)
    s = pipe.settings(decoder_sampler="ddpm")
    assert s["decoder_sampler"] == "ddpm" and "upsampler_sampler" not in s
    for bad, match in ((dict(decoder_sampler="euler"), "decoder_sampler must be one of"),
                       (dict(decoder_text_guidance=-1.0), "decoder_text_guidance must be"),
                       (dict(decoder_sampling="ddpm"), "unknown options")):
        with pytest.raises(ValueError, match=match):
            pipe("a blue star", **run, **bad)
    z = pipe._image_embed(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="decoded with DDIM"):
        pipe.decode_embeddings(z, None, [0], x_T=torch.randn(1, 3, 32, 32), decoder_sampler="ddpm", **FAST)
