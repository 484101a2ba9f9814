"""UnCLIPPipeline mechanics with a real tiny CLIP and prior and stand-in decoder / upsampler stages:
seeding per image, batching, CLIP-latent manipulations, persistence of the prior."""
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.models.clip import TINY_SHAPES_MODEL, ClipAdapter, WordTokenizer
from dalle2_fast.checkpoint import CheckpointError, load_pretrained, save_pretrained
from dalle2_fast.models.decoder import UnCLIPDecoder
from dalle2_fast.models.prior import DiffusionPrior, DiffusionPriorConfig
from dalle2_fast.data.images import make_grid
from dalle2_fast.pipeline import UnCLIPPipeline, slerp
from dalle2_fast.seeding import per_sample_randn, stage_seeds
from tests._toy_captions import PROMPTS, toy_batch


pytestmark = pytest.mark.usefixtures("one_thread")


class StubDecoder(nn.Module):
    """z_i -> a 8x8 image (linear map + per-seed noise); records the text it was given."""

    image_size = 8

    def __init__(self, dim):
        super().__init__()
        self.lin = nn.Linear(dim, 3 * 8 * 8)
        self.texts = []

    def sample(self, image_embed, text, *, seeds, steps, guidance, progress=False, **kw):
        self.texts.append(text)
        noise = per_sample_randn(seeds, (3, 8, 8))
        return torch.tanh(self.lin(image_embed).view(-1, 3, 8, 8) + 0.1 * noise)


class StubUpsampler(nn.Module):
    factor = 2

    def sample(self, low_res, *, seeds, steps, progress=False):
        up = F.interpolate(low_res, scale_factor=2, mode="nearest")
        return (up + 0.05 * per_sample_randn(seeds, up.shape[1:])).clamp(-1, 1)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    tok = WordTokenizer.fit(PROMPTS, 128, 24)
    clip = ClipAdapter.create(TINY_SHAPES_MODEL, tokenizer=tok).eval()
    prior = DiffusionPrior(DiffusionPriorConfig(clip_dim=clip.embed_dim, text_width=clip.text_width,
                                                text_len=clip.context_length, width=32, layers=1, heads=2)).eval()
    return UnCLIPPipeline(clip, prior, StubDecoder(clip.embed_dim), [StubUpsampler()],
                          defaults=dict(prior_steps=4, decoder_steps=2, upsampler_steps=2))


def test_text_to_image_shapes_order_and_batch_independence(pipe):
    prompts = ["a red square on the left", "a blue square on the right", "a green square"]
    out = pipe(prompts, num_images_per_prompt=2, seed=11, batch_size=16)
    assert out.shape == (6, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    # batch size 1 and 4 give the same images (per-image seeds, per-stage derived seeds)
    for bs in (1, 4):
        torch.testing.assert_close(pipe(prompts, num_images_per_prompt=2, seed=11, batch_size=bs), out,
                                   atol=1e-5, rtol=0)
    # image k of a call depends on seed + k only: the 2nd prompt's images alone, from seed 13
    torch.testing.assert_close(pipe(prompts[1], num_images_per_prompt=2, seed=13), out[2:4], atol=1e-5, rtol=0)
    assert not torch.allclose(out[0], out[1])  # two images of one prompt differ
    assert not torch.allclose(pipe(prompts, num_images_per_prompt=2, seed=12), out)


def test_stage_seeds_are_distinct():
    s = stage_seeds(range(4), 1) + stage_seeds(range(4), 2)
    assert len(set(s)) == 8


def test_bad_arguments(pipe):
    with pytest.raises(ValueError, match="prompts"):
        pipe([])
    with pytest.raises(ValueError, match="batch_size"):
        pipe("a red square", batch_size=0)
    with pytest.raises(ValueError, match="unknown default"):
        UnCLIPPipeline(pipe.clip, pipe.prior, pipe.decoder, defaults={"decoder_stepz": 3})
    # every option is checked before any work, naming the argument
    for kw, what in (({"decoder_steps": 0}, "decoder_steps must be an int >= 1"),
                     ({"prior_steps": 2.5}, "prior_steps must be an int"),
                     ({"decoder_guidance": float("nan")}, "decoder_guidance must be a finite number"),
                     ({"prior_guidance": -1.0}, "prior_guidance must be a finite number in"),
                     ({"num_images_per_prompt": 0}, "num_images_per_prompt must be an int >= 1"),
                     ({"seed": -3}, r"seed: expected an integer in \[0, 2\^63 - 1\]")):
        with pytest.raises(ValueError, match=what):
            pipe("a red square", **kw)
    with pytest.raises(ValueError, match="prompts"):
        pipe(["a red square", "  "])
    x = torch.rand(3, 16, 16) * 2 - 1
    for bad, what in ((x[None, :2], r"image must be \(3, H, W\)"), (x.int(), "floating-point"),
                      (x * float("nan"), "finite"), (x * 5, r"in \[-1, 1\]")):
        with pytest.raises(ValueError, match=what):
            pipe.variations(bad, n=1)
    with pytest.raises(ValueError, match="image_b must be"):
        pipe.interpolate(x, x[:2], n=2)
    with pytest.raises(ValueError, match="to_text must be a non-empty string"):
        pipe.text_diff(x, "a red square", "", n=2)
    with pytest.raises(ValueError, match="max_angle"):
        pipe.text_diff(x, "a red square", "a blue square", n=2, max_angle=3.0)
    with pytest.raises(ValueError, match="max_angle"):  # a bool is not an angle
        pipe.text_diff(x, "a red square", "a blue square", n=2, max_angle=True)
    # every manipulation follows the one seed rule and refuses what __call__ refuses
    for call in (lambda: pipe.variations(x, n=1, seed=-1), lambda: pipe.interpolate(x, x, n=2, seed=-1),
                 lambda: pipe.text_diff(x, "a", "b", n=1, seed=-1), lambda: pipe.variations(x, n=1, seed=2**63)):
        with pytest.raises(ValueError, match=r"seed: expected an integer in \[0, 2\^63 - 1\]"):
            call()


def test_slerp():
    g = torch.Generator().manual_seed(0)
    a, b = F.normalize(torch.randn(2, 8, generator=g), dim=-1)
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    m = slerp(a, b, 0.5)
    torch.testing.assert_close((m * a).sum(), (m * b).sum())  # halfway in angle
    ts = torch.linspace(0, 1, 5)[:, None]
    path = slerp(a[None], b[None], ts)
    torch.testing.assert_close(path.norm(dim=-1), torch.ones(5))
    ang = torch.arccos((path[1:] * path[:-1]).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(ang, ang.mean().expand(4), atol=1e-5, rtol=0)  # constant speed
    torch.testing.assert_close(slerp(a, a, 0.3), a)  # parallel: no NaN


def test_variations_interpolation_text_diff(pipe):
    x, _, _ = toy_batch(2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="cannot invert images"):  # a decoder without invert: said so
        pipe.variations(x[0], n=3, seed=5)
    v = pipe.variations(x[0], n=3, seed=5, latent="noise")
    assert v.shape == (3, 3, 16, 16) and not torch.allclose(v[0], v[1])
    assert pipe.decoder.texts[-1] is None  # variations decode without a caption
    it = pipe.interpolate(x[0], x[1], n=4, seed=2)
    assert it.shape == (4, 3, 16, 16)
    za = pipe.clip.encode_image(x[:1])
    ends = pipe.decode_embeddings(torch.cat([za, za]), None, [2, 2])
    torch.testing.assert_close(it[0], ((ends[0] + 1) / 2).clamp(0, 1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="n must be"):
        pipe.interpolate(x[0], x[1], n=1)
    td = pipe.text_diff(x[0], "a red square on the left", "a blue square on the left", n=3, invert=False)
    assert td.shape == (3, 3, 16, 16)
    assert pipe.decoder.texts[-1].embed.shape == (3, pipe.clip.embed_dim)


def test_prior_checkpoint_roundtrip(pipe, tmp_path):
    p = save_pretrained(pipe.prior, tmp_path / "prior.safetensors")
    back = load_pretrained(p)
    assert back.config == pipe.prior.config and isinstance(back, DiffusionPrior)
    t = pipe.clip.encode_text(["a red square"])
    torch.testing.assert_close(back.sample(t, [3], steps=4), pipe.prior.sample(t, [3], steps=4))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "missing.safetensors")
    (tmp_path / "trunc.safetensors").write_bytes(p.read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_pretrained(tmp_path / "trunc.safetensors")
    with pytest.raises(CheckpointError, match="not a UnCLIPDecoder"):  # a prior file where a decoder belongs
        UnCLIPDecoder.from_pretrained(p)
    with pytest.raises(FileNotFoundError, match="unclip.json"):
        UnCLIPPipeline.from_pretrained(tmp_path)


def test_grid():
    imgs = torch.rand(5, 3, 4, 6)
    g = make_grid(imgs, nrow=3)
    assert g.shape == (3, 8, 18)
    torch.testing.assert_close(g[:, 4:8, 0:6], imgs[3])
    gp = make_grid(imgs, nrow=3, pad=1)
    assert gp.shape == (3, 11, 22)
    torch.testing.assert_close(gp[:, 6:10, 1:7], imgs[3])


def test_iter_images_streams_a_call_in_order(pipe):
    """The streaming API yields the same images as __call__, batch by batch, each with its index,
    prompt and seed (seed + k); start/stop select a slice of the call (a shard or a resume)."""
    prompts = ["a red square", "a blue square on the right"]
    whole = pipe(prompts, num_images_per_prompt=3, seed=20)
    got = [g for batch in pipe.iter_images(prompts, 3, seed=20, batch_size=4) for g in batch]
    assert [(g.index, g.prompt, g.seed) for g in got] == [(k, prompts[k // 3], 20 + k) for k in range(6)]
    torch.testing.assert_close(torch.stack([(g.image + 1) / 2 for g in got]).clamp(0, 1), whole)
    part = [g for batch in pipe.iter_images(prompts, 3, seed=20, batch_size=2, start=2, stop=5) for g in batch]
    assert [g.index for g in part] == [2, 3, 4]
    torch.testing.assert_close(torch.stack([(g.image + 1) / 2 for g in part]).clamp(0, 1), whole[2:5],
                               atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="start <= stop"):
        next(pipe.iter_images(prompts, 3, start=4, stop=2))
    assert pipe.settings(decoder_steps=7)["decoder_steps"] == 7 and pipe.image_size == 16
