"""UnCLIPPipeline.fast_convs(): the image stages' 3x3 convolutions by Winograd's F(4x4, 3x3)
(nn.winograd_convs) on the shipped weights: they do run that way, the images stay those of the
default path to Winograd's rounding, and the CLI's --fast-convs reaches the pipeline."""
import pytest
import torch

from dalle2_fast import _ext
from dalle2_fast.cli import main as cli_main
from dalle2_fast.nn import winograd
from dalle2_fast.pipeline import UnCLIPPipeline

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not _ext.loaded(), reason="C++ extension not built")]
STEPS = dict(prior_steps=4, decoder_steps=4, upsampler_steps=2)


def _counted(monkeypatch) -> list:
    calls = []
    real = winograd._run
    monkeypatch.setattr(winograd, "_run", lambda x, u, b: calls.append(tuple(x.shape)) or real(x, u, b))
    return calls


def test_fast_convs_draw_the_same_images(monkeypatch):
    prompts = ["a red circle", "a small blue square"]
    want = UnCLIPPipeline.from_pretrained()(prompts, seed=5, **STEPS)
    calls = _counted(monkeypatch)
    pipe = UnCLIPPipeline.from_pretrained().fast_convs()
    assert pipe.winograd
    got = pipe(prompts, seed=5, **STEPS)
    assert len(calls) > 20  # decoder and upsamplers
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=5e-3, rtol=0)
    calls.clear()
    pipe.fast_convs(False)(prompts[:1], seed=5, **STEPS)
    assert not calls


def test_cli_fast_convs(monkeypatch, tmp_path):
    calls = _counted(monkeypatch)
    out = tmp_path / "a.png"
    assert cli_main(["sample", "a green triangle", "-n", "1", "--fast-convs", "--decoder-steps", "3",
                     "--upsampler-steps", "2", "--prior-steps", "3", "-o", str(out), "--quiet"]) == 0
    assert out.stat().st_size > 100 and calls
