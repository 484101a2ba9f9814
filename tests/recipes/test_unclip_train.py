"""The ``train unclip`` recipe end to end at micro scale (every stage a task of the one training
loop: checkpoints, resume inside a stage, EMA), stage reuse and splitting, and the caption-match
evaluation."""
import json
from dataclasses import replace

import pytest
import torch

from dalle2_fast.eval.captions import caption_match_rate, eval_prompts, evaluate_pipeline
from dalle2_fast.pipeline import UnCLIPPipeline
from dalle2_fast.recipes.unclip import Stage, UnCLIPRecipe, UpsamplerStage, recipe_from_args, train_unclip

pytestmark = pytest.mark.usefixtures("one_thread")


def micro(seed=0, **kw):
    base = dict(seed=seed, n_train=64, base_res=16, upsample_res=(32,), clip=Stage(3, 16), prior=Stage(3, 16),
                decoder=Stage(2, 4), upsampler=Stage(2, 4), prior_width=32, prior_layers=1, decoder_channels=16,
                upsampler_channels=16)
    return UnCLIPRecipe(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("unclip") / "a"
    return out, train_unclip(micro(), out, progress=False)


def test_recipe_runs_saves_and_is_seed_reproducible(trained, tmp_path):
    out, pipe = trained
    for name, steps in (("clip", 3), ("prior", 3), ("decoder", 2), ("upsampler1", 2)):
        stage = out / "stages" / name
        assert (stage / "loss.csv").read_text().count("\n") == 1 + steps, name  # the loop's files, per stage
        assert (stage / "final").is_dir() and (out / "stages" / f"{name}.json").is_file()
        assert list((stage / "checkpoints").glob("step_*")), name
    back = UnCLIPPipeline.from_pretrained(out / "pipeline")
    kw = dict(prior_steps=2, decoder_steps=2, upsampler_steps=2)
    img = back(["a red circle"], seed=1, **kw)
    assert img.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pipe(["a red circle"], seed=1, **kw), img)
    again = train_unclip(micro(), tmp_path / "b", progress=False)
    for a, b in zip(pipe.decoder.state_dict().values(), again.decoder.state_dict().values()):
        assert torch.equal(a, b)


def test_eval_prompts_are_new_sentences_and_scored(trained):
    from dalle2_fast.data.shapes import ShapesDataset

    seen = set(ShapesDataset(resolution=16, seed=0, size=500).batch(0, 500)["caption"])
    singles, pairs = eval_prompts(), eval_prompts(two_objects=True)
    assert len(singles) == 30 and len(pairs) == 30
    assert not seen & {p for p, _ in singles + pairs}
    res = caption_match_rate(trained[1], singles[:2], n_per_prompt=1, prior_steps=2, decoder_steps=2)
    assert set(res) == {"rate", "colour_rate", "shape_rate", "n"} and res["n"] == 2
    assert 0 <= res["rate"] <= 1


def test_ar_prior_recipe(tmp_path):
    from dalle2_fast.models.prior import AutoregressivePrior

    r = micro(prior_kind="ar", n_train=96)  # the AR quantiser needs >= n_buckets embeddings
    pipe = train_unclip(r, tmp_path / "ar", progress=False)
    assert isinstance(pipe.prior, AutoregressivePrior)
    m = json.loads((tmp_path / "ar" / "stages" / "clip" / "metrics.json").read_text())
    assert set(m["clip_zero_shot"]) == {"colour_and_shape", "colour", "shape", "n"}
    rr = recipe_from_args(seed=3, scale=0.5, max_minutes=10)
    assert rr.seed == 3 and rr.decoder.steps == 2500 and rr.decoder.max_minutes == pytest.approx(6.0)
    with pytest.raises(ValueError, match="prior_kind"):
        micro(prior_kind="gan")


def test_stages_split_across_calls_equal_one_run(trained, tmp_path):
    full = trained[1]
    out = tmp_path / "split"
    assert train_unclip(micro(), out, progress=False, stages=["upsampler1"]) is None  # needs nothing else
    with pytest.raises(RuntimeError, match="needs the CLIP stage"):
        train_unclip(micro(), out, progress=False, stages=["decoder"])
    assert train_unclip(micro(), out, progress=False, stages=["clip", "prior"]) is None
    pipe = train_unclip(micro(), out, progress=False, stages=["decoder"])  # last stage: assembles the pipeline
    assert pipe is not None and (out / "pipeline" / "unclip.json").is_file()
    for part in ("prior", "decoder"):
        for a, b in zip(getattr(full, part).state_dict().values(), getattr(pipe, part).state_dict().values()):
            assert torch.equal(a, b)
    for a, b in zip(full.upsamplers[0].state_dict().values(), pipe.upsamplers[0].state_dict().values()):
        assert torch.equal(a, b)
    # a rerun trains nothing; a changed recipe is refused for the stages it affects
    assert train_unclip(micro(), out, progress=False) is not None
    with pytest.raises(ValueError, match=r"stage 'clip'.*different recipe.*\['clip'\]"):
        train_unclip(replace(micro(), clip=Stage(4, 16)), out, progress=False)
    with pytest.raises(ValueError, match="unknown stages"):
        train_unclip(micro(), out, progress=False, stages=["vae"])


def test_interrupted_stage_resumes_exactly(tmp_path):
    """A decoder stage of 4 steps receives SIGTERM during step 2 (the loop saves a checkpoint and
    exits); the next call resumes the stage from that checkpoint and ends with the weights of an
    uninterrupted run."""
    import os
    import signal

    from dalle2_fast.recipes import unclip as U

    r = micro(decoder=Stage(4, 4))
    straight = train_unclip(r, tmp_path / "s", progress=False)
    out = tmp_path / "i"
    real = U.DecoderStage.step

    def step_then_sigterm(self, model, batch, opts):
        logs = real(self, model, batch, opts)
        if batch["seeds"].start == 4:  # the second batch (4 items each)
            os.kill(os.getpid(), signal.SIGTERM)
        return logs

    U.DecoderStage.step = step_then_sigterm
    try:
        with pytest.raises(SystemExit) as e:
            train_unclip(r, out, progress=False)
    finally:
        U.DecoderStage.step = real
    assert e.value.code == 128 + signal.SIGTERM
    store = U.StageStore(out, r)
    assert not store.done("decoder") and (store.run_dir("decoder") / "checkpoints" / "step_00000002").is_dir()
    pipe = train_unclip(r, out, progress=False)  # resumes the decoder at step 2
    rows = (store.run_dir("decoder") / "loss.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3", "4"]
    for a, b in zip(straight.decoder.state_dict().values(), pipe.decoder.state_dict().values()):
        assert torch.equal(a, b)


def test_stage_ema_keeps_the_average(trained, tmp_path):
    with_ema = train_unclip(micro(decoder=Stage(2, 4, ema=0.5)), tmp_path / "e", progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(with_ema.decoder.state_dict().values(),
                                                      trained[1].decoder.state_dict().values()))
    assert (tmp_path / "e" / "stages" / "decoder" / "final_raw").is_dir()


def test_upsampler_stage_degrades_each_item_from_its_own_seeds():
    from dalle2_fast.seeding import ItemSeeds

    r = micro(upsample_res=(32, 64))
    hr = torch.tanh(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    for k, size in ((0, 16), (1, 32)):  # blur (k=0) then BSR (k=1)
        st = UpsamplerStage(r, k)
        batch = st.prepare({"image": hr if k else hr[:, :, :32, :32], "seeds": ItemSeeds(3, 10, 4)})
        half = st.prepare({"image": (hr if k else hr[:, :, :32, :32])[2:], "seeds": ItemSeeds(3, 12, 2)})
        torch.testing.assert_close(batch["low_res"][2:], half["low_res"])  # item-wise, not batch-wise
        torch.testing.assert_close(batch["image"][2:], half["image"])
        crop = st.crop or batch["image"].shape[-1]
        assert batch["image"].shape == (4, 3, crop, crop) and batch["low_res"].shape[-1] == crop * size // st.high
        other = st.prepare({"image": hr if k else hr[:, :, :32, :32], "seeds": ItemSeeds(4, 10, 4)})
        assert not torch.equal(other["low_res"], batch["low_res"])


def test_train_clip_alone_and_through_the_cli(tmp_path):
    from dalle2_fast.cli import main
    from dalle2_fast.models.clip import ClipAdapter

    assert main(["train", "clip", "--out", str(tmp_path / "c"), "--steps", "2", "--batch-size", "8",
                 "--quiet"]) == 0
    back = ClipAdapter.from_pretrained(tmp_path / "c" / "final")
    assert back.encode_text(["a red circle"]).embed.shape == (1, 64)
    assert "clip_zero_shot" in json.loads((tmp_path / "c" / "metrics.json").read_text())


def test_cli_prompts_and_train_unclip(trained, tmp_path):
    from PIL import Image

    from dalle2_fast.cli import main
    from dalle2_fast.data.images import read_metadata

    # `dalle2-fast train unclip --stages` trains a subset
    assert main(["train", "unclip", "--out", str(tmp_path / "r"), "--scale", "0.0001", "--quiet",
                 "--stages", "upsampler1"]) == 0
    assert (tmp_path / "r" / "stages" / "upsampler1.json").is_file()
    assert not (tmp_path / "r" / "stages" / "clip.json").exists()
    pipe_dir = str(trained[0] / "pipeline")
    rc = main(["sample", "a red circle", "a blue star", "-n", "2", "-o", str(tmp_path / "g.png"), "--pipeline",
               pipe_dir, "--decoder-steps", "2", "--prior-steps", "2", "--upsampler-steps", "1", "--seed", "7"])
    assert rc == 0 and Image.open(tmp_path / "g.png").size == (2 * 33 + 1, 2 * 33 + 1)
    meta = read_metadata(tmp_path / "g.png")
    assert meta["seeds"] == [7, 8, 9, 10] and meta["prompts"] == ["a red circle", "a blue star"]
    assert meta["decoder_steps"] == 2 and meta["prior_steps"] == 2
    # one PNG per image: each records its own prompt and seed, and equals the grid's image
    assert main(["sample", "a red circle", "a blue star", "-n", "2", "--images-dir", str(tmp_path / "d"),
                 "--pipeline", pipe_dir, "--decoder-steps", "2", "--prior-steps", "2", "--upsampler-steps", "1",
                 "--seed", "7", "--batch-size", "3"]) == 0
    m2 = read_metadata(tmp_path / "d" / "000002.png")
    assert m2["prompt"] == "a blue star" and m2["seed"] == 9
    import numpy as np

    grid = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    one = np.asarray(Image.open(tmp_path / "d" / "000002.png").convert("RGB"))
    assert np.array_equal(grid[34:66, 1:33], one)  # row 1, column 0 of the grid (1-px gaps)


def test_evaluate_pipeline_writes_report(trained, tmp_path):
    seen = {"a red circle", "a blue star", eval_prompts(True)[0][0], "not an eval prompt"}
    res = evaluate_pipeline(trained[1], tmp_path / "eval", n_single=1, n_two=1, progress=False, prior_steps=2,
                            decoder_steps=2, upsampler_steps=1, seen=seen)
    back = json.loads((tmp_path / "eval" / "caption_match.json").read_text())
    assert back["single"]["n"] == 30 and back["two"]["n"] == 30 and res["single"] == back["single"]
    # the eval prompts that are training sentences of a grammar-trained run are counted, not hidden
    assert back["single"]["prompts_in_training"] == "2/30"
    assert back["two"]["prompts_in_training"] == "1/30"
    assert (tmp_path / "eval" / "prompts.png").is_file() and set(back["clip_zero_shot"]) >= {"colour", "shape"}


def test_inpaint_stage_fine_tunes_the_decoder_and_ships_with_the_pipeline(trained, tmp_path):
    """--stages inpaint: the mask-conditioned decoder from this run's decoder, random masks per
    item seed, one loop; the assembled pipeline carries it (unclip.json's inpaint_decoder) and
    inpaint(method='conditioned') uses it."""
    import shutil

    from dalle2_fast.data.masks import random_fill_mask

    out, _ = trained
    run = tmp_path / "run"
    shutil.copytree(out, run)
    r = replace(micro(), inpaint=Stage(2, 4))
    pipe = train_unclip(r, run, progress=False, stages=["inpaint"])
    assert pipe is not None and pipe.inpaint_decoder.config.inpaint
    assert (run / "stages" / "inpaint" / "loss.csv").read_text().count("\n") == 3
    back = UnCLIPPipeline.from_pretrained(run / "pipeline")
    assert back.inpaint_decoder is not None
    img = torch.rand(3, 32, 32) * 2 - 1
    fill = torch.zeros(32, 32)
    fill[8:20, 8:20] = 1
    x = back.inpaint(img, fill, "a red circle", n=1, method="conditioned", prior_steps=2, decoder_steps=2,
                     upsampler_steps=1)
    assert x.shape == (1, 3, 32, 32)
    m = random_fill_mask(16, 3)
    assert m.shape == (16, 16) and set(m.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(m, random_fill_mask(16, 3)) and not torch.equal(m, random_fill_mask(16, 4))
