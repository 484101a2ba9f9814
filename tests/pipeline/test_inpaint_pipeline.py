"""UnCLIPPipeline.inpaint / outpaint on the tiny pipeline: kept pixels exact at the output size
(and after 8-bit quantisation), the seed rule, batching, the documented edge cases (all-zero
mask -> the input, all-one -> plain generation) and bad input naming the argument."""
import pytest
import torch

from dalle2_fast.inpainting import box_mask, outpaint_canvas
from tests._tiny_pipeline import tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = dict(prior_steps=2, decoder_steps=3, upsampler_steps=1)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def _image(s=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, s, s, generator=g) * 2 - 1


def test_inpaint_keeps_pixels_and_follows_the_seed_rule(pipe):
    img = _image(pipe.image_size)
    fill = box_mask((8, 4, 24, 20), (32, 32))
    out = pipe.inpaint(img, fill, "a red circle", n=3, seed=7, jumps=(1, 2), batch_size=2, **FAST)
    assert out.shape == (3, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    keep = (fill == 0).expand(3, 3, 32, 32)
    want = ((img + 1) / 2).clamp(0, 1).expand(3, 3, 32, 32)
    assert torch.equal(out[keep], want[keep])
    assert not torch.equal(out[~keep], want[~keep])
    one = pipe.inpaint(img, fill, "a red circle", n=1, seed=8, jumps=(1, 2), **FAST)
    torch.testing.assert_close(one[0], out[1], atol=1e-5, rtol=0)  # image k is seed + k
    plain = pipe.inpaint(img, fill, "a red circle", n=1, seed=8, jumps=None, **FAST)
    assert torch.equal(plain[0][keep[0]], want[0][keep[0]])


def test_other_sizes_edge_cases_and_outpaint(pipe):
    img = _image(16)  # resized to the pipeline's 32
    fill = torch.zeros(16, 16)
    same = pipe.inpaint(img, fill, "a blue square", n=2, **FAST)  # nothing to fill: the input
    assert same.shape == (2, 3, 32, 32) and torch.equal(same[0], same[1])
    every = pipe.inpaint(_image(), torch.ones(32, 32), "a blue square", n=2, seed=3, **FAST)
    torch.testing.assert_close(every, pipe(["a blue square"], 2, seed=3, **FAST))  # plain generation
    out = pipe.outpaint(_image(), "right", 8, "a green star", n=1, **FAST)
    want = ((_image() + 1) / 2).clamp(0, 1)
    assert torch.equal(out[0, :, :, :24], want[:, :, 8:])
    canvas, f = outpaint_canvas(_image()[None], "up", 5)
    assert f[0, 0, :5].all() and not f[0, 0, 5:].any() and torch.equal(canvas[0, :, 5:], _image()[:, :27])


def test_bad_input(pipe):
    img, fill = _image(), box_mask((0, 0, 8, 8), (32, 32))
    cases = [
        (dict(mask=torch.ones(16, 32)), "mask must have the image's size"),
        (dict(mask=fill * 0.5), "mask must be binary"),
        (dict(mask="m.png"), "mask must be a tensor"),
        (dict(image=img * 3), "image must be in"),
        (dict(image=img[:1]), "image must be"),
        (dict(image=torch.cat([img, img[:1]])), "image must be"),
        (dict(method="glide"), "method must be one of"),
        (dict(method="conditioned"), "mask-conditioned decoder"),
        (dict(jumps=(0, 2)), "jump_length"),
        (dict(jumps=5), "jumps must be"),
        (dict(n=0), "n must be"),
        (dict(prompt=""), "prompt must be"),
        (dict(decoder_steps=0), "decoder_steps"),
        (dict(nonsense=1), "unknown options"),
    ]
    for over, msg in cases:
        kw = dict(image=img, mask=fill, prompt="a red circle", n=1, **FAST)
        kw.update(over)
        with pytest.raises(ValueError, match=msg):
            pipe.inpaint(kw.pop("image"), kw.pop("mask"), kw.pop("prompt"), **kw)
    with pytest.raises(ValueError, match="direction"):
        pipe.outpaint(img, "north", 4, "a red circle")
    with pytest.raises(ValueError, match="pixels"):
        pipe.outpaint(img, "left", 32, "a red circle")
    with pytest.raises(ValueError, match="box"):
        box_mask((4, 4, 2, 8), (32, 32))
