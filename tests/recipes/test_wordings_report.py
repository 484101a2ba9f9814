"""The wording report: Wilson intervals, prompts that are never training sentences, the judge on
drawn scenes (rows single / two / relation / count), and the report from a pipeline directory."""
import json

import numpy as np
import pytest
import torch

from dalle2_fast.data.captions import FAMILIES, KINDS, holds, plan_scene
from dalle2_fast.data.shapes import ShapesDataset
from dalle2_fast.eval.wordings import Prompt, judge, training_sentences, wilson, wording_prompts

pytestmark = pytest.mark.usefixtures("one_thread")


def test_wilson_interval():
    assert wilson(0, 0) == (0.0, 1.0)
    lo, hi = wilson(8, 10)  # textbook value: 0.490 .. 0.943
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    lo, hi = wilson(0, 16)
    assert lo == 0.0 and 0.15 < hi < 0.25
    assert wilson(16, 16)[1] == 1.0 and wilson(16, 16)[0] > 0.75


def test_prompts_avoid_training_sentences_and_are_fixed_by_seed():
    seen = training_sentences({"captions": "legacy", "seed": 0, "n_train": 20000, "max_objects": 2})
    assert len(seen) > 5000
    for fam in FAMILIES:
        for kind in KINDS:
            ps = wording_prompts(fam, kind, 3, seed=5, exclude=seen)
            assert not seen & {p.text for p in ps} and len({p.text for p in ps}) == len(ps)
            assert [p.text for p in ps] == [p.text for p in wording_prompts(fam, kind, 3, seed=5, exclude=seen)]
            for p in ps:
                if p.kind == "relation":
                    assert p.relation in p.text and holds(p.relation, *p.objects)
    # the legacy captions word every small/large single shape with a position: 'full' singles run out
    assert len(wording_prompts("full", "single", 3, exclude=seen)) < 3
    g = training_sentences({"captions": "grammar", "held_out": "after_noun", "seed": 0, "n_train": 300})
    assert not any("that is" in s for s in g)  # the held-out family is never a training sentence


def _draw(p: Prompt, objs=None) -> torch.Tensor:
    ds = ShapesDataset(64, seed=0, background="plain")
    arr = ds.render(list(objs or p.objects), np.random.default_rng(0), textured=False)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1


def test_judge_on_drawn_scenes():
    rng = np.random.default_rng(1)
    for kind in KINDS:
        for _ in range(4):
            objs, rel = plan_scene(rng, kind, 3 if kind == "count" else 2 if kind != "single" else 1)
            p = Prompt("x", "plain", kind, tuple(objs), rel)
            v = judge(_draw(p), p)
            assert all(v.values()) and all(type(b) is bool for b in v.values()), (kind, objs, v)  # JSON-ready
    objs, rel = plan_scene(rng, "relation", 2)
    p = Prompt("x", "plain", "relation", tuple(objs), rel)
    swapped = [objs[0].__class__(**{**objs[0].__dict__, "cx": objs[1].cx, "cy": objs[1].cy}),
               objs[1].__class__(**{**objs[1].__dict__, "cx": objs[0].cx, "cy": objs[0].cy})]
    v = judge(_draw(p, swapped), p)  # the right objects in swapped places: two yes, relation no
    assert v == {"two": True, "relation": False}
    objs, _ = plan_scene(rng, "count", 3)
    c = Prompt("x", "plain", "count", tuple(objs[:2]), None)  # 'two ...' but three drawn
    assert judge(_draw(c, objs), c) == {"count": False}


def test_report_from_a_pipeline_directory(tmp_path):
    from dalle2_fast.cli import main
    from tests._tiny_pipeline import save_tiny_pipeline

    d = save_tiny_pipeline(tmp_path / "pipe")
    (tmp_path / "pipe" / "recipe.json").write_text(json.dumps(
        {"captions": "grammar", "held_out": "comma", "seed": 0, "n_train": 200, "max_objects": 2}))
    assert main(["eval", "--wordings", "--pipeline", str(d), "--out", str(tmp_path / "w"), "--n-prompts", "1",
                 "--n-images", "1"]) == 0
    res = json.loads((tmp_path / "w" / "wordings.json").read_text())
    assert set(res["families"]) == set(FAMILIES) and res["families"]["comma"]["status"] == "unseen (held out)"
    assert res["families"]["plain"]["status"] == "trained"
    for fam, cells in res["families"].items():
        assert cells["single"]["n"] + cells.get("prompts_short", {}).get("single", 0) == 1
        assert cells["two"]["n"] == 2 - sum(cells.get("prompts_short", {}).get(k, 0) for k in ("relation", "list"))
    assert res["rows"]["count"]["n"] == 8 and 0 <= res["rows"]["count"]["ci95"][0] <= res["rows"]["count"]["ci95"][1]
    assert "| comma | unseen (held out) |" in (tmp_path / "w" / "wordings.md").read_text()
    assert (tmp_path / "w" / "hardest.png").is_file() and len(res["hardest"]) == 8
    with pytest.raises(ValueError, match="--n-prompts"):
        main(["eval", "--wordings", "--out", str(tmp_path / "x"), "--n-prompts", "0"])
