"""The compact open_clip BPE of the shapes CLIP: fitted words encode as open_clip does, any string
encodes (emoji, empty, unseen words, 1,000 characters), and a CLIP carries it through save/load."""
import random

import pytest
import torch

from dalle2_fast.data.captions import FAMILIES, family_words
from dalle2_fast.models.bpe import BPETokenizer, clean
from dalle2_fast.recipes.clip import build_clip, shapes_tokenizer, training_words

pytest.importorskip("open_clip")
WORDS = family_words(tuple(f for f in FAMILIES if f != "after_noun"))


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.fit(WORDS, vocab_size=768, context_length=32)


def _words(text):
    from dalle2_fast.models.bpe import _pattern

    return " ".join(_pattern().findall(clean(text)))


def test_fitted_words_encode_as_open_clip_does(tok):
    from open_clip.tokenizer import SimpleTokenizer

    full = SimpleTokenizer()
    text = "a small orange triangle to the left of a purple star, there are 3 blue circles!"
    assert tok.pieces(text) == [full.decoder[i] for i in full.encode(text)]
    assert 512 < tok.n_pieces <= 768 - 3  # bytes, their word-final forms and the reached merges
    for w in WORDS:  # every training word: exactly open_clip's pieces (the fitted merges suffice)
        assert tok.pieces(w) == [full.decoder[i] for i in full.encode(w)], w


def test_unseen_words_split_into_known_pieces(tok):
    for w in ("that", "teal", "hexagon", "zzzq", "überquadrat"):
        assert w not in WORDS
        ids = tok.encode(w)
        assert len(ids) >= 1 and all(2 <= i < tok.vocab_size - 1 for i in ids)
        assert tok.decode(ids) == w


@pytest.mark.parametrize("seed", range(4))
def test_arbitrary_strings_round_trip(tok, seed):
    rng = random.Random(seed)
    alphabet = "abcxyz ABC 0189 ,.!?'-_\t\n" + "éßøñ" + "中文字" + "🙂🚀👍🏽" + "\u200b\u0301&<>;"
    for _ in range(50):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        ids = tok.encode(s)
        assert all(2 <= i < tok.vocab_size - 1 for i in ids)
        assert tok.decode(ids) == _words(s), repr(s)
        row = tok(s)[0]
        assert row.shape == (32,) and row[0] == tok.SOT and tok.eot_token_id in row.tolist()


def test_empty_long_and_batch(tok):
    for s in ("", "   \n\t "):  # empty after stripping: start and end tokens only
        assert tok.encode(s) == [] and tok(s)[0, :3].tolist() == [tok.SOT, tok.eot_token_id, 0]
    long = tok("a red circle " * 80)  # 1,040 characters: truncated, the end token kept last
    assert long.shape == (1, 32) and long[0, -1] == tok.eot_token_id and (long[0] != 0).all()
    assert int(long[0].argmax()) == 31  # open_clip's argmax pooling finds the end token
    b = tok(["a red circle", "🙂" * 300, ""], context_length=16)
    assert b.shape == (3, 16) and b.dtype == torch.long
    with pytest.raises(TypeError, match="text must be a string"):
        tok.encode(None)


def test_to_dict_round_trip_and_errors(tok):
    again = BPETokenizer.from_dict(tok.to_dict())
    s = "two teal hexagons above 🙂"
    assert torch.equal(again(s), tok(s))
    with pytest.raises(ValueError, match="need vocab_size >= "):
        BPETokenizer(tok.merges, vocab_size=600, context_length=32)
    with pytest.raises(ValueError, match="context_length must be >= 3"):
        BPETokenizer(tok.merges, vocab_size=768, context_length=2)
    with pytest.raises(ValueError, match="expected type 'bpe'"):
        BPETokenizer.from_dict({"type": "word"})


def test_recipe_tokenizers():
    assert shapes_tokenizer().words == training_words()  # the shipped 'words' tokenizer is unchanged
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        shapes_tokenizer("chars")


def test_clip_with_bpe_saves_loads_and_encodes_any_text(tmp_path):
    from dalle2_fast.data.captions import CaptionConfig
    from dalle2_fast.models.clip import ClipAdapter

    torch.manual_seed(0)
    clip = build_clip("bpe", CaptionConfig(mode="grammar")).eval()
    assert isinstance(clip.tokenizer, BPETokenizer) and clip.context_length == 32
    prompts = ["a circle that is teal", "🙂🙂", "", "x" * 1000, "a red circle"]
    with torch.no_grad():
        e = clip.encode_text(prompts)
    assert e.embed.shape == (5, clip.embed_dim) and torch.isfinite(e.embed).all()
    clip.save_pretrained(tmp_path / "clip")
    back = ClipAdapter.from_pretrained(tmp_path / "clip").eval()
    assert isinstance(back.tokenizer, BPETokenizer)
    with torch.no_grad():
        assert torch.allclose(back.encode_text(prompts).embed, e.embed, atol=1e-6)
