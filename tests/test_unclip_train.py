"""The ``train unclip`` recipe end to end at micro scale, and the caption-match evaluation."""
import pytest
import torch

pytest.importorskip("dalle2_fast.models.unet")
pytest.importorskip("dalle2_fast.diffusion")
pytest.importorskip("dalle2_fast.data.shapes")
pytest.importorskip("dalle2_fast.eval.detector")

from dalle2_fast.pipeline import UnCLIPPipeline  # noqa: E402
from dalle2_fast.unclip_train import Stage, UnCLIPRecipe, caption_match_rate, eval_prompts, train_unclip  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def micro(seed=0):
    return UnCLIPRecipe(seed=seed, n_train=64, base_res=16, upsample_res=(32,), clip=Stage(3, 16), prior=Stage(3, 16),
                        decoder=Stage(2, 4), upsampler=Stage(2, 4), prior_width=32, prior_layers=1,
                        decoder_channels=16, upsampler_channels=16)


def test_recipe_runs_saves_and_is_seed_reproducible(tmp_path):
    pipe = train_unclip(micro(), tmp_path / "a", progress=False)
    assert (tmp_path / "a" / "log.csv").read_text().count("\n") == 1 + 3 + 3 + 2 + 2
    back = UnCLIPPipeline.from_pretrained(tmp_path / "a" / "pipeline")
    kw = dict(prior_steps=2, decoder_steps=2, upsampler_steps=2)
    img = back(["a red circle"], seed=1, **kw)
    assert img.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pipe(["a red circle"], seed=1, **kw), img)
    again = train_unclip(micro(), tmp_path / "b", progress=False)
    for a, b in zip(pipe.decoder.state_dict().values(), again.decoder.state_dict().values()):
        assert torch.equal(a, b)


def test_eval_prompts_are_new_sentences_and_scored(tmp_path):
    from dalle2_fast.data.shapes import ShapesDataset

    seen = set(ShapesDataset(resolution=16, seed=0, size=500).batch(0, 500)["caption"])
    singles, pairs = eval_prompts(), eval_prompts(two_objects=True)
    assert len(singles) == 30 and len(pairs) == 30
    assert not seen & {p for p, _ in singles + pairs}
    pipe = train_unclip(micro(), tmp_path / "a", progress=False)
    res = caption_match_rate(pipe, singles[:2], n_per_prompt=1, prior_steps=2, decoder_steps=2)
    assert set(res) == {"rate", "colour_rate", "shape_rate", "n"} and res["n"] == 2
    assert 0 <= res["rate"] <= 1


def test_ar_prior_recipe_and_sample_to_file(tmp_path):
    from PIL import Image

    from dalle2_fast.models.prior import AutoregressivePrior
    from dalle2_fast.unclip_train import recipe_from_args, sample_to_file

    r = micro()
    r.prior_kind = "ar"
    r.n_train = 96  # the AR quantiser needs >= n_buckets embeddings
    pipe = train_unclip(r, tmp_path / "ar", progress=False)
    assert isinstance(pipe.prior, AutoregressivePrior)
    assert set(__import__("json").loads((tmp_path / "ar" / "metrics.json").read_text())["clip_zero_shot"]) == {
        "colour_and_shape", "colour", "shape", "n"}
    png = sample_to_file(["a red circle", "a blue star"], n=2, out=tmp_path / "s.png", seed=0,
                         pipeline=tmp_path / "ar" / "pipeline", progress=False, decoder_steps=2, upsampler_steps=2)
    assert Image.open(png).size == (2 * 32, 2 * 32)
    rr = recipe_from_args(seed=3, scale=0.5, max_minutes=10)
    assert rr.seed == 3 and rr.decoder.steps == 2500 and rr.decoder.max_minutes == pytest.approx(6.0)
    with pytest.raises(ValueError, match="prior_kind"):
        r.prior_kind = "gan"
        train_unclip(r, tmp_path / "bad", progress=False)


def test_stages_split_across_calls_equal_one_run(tmp_path):
    full = train_unclip(micro(), tmp_path / "full", progress=False)
    out = tmp_path / "split"
    assert train_unclip(micro(), out, progress=False, stages=["upsampler1"]) is None  # needs nothing else
    with pytest.raises(RuntimeError, match="need the CLIP stage"):
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
    r = micro()
    r.clip = Stage(4, 16)
    with pytest.raises(ValueError, match=r"stage 'clip'.*different recipe.*\['clip'\]"):
        train_unclip(r, out, progress=False)
    with pytest.raises(ValueError, match="unknown stages"):
        train_unclip(micro(), out, progress=False, stages=["vae"])


def test_stage_ema_keeps_the_average(tmp_path):
    r = micro()
    r.decoder = Stage(3, 4, ema=0.5)
    with_ema = train_unclip(r, tmp_path / "e", progress=False)
    r.decoder = Stage(3, 4)
    plain = train_unclip(r, tmp_path / "p", progress=False)
    assert any(not torch.equal(a, b) for a, b in zip(with_ema.decoder.state_dict().values(),
                                                      plain.decoder.state_dict().values()))


def test_train_clip_only(tmp_path):
    from dalle2_fast.models.clip import ClipAdapter
    from dalle2_fast.unclip_train import train_clip_only

    clip = train_clip_only(micro(), tmp_path / "c", progress=False)
    back = ClipAdapter.load(tmp_path / "c" / "clip")
    torch.testing.assert_close(back.encode_text(["a red circle"]).embed, clip.encode_text(["a red circle"]).embed)
    assert (tmp_path / "c" / "metrics.json").is_file()


def test_cli_sample(tmp_path):
    from PIL import Image

    from dalle2_fast.unclip_cli import main

    train_unclip(micro(), tmp_path / "m", progress=False)
    rc = main(["sample", "a red circle", "-n", "2", "-o", str(tmp_path / "g.png"), "--pipeline",
               str(tmp_path / "m" / "pipeline"), "--decoder-steps", "2", "--upsampler-steps", "2"])
    assert rc == 0 and Image.open(tmp_path / "g.png").size == (2 * 32, 32)


def test_top_level_cli_prompts_and_train_alias(tmp_path):
    from PIL import Image

    from dalle2_fast.cli import main

    # `dalle2-fast train unclip` is the recipe (`unclip train`); --stages trains a subset
    assert main(["train", "unclip", "--out", str(tmp_path / "r"), "--scale", "0.0001", "--quiet",
                 "--stages", "upsampler1"]) == 0
    assert (tmp_path / "r" / "stages" / "upsampler1.json").is_file()
    assert not (tmp_path / "r" / "stages" / "clip.json").exists()
    train_unclip(micro(), tmp_path / "m", progress=False)
    pipe_dir = str(tmp_path / "m" / "pipeline")
    # `dalle2-fast sample PROMPT...`: text to image through the pipeline
    rc = main(["sample", "a red circle", "a blue star", "-n", "2", "-o", str(tmp_path / "g.png"), "--pipeline",
               pipe_dir, "--steps", "2"])
    assert rc == 0 and Image.open(tmp_path / "g.png").size == (2 * 32, 2 * 32)
    with pytest.raises(ValueError, match="--label: applies to a trained checkpoint"):
        main(["sample", "a red circle", "--label", "1", "--pipeline", pipe_dir, "-o", str(tmp_path / "h.png")])
    with pytest.raises(ValueError, match="prompts: expected non-empty"):
        main(["sample", "a red circle", " ", "--pipeline", pipe_dir, "-o", str(tmp_path / "h.png")])
    with pytest.raises(ValueError, match="checkpoint: no such file"):  # a path-like argument stays a checkpoint
        main(["sample", str(tmp_path / "missing")])


def test_evaluate_pipeline_writes_report(tmp_path):
    import json

    from dalle2_fast.unclip_train import evaluate_pipeline

    pipe = train_unclip(micro(), tmp_path / "m", progress=False)
    res = evaluate_pipeline(pipe, tmp_path / "eval", n_single=1, n_two=1, progress=False, prior_steps=2,
                            decoder_steps=2, upsampler_steps=1)
    back = json.loads((tmp_path / "eval" / "caption_match.json").read_text())
    assert back["single"]["n"] == 30 and back["two"]["n"] == 30 and res["single"] == back["single"]
    assert (tmp_path / "eval" / "prompts.png").is_file() and set(back["clip_zero_shot"]) >= {"colour", "shape"}
