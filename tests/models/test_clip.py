"""dalle2_fast.models.clip: the open_clip adapter, the tiny shapes config, the word tokenizer;
training through the one loop with the CLIP recipe's task."""
import json

import open_clip
import pytest
import torch

from dalle2_fast.models.clip import TINY_SHAPES_MODEL, ClipAdapter, WordTokenizer, register_configs
from dalle2_fast.eval.zero_shot import zero_shot_accuracy
from tests._toy_captions import PROMPTS, toy_batch


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return WordTokenizer.fit(PROMPTS, vocab_size=128, context_length=24)


@pytest.fixture(scope="module")
def clip(tok):
    torch.manual_seed(0)
    return ClipAdapter.create(TINY_SHAPES_MODEL, tokenizer=tok).eval()


# ---- tokenizer ------------------------------------------------------------------------------------
def test_word_tokenizer_layout(tok):
    ids = tok(["A red square on the LEFT", "a purple square"])
    assert ids.shape == (2, 24) and ids.dtype == torch.long
    assert ids[0, 0] == tok.SOT and ids[0, 7] == tok.eot_token_id and (ids[0, 8:] == 0).all()
    assert ids[0].argmax() == 7  # end id is the largest: open_clip's argmax pooling finds it
    assert ids[1, 2] == tok.UNK  # "purple" was never seen
    assert tok.unknown_words("a purple square") == ["purple"]


def test_word_tokenizer_truncates_and_keeps_end(tok):
    ids = tok(" ".join(["red"] * 50))
    assert ids[0, -1] == tok.eot_token_id and (ids[0] != 0).all()


def test_word_tokenizer_errors():
    with pytest.raises(ValueError, match="vocab_size"):
        WordTokenizer(["w%d" % i for i in range(10)], vocab_size=12, context_length=8)
    with pytest.raises(ValueError, match="unique"):
        WordTokenizer(["a", "a"], vocab_size=12, context_length=8)
    with pytest.raises(ValueError, match="type 'word'"):
        WordTokenizer.from_dict({"type": "bpe"})


# ---- the tiny config ----------------------------------------------------------------------------
def test_tiny_config_is_an_open_clip_config():
    register_configs()
    assert TINY_SHAPES_MODEL in open_clip.list_models()
    m = open_clip.create_model(TINY_SHAPES_MODEL, load_weights=False)
    n = sum(p.numel() for p in m.parameters())
    assert n < 3_000_000, n  # a few MB


def test_encodings_shapes_and_normalisation(clip):
    enc = clip.encode_text(["a red square on the left", "a blue square"])
    assert enc.tokens.shape == (2, 24, clip.text_width) == (2, 24, 128)
    assert enc.mask.shape == (2, 24) and enc.mask[0].sum() == 8 and enc.mask[1].sum() == 5
    assert enc.embed.shape == (2, clip.embed_dim)
    torch.testing.assert_close(enc.embed.norm(dim=-1), torch.ones(2))
    x, _, _ = toy_batch(3, torch.Generator().manual_seed(0))
    z = clip.encode_image(x)
    assert z.shape == (3, 64)
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    # another resolution is resized to the tower's 32 px, not rejected
    z64 = clip.encode_image(torch.nn.functional.interpolate(x, size=64, mode="nearest"))
    assert z64.shape == (3, 64) and (z64 * z).sum(-1).min() > 0.9


def test_pooled_embedding_is_open_clips(clip):
    """Our token path must give exactly open_clip's own encode_text after normalisation."""
    ids = clip.tokenize(["a green square on the right", "a red square"])
    ref = clip.model.encode_text(ids, normalize=True)
    torch.testing.assert_close(clip.encode_text(ids).embed, ref)
    x, _, _ = toy_batch(2, torch.Generator().manual_seed(1))
    torch.testing.assert_close(clip.encode_image(x), clip.model.encode_image(clip.preprocess(x), normalize=True))


def test_bad_inputs(clip):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        clip.encode_image(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="int64"):
        clip.encode_text(torch.zeros(2, 24))
    with pytest.raises(TypeError, match="strings"):
        clip.tokenize([1, 2])


def test_create_needs_matching_tokenizer():
    with pytest.raises(ValueError, match="WordTokenizer"):
        ClipAdapter.create(TINY_SHAPES_MODEL)
    with pytest.raises(ValueError, match="vocab_size"):
        ClipAdapter.create(TINY_SHAPES_MODEL, tokenizer=WordTokenizer(["a"], 64, 24))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        ClipAdapter.create("no-such-model")


# ---- local weights only ----------------------------------------------------------------------------
def test_save_load_roundtrip_is_open_clip_local_dir(clip, tmp_path):
    clip.save_pretrained(tmp_path / "c")
    cfg = json.loads((tmp_path / "c" / "open_clip_config.json").read_text())
    assert cfg["dalle2_fast"]["tokenizer"]["type"] == "word"
    back = ClipAdapter.from_pretrained(tmp_path / "c").eval()
    x, caps, _ = toy_batch(4, torch.Generator().manual_seed(2))
    torch.testing.assert_close(back.encode_image(x), clip.encode_image(x), rtol=0, atol=0)
    e1, e2 = back.encode_text(caps), clip.encode_text(caps)
    torch.testing.assert_close(e1.tokens, e2.tokens, rtol=0, atol=0)
    # open_clip itself reads the directory
    oc = open_clip.create_model(f"local-dir:{tmp_path / 'c'}").eval()
    torch.testing.assert_close(oc.encode_image(clip.preprocess(x), normalize=True), clip.encode_image(x))


def test_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        ClipAdapter.from_pretrained(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        ClipAdapter.from_pretrained(tmp_path / "d")
    (tmp_path / "d" / "open_clip_config.json").write_text('{"model_cfg": {}}')
    with pytest.raises(FileNotFoundError, match="no weights"):
        ClipAdapter.from_pretrained(tmp_path / "d")
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"")
    with pytest.raises(ValueError, match="model_name"):
        ClipAdapter.from_pretrained(f)


@pytest.mark.parametrize("custom_text", [False, True])  # CLIP and CustomTextCLIP text paths
def test_any_architecture_from_a_weights_file(tmp_path, custom_text):
    """A standard-BPE architecture (registered here, tiny) loads from a bare weights file."""
    from safetensors.torch import save_file

    name = f"test-tiny-bpe-{int(custom_text)}"
    cfg = {"embed_dim": 32, "custom_text": custom_text,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    src = open_clip.create_model(name, load_weights=False)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    ad = ClipAdapter.from_pretrained(tmp_path / "w.safetensors", model_name=name).eval()
    enc = ad.encode_text(["a red circle", "two blue stars above"])
    assert enc.tokens.shape == (2, 16, 32) and enc.mask[0].sum() == 5
    torch.testing.assert_close(enc.embed, src.eval().encode_text(ad.tokenize(["a red circle", "two blue stars above"]),
                                                                  normalize=True))
    assert ad.encode_image(torch.rand(2, 3, 32, 32) * 2 - 1).shape == (2, 32)


# ---- training ---------------------------------------------------------------------------------------
def _micro_task(tok, tmp_path, n=256):
    """The CLIP recipe's task on the toy captions with a micro config of the same family."""
    from dalle2_fast.data.memory import InMemoryData
    from dalle2_fast.recipes.clip import ClipTask

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32,
                                           "patch_size": 8},
           "text_cfg": {"context_length": 24, "vocab_size": 128, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "test-micro-words.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "test-micro-words.json")

    class Toy(ClipTask):
        warmup = 5

        def datasets(self, cfg):
            x, caps, _ = toy_batch(n, torch.Generator().manual_seed(0))
            return InMemoryData({"image": x, "caption": caps}, seed=cfg.seed), None

        def build(self):
            return ClipAdapter.create("test-micro-words", tokenizer=tok)

        def evaluate(self, model, held, gen):
            return {}

    return Toy()


def test_training_lowers_loss_and_learns_zero_shot(tok, tmp_path):
    """A micro config of the same family (for test time) learns the toy captions in 40 steps of
    the one training loop (warm-up + cosine, the logit scale clamped)."""
    import csv

    from dalle2_fast.models.clip import ClipAdapter as CA
    from dalle2_fast.train.loop import TrainConfig, train

    task = _micro_task(tok, tmp_path)
    x, _, labels = toy_batch(64, torch.Generator().manual_seed(123))
    torch.manual_seed(0)
    before = zero_shot_accuracy(task.build().eval(), x, labels, PROMPTS)
    out = train(task, TrainConfig(out=str(tmp_path / "run"), steps=40, batch_size=32, lr=3e-3, quiet=True,
                                  sample_n=4, eval_size=4))
    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "loss.csv"))]
    assert len(losses) == 40 and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    clip = CA.from_pretrained(out / "final").eval()
    after = zero_shot_accuracy(clip, x, labels, PROMPTS)
    assert after >= 0.4 and after > before + 0.2, (before, after)  # 8 prompts: chance is 0.125
    assert clip.model.logit_scale.exp() <= 100 + 1e-4


def test_training_time_limit(tok, tmp_path):
    """max_minutes stops the loop (the recipe's wall-clock budget): here after the first step."""
    from dalle2_fast.train.loop import TrainConfig, train

    out = train(_micro_task(tok, tmp_path, n=16), TrainConfig(out=str(tmp_path / "t"), steps=1000, batch_size=8,
                                                              max_minutes=0.0, quiet=True, evaluate=False))
    assert (out / "loss.csv").read_text().count("\n") == 2  # header + one step
