"""Fixtures of the service tests: the tiny random unCLIP pipeline (real networks, one thread) and
a stub pipeline (instant, per-seed images) for the fault and load tests that need a server whose
timing the test controls. Every server listens on a free loopback port."""
import time
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("starlette", reason="the service needs starlette (a dependency of dalle2_fast)")
pytest.importorskip("uvicorn", reason="the service needs uvicorn (a dependency of dalle2_fast)")
pytest.importorskip("multipart", reason="the service needs python-multipart (a dependency of dalle2_fast)")

from dalle2_fast.seeding import per_sample_randn  # noqa: E402
from tests._tiny_pipeline import tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def tiny_pipe():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return tiny_pipeline()
    finally:
        torch.set_num_threads(n)


class StubPipeline:
    """The pipeline interface the service uses, drawing an 8x8 image from each seed (and from the
    prompt's length, so prompts differ) after ``delay`` seconds per batch; a prompt containing
    ``fail_on`` makes its batch raise; ``batch_dependent``: the images change (slightly) with the
    batch size, as floating-point results can on the CPU."""

    image_size = 8
    device = torch.device("cpu")
    DEFAULTS = dict(prior_steps=2, decoder_steps=2, upsampler_steps=1, prior_guidance=1.0, decoder_guidance=1.0)

    def __init__(self, delay: float = 0.0, fail_on: str | None = None, batch_dependent: bool = False):
        self.delay, self.fail_on, self.batch_dependent = delay, fail_on, batch_dependent
        self.drawn = []  # seeds of every image drawn (padding included)
        self.clip = SimpleNamespace(encode_image=lambda x: x.float().mean((2, 3)))

    def settings(self, **o):
        return {k: (self.DEFAULTS[k] if o.get(k) is None else o[k]) for k in self.DEFAULTS}

    def text_to_embeddings(self, prompts, seeds, prior_steps=None, prior_guidance=None):
        if self.fail_on and any(self.fail_on in p for p in prompts):
            raise RuntimeError(f"stub failure on {self.fail_on!r}")
        return None, torch.tensor([[float(len(p))] * 3 for p in prompts])

    def decode_embeddings(self, z, text, seeds, decoder_steps=None, upsampler_steps=None, decoder_guidance=None):
        time.sleep(self.delay)
        self.drawn.extend(seeds)
        x = per_sample_randn(seeds, (3, 8, 8)) + z[:, :, None, None] * 0.01
        if self.batch_dependent:  # as a CPU kernel chosen per shape can: results move with the batch size
            x = x + 0.02 * len(seeds)
        return x.tanh()


@pytest.fixture
def stub():
    return StubPipeline
