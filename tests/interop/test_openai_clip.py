"""OpenAI CLIP into our open_clip adapter, against OpenAI's own model code (``clip/model.py``
of the ``openai-clip`` package, a test dependency) at a tiny size with random weights: a plain
state dict, the TorchScript archive (traced and saved as OpenAI distributes, float16), read
without unpickling arbitrary objects; QuickGELU always (and GELU visibly wrong); the
ambiguity of a bare weights file refused; a hostile archive refused naming its global."""
import copy
import importlib.util
import os
import zipfile

import pytest
import torch

from dalle2_fast.interop.openai_clip import (UnsafeArchiveError, activation_checked_name, load_openai_clip,
                                             matching_open_clip_name, openai_model_cfg, read_torchscript_archive)
from dalle2_fast.models.clip import ClipAdapter, ClipConfig


def _openai_model_module():
    spec = importlib.util.find_spec("clip")
    path = os.path.join(os.path.dirname(spec.origin), "model.py") if spec and spec.origin else None
    if path is None or not os.path.isfile(path):
        pytest.skip("OpenAI's CLIP code is not installed (pip install openai-clip: the test extra)")
    s = importlib.util.spec_from_file_location("openai_clip_reference_model", path)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)  # model.py alone: torch only (clip/__init__ needs pkg_resources)
    return mod


V = 49408  # OpenAI's BPE vocabulary (so open_clip's tokenizer applies); the end token is V - 1


@pytest.fixture(scope="module")
def ref():
    """OpenAI's CLIP at a tiny size; widths multiples of 64 (OpenAI's build_model: heads = width // 64);
    layer norms and every other weight random (not the 1 / 0 init)."""
    m = _openai_model_module()
    torch.manual_seed(0)
    model = m.CLIP(embed_dim=16, image_resolution=32, vision_layers=2, vision_width=128, vision_patch_size=8,
                   context_length=12, vocab_size=V, transformer_width=128, transformer_heads=2,
                   transformer_layers=2).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model


def _inputs():
    g = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1  # [-1, 1], our convention
    ids = torch.randint(1, V - 2, (3, 12), generator=g)
    for i, n in enumerate((4, 11, 1)):  # end token (the largest id) at varied places, zero padding after
        ids[i, n] = V - 1
        ids[i, n + 1:] = 0
    return images, ids


def _compare(adapter, model, atol=1e-5):
    images, ids = _inputs()
    adapter = adapter.eval()
    with torch.no_grad():
        want_img = model.encode_image(adapter.preprocess(images))
        tokens = {}
        h = model.ln_final.register_forward_hook(lambda mod, i, o: tokens.setdefault("t", o))
        want_txt = model.encode_text(ids)
        h.remove()
        got_img = adapter.encode_image(images)
        enc = adapter.encode_text(ids)
    torch.testing.assert_close(got_img, torch.nn.functional.normalize(want_img, dim=-1), rtol=1e-5, atol=atol)
    torch.testing.assert_close(enc.embed, torch.nn.functional.normalize(want_txt, dim=-1), rtol=1e-5, atol=atol)
    torch.testing.assert_close(enc.tokens, tokens["t"].permute(1, 0, 2) if tokens["t"].shape[0] == 12
                               else tokens["t"], rtol=1e-5, atol=atol)
    return got_img


def test_state_dict_matches_openai(ref, tmp_path):
    torch.save(ref.state_dict(), tmp_path / "clip.pt")
    adapter = load_openai_clip(tmp_path / "clip.pt")
    assert adapter.model_cfg["quick_gelu"] is True
    _compare(adapter, ref)
    ids = adapter.tokenize(["a red circle", "two stars"])  # OpenAI's BPE through open_clip
    assert ids.shape == (2, 12) and ids[0, 0] == V - 2 and ids[0].argmax() == 4
    # through our own format and back
    adapter.save_pretrained(tmp_path / "ours")
    _compare(ClipAdapter.from_pretrained(tmp_path / "ours"), ref)


def test_gelu_would_be_wrong(ref, tmp_path):
    """The test above would fail with exact GELU: the same weights in the GELU config differ."""
    torch.save(ref.state_dict(), tmp_path / "clip.pt")
    good = load_openai_clip(tmp_path / "clip.pt")
    cfg = dict(good.model_cfg, quick_gelu=False)
    gelu = ClipAdapter(ClipConfig(model_name="gelu-twin", open_clip=__import__("json").dumps({"model_cfg": cfg})))
    gelu.model.load_state_dict(good.model.state_dict())
    images, _ = _inputs()
    with torch.no_grad():
        assert (gelu.eval().encode_image(images) - good.eval().encode_image(images)).abs().max() > 1e-3


def test_torchscript_archive_read_safely(ref, tmp_path):
    """OpenAI's distribution format: a traced module saved with torch.jit.save, float16 weights.
    Read by the restricted unpickler: the same tensors torch.jit.load would give."""
    images, ids = _inputs()
    traced = torch.jit.trace(copy.deepcopy(ref), (torch.randn(2, 3, 32, 32), ids[:2]))  # shares parameters
    traced = traced.half()
    traced.save(str(tmp_path / "ViT-tiny.pt"))
    sd, classes = read_torchscript_archive(tmp_path / "ViT-tiny.pt")
    assert any(c.endswith("QuickGELU") for c in classes)
    assert all(v.dtype == torch.float16 for k, v in sd.items() if v.is_floating_point())
    assert set(sd) == set(ref.state_dict())
    adapter = ClipAdapter.from_pretrained(tmp_path / "ViT-tiny.pt")  # an archive needs no model name
    half = _openai_model_module().CLIP(16, 32, 2, 128, 8, 12, V, 128, 2, 2).eval()
    half.load_state_dict({k: v.half().float() for k, v in ref.state_dict().items()})
    _compare(adapter, half, atol=2e-5)


def test_openai_meta_keys_mark_openai_weights(ref, tmp_path):
    sd = dict(ref.state_dict(), input_resolution=torch.tensor(32), context_length=torch.tensor(12),
              vocab_size=torch.tensor(V))
    torch.save(sd, tmp_path / "from_archive.pt")
    adapter = ClipAdapter.from_pretrained(tmp_path / "from_archive.pt")
    _compare(adapter, ref)
    with pytest.raises(ValueError, match="QuickGELU"):
        ClipAdapter.from_pretrained(tmp_path / "from_archive.pt", quick_gelu=False)


def test_bare_weights_file_must_say_its_activation(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="quick_gelu=True"):
        ClipAdapter.from_pretrained(tmp_path / "w.pt", model_name="ViT-L-14")
    assert activation_checked_name("ViT-L-14", True, "f") == "ViT-L-14-quickgelu"
    assert activation_checked_name("ViT-L-14", False, "f") == "ViT-L-14"
    assert activation_checked_name("ViT-L-14-quickgelu", None, "f") == "ViT-L-14-quickgelu"
    assert activation_checked_name("ViT-L-14-quickgelu", False, "f") == "ViT-L-14"


@pytest.mark.parametrize("args,name", [
    ((768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12), "ViT-L-14-quickgelu"),
    ((512, 224, 12, 768, 32, 77, 49408, 512, 8, 12), "ViT-B-32-quickgelu"),
    ((1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12), "RN50-quickgelu"),
])
def test_real_architectures_are_recognised(args, name):
    """The full-size models, on the meta device (no memory): shapes -> open_clip's QuickGELU config."""
    with torch.device("meta"):
        model = _openai_model_module().CLIP(*args)
    assert matching_open_clip_name(openai_model_cfg(model.state_dict())) == name


def test_mismatched_model_name_and_tensors_are_named(ref, tmp_path):
    sd = ref.state_dict()
    torch.save(sd, tmp_path / "clip.pt")
    with pytest.raises(ValueError, match="do not fit ViT-B-32-quickgelu"):
        load_openai_clip(tmp_path / "clip.pt", model_name="ViT-B-32")
    bad = {k: v for k, v in sd.items() if k != "visual.ln_post.weight"}
    torch.save(bad, tmp_path / "missing.pt")
    with pytest.raises(Exception, match="visual.ln_post.weight"):
        load_openai_clip(tmp_path / "missing.pt")
    bad = dict(sd, **{"visual.ln_post.bias": torch.zeros(7)})
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(Exception, match=r"visual.ln_post.bias: \(7,\), expected \(128,\)"):
        load_openai_clip(tmp_path / "shape.pt")


def test_hostile_archive_is_refused_naming_the_global(tmp_path):
    """A TorchScript-shaped zip whose data.pkl would call os.system: refused before it runs."""
    marker = tmp_path / "ran"
    payload = (b"\x80\x02cos\nsystem\nq\x00X" + len(f"touch {marker}").to_bytes(4, "little")
               + f"touch {marker}".encode() + b"\x85R.")
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", payload)
        zf.writestr("evil/code/__torch__/x.py", "")
    with pytest.raises(UnsafeArchiveError, match="os.system") as e:
        ClipAdapter.from_pretrained(path)
    assert e.value.global_name == "os.system" and not marker.exists()
