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


def test_batch_job_with_fast_convs(tmp_path):
    """--images-dir with --fast-convs: the PNGs are the fast pipeline's images, the job records the
    choice, and resuming it without the flag is refused (it changes the floating-point results)."""
    import numpy as np
    from PIL import Image

    from dalle2_fast.data.images import to_uint8

    argv = ["sample", "a yellow star", "-n", "2", "--batch-size", "2", "--seed", "4", "--quiet", "--prior-steps", "3",
            "--decoder-steps", "3", "--upsampler-steps", "2", "--images-dir", str(tmp_path / "o")]
    assert cli_main([*argv, "--fast-convs"]) == 0
    pipe = UnCLIPPipeline.from_pretrained().fast_convs()
    with torch.no_grad():
        ref = [g.image for b in pipe.iter_images("a yellow star", 2, seed=4, batch_size=2, prior_steps=3,
                                                 decoder_steps=3, upsampler_steps=2) for g in b]
    for k, img in enumerate(ref):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "o" / f"{k:06d}.png")), to_uint8(img))
    assert '"convs": "winograd"' in (tmp_path / "o" / "job.json").read_text()
    with pytest.raises(ValueError, match=r"runtime.convs"):
        cli_main(argv)
