"""The embedded captioned-shapes data, the image-folder dataset and the shapes detector."""
import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_fast.data import ImageFolderDataset, ShapesDataset, tokenize
from dalle2_fast.data.shapes import COLOUR_NAMES, NUM_CLASSES, SHAPES, class_id, class_name
from dalle2_fast.eval import detect, psnr, recognised, recognition_rate


def test_deterministic_by_seed_and_order_free():
    a = ShapesDataset(32, seed=3).batch(0, 6)
    b = ShapesDataset(32, seed=3).batch(0, 6)
    assert torch.equal(a["image"], b["image"]) and a["caption"] == b["caption"]
    # item 4 does not depend on having drawn items 0..3 first (exact resume from a data position)
    assert torch.equal(ShapesDataset(32, seed=3)[4]["image"], a["image"][4])
    c = ShapesDataset(32, seed=4).batch(0, 6)
    assert not torch.equal(a["image"], c["image"])


@pytest.mark.parametrize("res", [16, 33, 64, 256])  # smallest, odd, common, largest
def test_any_resolution_in_range(res):
    it = ShapesDataset(res, seed=0)[0]
    assert it["image"].shape == (3, res, res) and it["image"].dtype == torch.float32
    assert -1 <= it["image"].min() and it["image"].max() <= 1


def test_captions_match_labels():
    ds = ShapesDataset(32, seed=11, size=200)
    counts = set()
    for k in range(200):
        it = ds[k]
        objs, cap = it["objects"], it["caption"]
        counts.add(len(objs))
        assert 1 <= len(objs) <= 3
        assert it["label"] == class_id(objs[0].shape, objs[0].colour)
        rest = cap
        for o in objs:  # each object's phrase appears, in order
            pos = rest.find(o.phrase)
            assert pos >= 0, (o.phrase, cap)
            rest = rest[pos + len(o.phrase):]
        if len(objs) == 2:
            a, b = objs
            rel = "above" if " above " in cap else "next to"
            assert (rel == "above") == ((b.cy - a.cy) > abs(b.cx - a.cx))
        if len(objs) != 2:
            for o in objs:
                assert (o.position in cap) or (o.position == "centre" and "centre" in cap)
        for o in objs:  # shapes do not overlap
            for p in objs:
                if o is not p:
                    assert max(abs(o.cx - p.cx), abs(o.cy - p.cy)) > (o.side + p.side) / 2
    assert counts == {1, 2, 3}


def test_fixed_size_and_errors():
    ds = ShapesDataset(16, seed=0, size=5)
    assert len(ds) == 5 and len(list(ds)) == 5
    assert torch.equal(ds.batch(4, 2)["image"][1], ds[0]["image"])  # wraps around
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(TypeError, match="infinite"):
        len(ShapesDataset(16))
    with pytest.raises(ValueError, match="resolution"):
        ShapesDataset(8)
    with pytest.raises(ValueError, match="background"):
        ShapesDataset(32, background="noisy")


def test_class_ids_and_tokenize():
    assert {class_name(class_id(s, c)) for s in SHAPES for c in COLOUR_NAMES} == \
        {f"{c} {s}" for s in SHAPES for c in COLOUR_NAMES}
    assert NUM_CLASSES == len(SHAPES) * len(COLOUR_NAMES)
    t = tokenize(["a small red circle above a large blue star", "xyzzy"], length=12)
    assert t.shape == (2, 12) and (t[0, :9] > 0).all() and (t[0, 9:] == 0).all() and (t[1] == 0).all()


def test_image_folder_with_optional_captions(tmp_path):
    (tmp_path / "sub").mkdir()
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "sub" / "b.jpg")
    (tmp_path / "a.txt").write_text("a grey picture\n")
    ds = ImageFolderDataset(tmp_path, resolution=16)
    assert len(ds) == 2
    assert ds[0]["caption"] == "a grey picture" and ds[1]["caption"] == ""
    assert ds[0]["image"].shape == (3, 16, 16)
    assert ds.batch(0, 3)["image"].shape == (3, 3, 16, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolderDataset(tmp_path / "empty", 16)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ImageFolderDataset(tmp_path / "missing", 16)


@pytest.mark.parametrize("res", [32, 64])
def test_detector_recognises_clean_renders(res):
    b = ShapesDataset(res, seed=7).batch(0, 60)
    assert recognition_rate(b["image"], b["objects"]) >= 0.97
    assert recognition_rate(b["image"]) >= 0.97  # unconditional: every blob is a confident shape


def test_detector_rejects_what_is_not_there():
    b = ShapesDataset(32, seed=8, min_objects=1, max_objects=1).batch(0, 20)
    wrong = [(class_id(o[0].shape, o[0].colour) + 1) % NUM_CLASSES for o in b["objects"]]
    assert recognition_rate(b["image"], wrong) <= 0.1  # the neighbouring class (other colour)
    noise = torch.rand(4, 3, 32, 32) * 2 - 1  # saturated noise: blobs but no shapes
    assert recognition_rate(noise) == 0.0
    grey = torch.zeros(2, 3, 32, 32)
    assert detect(grey[0]) == [] and not recognised(grey[0])


def test_psnr():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert psnr(x, x) > 100
    assert abs(psnr(x, x + 0.2) - 10 * np.log10(4 / 0.04)) < 1e-3
