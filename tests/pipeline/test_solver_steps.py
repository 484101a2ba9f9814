"""The fewer-steps procedure (eval/solver_steps.py) on the tiny random pipeline: stage options
reach the stage calls and are restored, the reference setting against itself is exact (infinite
PSNR, same caption match), candidates are judged on the same seeds, the runner writes its JSON."""
import json
import math

import pytest
import torch

from dalle2_fast.eval.solver_steps import decoder_sweep, psnr, qualifying, stage_options, upsampler_sweep
from tests._tiny_pipeline import save_tiny_pipeline, tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stage_options_reach_the_calls_and_are_restored():
    pipe = tiny_pipeline()
    seen = []
    orig = pipe.decoder.sample

    def spy(*a, **k):
        seen.append(k.get("sampler"))
        return orig(*a, **k)

    pipe.decoder.sample = spy
    with stage_options(pipe, decoder={"sampler": "dpmpp"}, prior={"prefix_cache": False}):
        pipe(["a red circle"], seed=0)
    assert seen == ["dpmpp"] and pipe.decoder.sample is spy and "sample" not in vars(pipe.prior)
    pipe(["a red circle"], seed=0)
    assert seen == ["dpmpp", None]


def test_psnr_and_the_reference_against_itself():
    a = torch.rand(2, 3, 8, 8)
    assert math.isclose(psnr(a, (a + 0.1).clamp(0, 1)), psnr(a, (a + 0.1).clamp(0, 1)))
    assert psnr(a, a) > 100
    pipe = tiny_pipeline()
    res = decoder_sweep(pipe, candidates=[dict(sampler="ddim", eta=1.0, steps=2), dict(sampler="dpmpp", steps=1)],
                        n_per_prompt=1, progress=False)
    same, fewer = res["candidates"]
    assert res["reference"]["n"] == 30 and same["rate"] == res["reference"]["rate"]
    assert same["psnr_db"] > 100 and fewer["psnr_db"] < same["psnr_db"]  # the default (ddim, eta 1) itself
    assert same in qualifying(res, tolerance=0.0)
    ups = upsampler_sweep(pipe, candidates=[dict(steps=1), dict(sampler="dpmpp", steps=2)], n_images=2,
                          progress=False)
    assert ups["upsampler1"]["candidates"][0]["psnr_db"] > 100  # steps=1 is the tiny pipeline's default


def test_runner_writes_json(tmp_path):
    from dalle2_fast.bench import solver_steps

    path = save_tiny_pipeline(tmp_path / "pipe")
    out = tmp_path / "r.json"
    one = '[{"sampler": "dpmpp", "steps": 1}]'
    assert solver_steps.main([str(path), "--out", str(out), "--n-per-prompt", "1", "--skip-upsamplers",
                              "--decoder-candidates", one]) == 0
    back = json.loads(out.read_text())
    assert back["decoder"]["reference"]["n"] == 30 and len(back["decoder"]["candidates"]) == 1
    for bad in (["--n-per-prompt", "0"], ["--decoder-candidates", "[1]"], ["--decoder-candidates", "{"]):
        with pytest.raises(SystemExit):
            solver_steps.main([str(path), "--out", str(out), *bad])
