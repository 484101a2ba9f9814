"""The inpainting evaluation's pieces (dalle2_fast/eval/inpaint.py) and the training masks
(dalle2_fast/data/masks.py): the fixed cases' holes never touch the kept object, the prompt asks
for another class, scoring the input itself keeps everything and finds the kept object, seam
steps and Wilson intervals on known inputs, masks binary and per seed."""
import numpy as np
import torch

from dalle2_fast.data.masks import brush_fill, object_boxes, random_fill_mask
from dalle2_fast.eval.inpaint import inner_band_step, inpaint_cases, score_case, seam_steps, wilson


def test_cases_hole_around_the_removed_object_only():
    cases = inpaint_cases(12, 64)
    for c in cases:
        a, b = c["removed"], c["kept"]
        x0, y0, x1, y1 = c["box"]
        assert x0 <= a.cx * 64 <= x1 and y0 <= a.cy * 64 <= y1
        bx0, by0 = (b.cx - b.side / 2) * 64, (b.cy - b.side / 2) * 64
        bx1, by1 = (b.cx + b.side / 2) * 64, (b.cy + b.side / 2) * 64
        assert x1 <= bx0 or bx1 <= x0 or y1 <= by0 or by1 <= y0  # B's square is outside the hole
        assert c["want"] != (a.shape, a.colour) and c["fill"].sum() == (x1 - x0) * (y1 - y0)
    assert len({c["prompt"] for c in cases}) > 6


def test_scoring_the_input_keeps_everything():
    c = inpaint_cases(3, 64)[1]
    r = score_case(c, ((c["image"] + 1) / 2).clamp(0, 1))
    assert r["kept_max_diff"] == 0 and r["kept_psnr_db"] == float("inf") and r["other_found"]
    assert not r["fill_ok"]  # the removed object is another class


def test_seam_steps_and_wilson():
    img = np.zeros((8, 8, 3), np.uint8)
    img[2:6, 2:6] = 90  # the hole holds a flat patch 90 levels off the background
    fill = np.zeros((8, 8))
    fill[2:6, 2:6] = 1
    border, inside = seam_steps(img, fill)
    assert border == 90 and inside == 0
    assert inner_band_step(img, fill) == 0  # the patch is flat inside
    ramp = np.zeros((9, 12, 3), np.uint8)
    ramp[1:8, 1:11] = np.arange(10, dtype=np.uint8)[None, :, None] * 7  # 7 levels a column inside
    f = np.zeros((9, 12))
    f[1:8, 1:11] = 1
    # rows of the 3-pixel ring: horizontal steps are 7, vertical 0 (pairs both in the ring only)
    ring = f.astype(bool) & ~np.pad(np.ones((1, 4), bool), ((4, 4), (4, 4)))
    h = ring[:, 1:] & ring[:, :-1]
    v = ring[1:] & ring[:-1]
    assert abs(inner_band_step(ramp, f) - 7 * h.sum() / (h.sum() + v.sum())) < 1e-9
    lo, hi = wilson(40, 50)
    assert lo < 0.8 < hi and abs(lo - 0.670) < 0.005 and abs(hi - 0.888) < 0.005


def test_training_masks():
    boxes = object_boxes([[type("O", (), dict(cx=0.3, cy=0.4, side=0.25))()]], 2)
    assert boxes.shape == (1, 2, 3) and torch.isnan(boxes[0, 1]).all()
    kinds = set()
    for s in range(30):
        m = random_fill_mask(32, s, boxes[0].numpy())
        assert set(m.unique().tolist()) <= {0.0, 1.0} and 0 < m.mean() < 1
        kinds.add(round(float(m.mean()), 4))
    assert len(kinds) > 10
    assert brush_fill(32, np.random.default_rng(0)).any()
