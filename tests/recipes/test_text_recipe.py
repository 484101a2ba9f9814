"""The unCLIP recipe with the caption grammar and the BPE tokenizer: a micro smoke run (seconds),
its recipe recorded beside the pipeline, and every user path (pipeline, CLI sample, batch job,
service engine) taking words the training never saw."""
import json

import pytest
import torch

from dalle2_fast.models.bpe import BPETokenizer
from dalle2_fast.pipeline import UnCLIPPipeline
from dalle2_fast.recipes.unclip import Stage, UnCLIPRecipe, stage_key, train_unclip

pytestmark = pytest.mark.usefixtures("one_thread")
UNSEEN = ["a circle that is teal", "two hexagons 🙂", "Zwei rote Kreise!", "x" * 1000]
FAST = dict(prior_steps=2, decoder_steps=2, upsampler_steps=1)


def micro(**kw):
    base = dict(seed=0, n_train=48, base_res=16, upsample_res=(32,), clip=Stage(2, 16), prior=Stage(2, 16),
                decoder=Stage(1, 4), upsampler=Stage(1, 4), n_train_upsampler=8, prior_width=32, prior_layers=1,
                decoder_channels=16, upsampler_channels=16, captions="grammar", tokenizer="bpe")
    return UnCLIPRecipe(**{**base, **kw})


@pytest.fixture(scope="module")
def grammar_bpe(tmp_path_factory):
    out = tmp_path_factory.mktemp("text") / "run"
    return out, train_unclip(micro(), out, progress=False)


def test_smoke_train_grammar_bpe_records_its_recipe(grammar_bpe):
    out, pipe = grammar_bpe
    assert isinstance(pipe.clip.tokenizer, BPETokenizer) and pipe.clip.context_length == 32
    rec = json.loads((out / "pipeline" / "recipe.json").read_text())
    assert (rec["captions"], rec["held_out"], rec["tokenizer"]) == ("grammar", "after_noun", "bpe")
    assert UnCLIPRecipe(**{k: (Stage(**v) if isinstance(v, dict) else v) for k, v in rec.items()}) == micro()
    key = json.loads((out / "stages" / "decoder.json").read_text())
    assert key["captions"] == "grammar" and key["tokenizer"] == "bpe"
    # the legacy defaults keep the stage keys of runs made before these fields existed
    assert "captions" not in stage_key(UnCLIPRecipe(), "decoder") and "tokenizer" not in stage_key(UnCLIPRecipe(), "clip")
    back = UnCLIPPipeline.from_pretrained(out / "pipeline")
    assert isinstance(back.clip.tokenizer, BPETokenizer)
    torch.testing.assert_close(back(["a red circle"], seed=3, **FAST), pipe(["a red circle"], seed=3, **FAST))


def test_recipe_text_field_errors():
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        micro(tokenizer="chars")
    with pytest.raises(ValueError, match="mode"):
        micro(captions="poetry")
    with pytest.raises(ValueError, match="held_out"):
        micro(held_out="haiku")


def test_unseen_words_pass_every_path(grammar_bpe, tmp_path):
    from dalle2_fast.cli import main
    from dalle2_fast.data.images import read_metadata
    from dalle2_fast.serve.engine import Engine

    out, pipe = grammar_bpe
    imgs = pipe(UNSEEN, seed=0, **FAST)  # the pipeline
    assert imgs.shape == (4, 3, 32, 32) and torch.isfinite(imgs).all()
    pipe_dir = str(out / "pipeline")
    steps = ["--decoder-steps", "2", "--prior-steps", "2", "--upsampler-steps", "1"]
    assert main(["sample", *UNSEEN[:3], "-n", "1", "-o", str(tmp_path / "g.png"), "--pipeline", pipe_dir, *steps]) == 0
    assert read_metadata(tmp_path / "g.png")["prompts"] == UNSEEN[:3]
    assert main(["sample", *UNSEEN[:2], "-n", "1", "--images-dir", str(tmp_path / "job"), "--pipeline", pipe_dir,
                 *steps]) == 0  # the batch-job path
    assert read_metadata(tmp_path / "job" / "000001.png")["prompt"] == UNSEEN[1]
    eng = Engine(pipe, batch_shape=None)  # the service's engine
    x = eng.generate(UNSEEN[:2], [0, 1], eng.settings("generation", FAST))
    assert x.shape == (2, 3, 32, 32) and torch.isfinite(x).all()


def test_cli_flags_reach_the_recipe(monkeypatch, tmp_path):
    import dalle2_fast.recipes.unclip as U
    from dalle2_fast.cli import UsageError, main

    got = {}
    monkeypatch.setattr(U, "train_unclip", lambda r, out, progress, stages: got.update(r=r))
    assert main(["train", "unclip", "--out", str(tmp_path / "r"), "--captions", "grammar", "--tokenizer", "bpe",
                 "--quiet"]) == 0
    assert (got["r"].captions, got["r"].tokenizer) == ("grammar", "bpe")
    assert main(["train", "unclip", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert (got["r"].captions, got["r"].tokenizer) == ("legacy", "words")
    with pytest.raises(ValueError, match="--captions"):
        main(["train", "clip", "--out", str(tmp_path / "c"), "--captions", "grammar"])
    with pytest.raises(UsageError, match="--tokenizer: invalid choice: 'chars'"):
        main(["train", "unclip", "--out", str(tmp_path / "t"), "--tokenizer", "chars"])


def test_max_objects_reaches_the_recipe_and_leaves_the_upsamplers(monkeypatch, tmp_path):
    import dalle2_fast.recipes.unclip as U
    from dalle2_fast.cli import main

    got = {}
    monkeypatch.setattr(U, "train_unclip", lambda r, out, progress, stages: got.update(r=r))
    assert main(["train", "unclip", "--out", str(tmp_path / "r"), "--max-objects", "3", "--quiet"]) == 0
    r3 = got["r"]
    assert (r3.max_objects, r3.upsampler_max_objects) == (3, 2)
    base = UnCLIPRecipe()
    for name in ("clip", "prior", "decoder"):  # the object count is part of what these stages learn from ...
        assert stage_key(r3, name) != stage_key(base, name)
    for name in ("upsampler1", "upsampler2"):  # ... not of the upsamplers' (their own field)
        assert stage_key(r3, name) == stage_key(base, name)
    assert stage_key(U.replace(base, upsampler_max_objects=3), "upsampler1") != stage_key(base, "upsampler1")
    for bad in ("0", "4"):
        with pytest.raises(ValueError, match="--max-objects: expected an int in \\[1, 3\\]"):
            main(["train", "unclip", "--out", str(tmp_path / "b"), "--max-objects", bad])
    with pytest.raises(ValueError, match="--max-objects"):
        main(["train", "clip", "--out", str(tmp_path / "c"), "--max-objects", "3"])
