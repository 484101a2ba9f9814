"""``train unclip --decoder-text-layers N``: the recipe builds and trains the decoder with GLIDE's
text transformer (micro scale, seconds), the stage key changes only when the option is on, and
the CLI flag is checked and refused where it does not apply."""
import pytest

from dalle2_fast.recipes.unclip import build_decoder, recipe_from_args, stage_key, train_unclip
from tests.recipes.test_unclip_train import micro

pytestmark = pytest.mark.usefixtures("one_thread")


def test_recipe_trains_the_decoder_with_a_text_transformer(tmp_path):
    r = micro(decoder_text_layers=1, decoder_text_width=16)
    pipe = train_unclip(r, tmp_path / "xf", progress=False)
    xf = pipe.decoder.config.text_transformer
    assert xf is not None and (xf.layers, xf.width) == (1, 16) and pipe.decoder.text_xf is not None
    img = pipe(["a red circle"], seed=1, prior_steps=2, decoder_steps=2, upsampler_steps=1)
    assert img.shape == (1, 3, 32, 32) and bool(((img >= 0) & (img <= 1)).all())


def test_stage_key_and_builder_follow_the_option():
    off, on = micro(), micro(decoder_text_layers=2)
    assert "decoder_text_layers" not in stage_key(off, "decoder")  # runs made before the option still match
    assert stage_key(on, "decoder") != stage_key(off, "decoder")
    assert stage_key(on, "prior") == stage_key(off, "prior")
    assert recipe_from_args(decoder_text_layers=3).decoder_text_layers == 3

    class FakeClip:
        embed_dim, text_width, context_length = 16, 8, 6

    assert build_decoder(off, FakeClip()).text_xf is None
    assert build_decoder(on, FakeClip()).text_xf.config.layers == 2


@pytest.mark.parametrize("argv, match", [
    (["train", "unclip", "--decoder-text-layers", "-1"], "--decoder-text-layers"),
    (["train", "adm", "--decoder-text-layers", "2"], "--decoder-text-layers"),
])
def test_cli_flag_checks(argv, match, tmp_path):
    from dalle2_fast.cli import main

    with pytest.raises(ValueError, match=match):
        main(argv + ["--out", str(tmp_path / "o")])
