"""``dalle2-fast inpaint``: end to end on the tiny pipeline (mask PNG, --box, --outpaint; kept
pixels exact in the written 8-bit grid; metadata), and every bad flag reported before any model
loads (a missing --pipeline would be the next error otherwise)."""
import numpy as np
import pytest
import torch
from PIL import Image

from dalle2_fast.cli import main
from dalle2_fast.data.images import read_metadata
from tests._tiny_pipeline import save_tiny_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = ["--prior-steps", "2", "--decoder-steps", "3", "--upsampler-steps", "1", "--jumps", "1,2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("inpaint")
    pipe = save_tiny_pipeline(d / "pipe")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / "img.png")
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 4:20] = 255
    Image.fromarray(m).save(d / "mask.png")
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(d / "small_mask.png")
    return d, pipe


def _grid_tiles(path, n, s=32):
    arr = np.asarray(Image.open(path).convert("RGB"))
    return [arr[1 : 1 + s, 1 + k * (s + 1) : 1 + k * (s + 1) + s] for k in range(n)]


def test_mask_box_and_outpaint(files, capsys):
    d, pipe = files
    src = np.asarray(Image.open(d / "img.png").convert("RGB"))
    keep = np.asarray(Image.open(d / "mask.png")) < 128
    out = d / "out.png"
    assert main(["inpaint", str(d / "img.png"), "a red circle", "--mask", str(d / "mask.png"), "-n", "2", "-o",
                 str(out), "--pipeline", str(pipe), "--seed", "5", *FAST]) == 0
    for tile in _grid_tiles(out, 2):
        assert np.array_equal(tile[keep], src[keep]) and not np.array_equal(tile[~keep], src[~keep])
    meta = read_metadata(out)
    assert meta["command"] == "inpaint" and meta["seed"] == 5 and meta["jumps"] == [1, 2] and meta["decoder_steps"] == 3
    assert meta["mask_reduce"] == "area" and meta["image_mix"] == 0 and meta["harmonize"] is True
    out2 = d / "box.png"
    assert main(["inpaint", str(d / "img.png"), "a red circle", "--box", "4,8,20,24", "-n", "1", "-o", str(out2),
                 "--pipeline", str(pipe), "--seed", "5", *FAST]) == 0
    assert np.array_equal(_grid_tiles(out2, 1)[0], _grid_tiles(out, 2)[0])  # the same fill as the mask PNG
    out3 = d / "wide.png"
    assert main(["inpaint", str(d / "img.png"), "a red circle", "--outpaint", "left:8", "-n", "1", "-o", str(out3),
                 "--pipeline", str(pipe), *FAST]) == 0
    assert np.array_equal(_grid_tiles(out3, 1)[0][:, 8:], src[:, :24])


@pytest.mark.parametrize("extra, match", [
    (["--mask", "{d}/small_mask.png"], "--mask: the mask is 32x16"),
    (["--mask", "{d}/none.png"], "--mask: no such image"),
    (["--box", "1,2,3"], "--box: expected 4"),
    (["--box", "8,8,4,20"], "box must satisfy"),
    (["--box", "0,0,40,8"], "box must satisfy"),
    (["--outpaint", "north:8"], "--outpaint: expected SIDE:PIXELS"),
    (["--outpaint", "left:x"], "--outpaint: expected SIDE:PIXELS"),
    (["--box", "0,0,8,8", "--jumps", "0,3"], "--jumps"),
    (["--box", "0,0,8,8", "--jumps", "5"], "--jumps: expected 2"),
    (["--box", "0,0,8,8", "--method", "glide"], "--method"),
    (["--box", "0,0,8,8", "-n", "0"], "-n"),
    (["--box", "0,0,8,8", "--decoder-steps", "0"], "--decoder-steps"),
    (["--box", "0,0,8,8", "--decoder-guidance", "nan"], "--decoder-guidance"),
    (["--box", "0,0,8,8", "-o", "out.jpg"], "-o/--out"),
    (["--box", "0,0,8,8", "--mask-reduce", "mean"], "--mask-reduce: expected one of max, area, min"),
    (["--box", "0,0,8,8", "--image-mix", "1.5"], "--image-mix"),
])
def test_bad_flags_before_any_model_loads(files, extra, match):
    d, _ = files
    argv = ["inpaint", str(d / "img.png"), "a red circle", "--pipeline", str(d / "no-such-pipeline"),
            "-o", str(d / "x.png")]
    with pytest.raises((ValueError, FileNotFoundError), match=match):  # never the missing pipeline
        main(argv + [e.format(d=d) for e in extra])


def test_mask_and_box_are_exclusive(files):
    from dalle2_fast.cli import UsageError

    d, _ = files
    with pytest.raises(UsageError, match="not allowed with"):
        main(["inpaint", str(d / "img.png"), "p", "--mask", "m.png", "--box", "0,0,1,1"])
    with pytest.raises(UsageError, match="required"):
        main(["inpaint", str(d / "img.png"), "p"])
