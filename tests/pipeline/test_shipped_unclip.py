"""The weights shipped in the package (skipped in a build that ships none)."""
import pytest
import torch

from dalle2_fast.pipeline import UnCLIPPipeline, shipped_weights_dir

pytestmark = [
    pytest.mark.skipif(shipped_weights_dir() is None, reason="this build ships no unCLIP weights"),
    pytest.mark.usefixtures("one_thread"),
]


@pytest.fixture(scope="module")
def pipe():
    return UnCLIPPipeline.from_pretrained()


def test_shipped_size_under_40mb():
    total = sum(f.stat().st_size for f in shipped_weights_dir().rglob("*") if f.is_file())
    assert total < 40 * 2**20, total


def test_two_image_sample(pipe):
    imgs = pipe(["a red circle", "a blue square"], seed=0, decoder_steps=10, upsampler_steps=4)
    assert imgs.shape[0] == 2 and imgs.shape[1] == 3 and 0 <= imgs.min() and imgs.max() <= 1


def test_prior_lands_near_the_clip_image_embedding(pipe):
    from dalle2_fast.data.shapes import ShapesDataset

    b = ShapesDataset(resolution=32, seed=12345, size=32, max_objects=1).batch(0, 32)
    zi = pipe.clip.encode_image(b["image"])
    t = pipe.clip.encode_text(b["caption"])
    z = pipe.prior.sample(t, seeds=range(32), steps=16)
    own = (z * zi).sum(-1)                    # cos to the embedding of the image with that caption
    other = (z * zi.roll(1, 0)).sum(-1)       # ... and to another image's
    assert own.mean() > other.mean() + 0.1, (own.mean(), other.mean())
