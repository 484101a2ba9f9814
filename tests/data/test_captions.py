"""The caption grammar: every wording family and scene kind, relations true of the drawn positions,
the held-out family never trained on, and the legacy captions unchanged."""
import hashlib
import re

import numpy as np
import pytest
import torch

from dalle2_fast.data.captions import (CLEAR, FAMILIES, KINDS, RELATIONS, CaptionConfig, family_words, holds,
                                       plan_scene, true_relation, word)
from dalle2_fast.data.shapes import Obj, ShapesDataset

_REL = re.compile(r"\b(above|below|to the left of|to the right of|left of|right of|next to)\b")


def _o(cx, cy):
    return Obj("circle", "red", "small", cx, cy, 0.2)


def test_relation_meanings_on_hand_placed_objects():
    a, up, down, left, right = _o(0.5, 0.5), _o(0.5, 0.2), _o(0.5, 0.8), _o(0.2, 0.5), _o(0.8, 0.5)
    assert holds("above", up, a) and holds("below", down, a) and not holds("above", down, a)
    assert holds("left of", left, a) and holds("right of", right, a) and not holds("left of", right, a)
    # 'next to' is a horizontal neighbour only: the old captions also said it of a shape below
    assert holds("next to", left, a) and holds("next to", right, a)
    assert not holds("next to", up, a) and not holds("next to", down, a)
    assert true_relation(_o(0.2, 0.2), _o(0.6, 0.6)) is None  # a diagonal pair states no relation
    with pytest.raises(ValueError, match="unknown relation 'under'"):
        holds("under", a, up)


def _objects_in_order(caption: str, objs):
    """Each object's colour and shape word appear, in the objects' order."""
    low = caption.lower()
    pos = 0
    for o in objs:
        m = re.compile(rf"\b{o.colour}\b").search(low, pos)
        s = re.compile(rf"\b{o.shape}s?\b").search(low, pos)
        assert m and s, (o, caption)
        pos = min(m.end(), s.end())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_and_kind_is_truthful(family):
    rng = np.random.default_rng(FAMILIES.index(family))
    for kind in KINDS:
        for _ in range(40):
            objs, rel = plan_scene(rng, kind, max_objects=3)
            cap = word(kind, objs, rel, family, rng, next_to=0.5)
            assert cap and cap == cap.strip() and "  " not in cap, cap
            for o in objs:  # no overlap
                for p in objs:
                    if o is not p:
                        assert max(abs(o.cx - p.cx), abs(o.cy - p.cy)) > (o.side + p.side) / 2
            if kind == "count":
                assert len({(o.shape, o.colour, o.size) for o in objs}) == 1 and len(objs) in (2, 3)
                n = {"2": 2, "3": 3, "two": 2, "three": 3}[re.search(r"\b(2|3|two|three)\b", cap.lower()).group(1)]
                assert n == len(objs), cap
                assert re.search(rf"\b{objs[0].shape}s\b", cap), cap
                continue
            _objects_in_order(cap, objs)
            if kind == "relation":
                words = _REL.findall(cap)
                assert len(words) == 1, cap
                said = words[0].replace("to the ", "")
                assert holds(said, objs[0], objs[1]), (cap, objs)  # true of the drawn centres
                assert holds(rel, objs[0], objs[1], margin=CLEAR)   # and drawn unambiguous
            else:
                assert not _REL.findall(cap), cap
            if family in ("placed", "full") and kind in ("single", "list"):
                for o in objs:
                    assert o.position.split()[-1] in cap or (o.position == "centre" and "centre" in cap), cap
            if family in ("sized", "full"):
                assert all(o.size in cap for o in objs), cap


def test_family_wordings_differ_and_words_are_listed():
    rng = np.random.default_rng(0)
    objs, rel = plan_scene(rng, "relation")
    caps = {f: word("relation", objs, rel, f) for f in FAMILIES}
    assert len(set(caps.values())) == len(FAMILIES), caps
    assert "that is" in caps["after_noun"] and caps["punct"][-1] in ".!" and caps["punct"][0].isupper()
    assert "," not in caps["comma"] and not caps["comma"].startswith("a ")
    # every word a family writes is in its word list (what a tokenizer is fitted to)
    for f in FAMILIES:
        allowed = set(family_words((f,)))
        for kind in KINDS:
            for _ in range(20):
                o, r = plan_scene(rng, kind, 3)
                got = set(re.findall(r"[a-z0-9]+", word(kind, o, r, f, rng, 0.5).lower()))
                assert got <= allowed, (f, got - allowed)
    assert "that" not in family_words(("plain", "sized")) and "that" in family_words(("after_noun",))


def test_a_relation_that_does_not_hold_is_refused():
    a, b = _o(0.5, 0.8), _o(0.5, 0.2)  # a is below b
    with pytest.raises(ValueError, match="does not hold"):
        word("relation", [a, b], "above", "plain")


def test_grammar_dataset_uses_only_training_families_and_draws_every_kind():
    cfg = CaptionConfig(mode="grammar", held_out="after_noun")
    ds = ShapesDataset(32, seed=3, size=300, max_objects=3, captions=cfg)
    fams, kinds, rels = set(), set(), set()
    for i in range(300):
        info = ds._scene(i, np.random.default_rng([3, i]))[2]
        fams.add(info["family"])
        kinds.add(info["kind"])
        rels.add(info["relation"])
        assert ds.caption(i) == ds._scene(i, np.random.default_rng([3, i]))[1]
    assert "after_noun" not in fams and fams == set(cfg.training_families)
    assert kinds == set(KINDS) and set(RELATIONS[:4]) <= rels
    it = ds[7]  # items render the planned objects and carry their caption info
    assert it["caption_info"]["family"] in cfg.training_families and it["image"].shape == (3, 32, 32)
    b = ds.batch(0, 3)
    assert len(b["caption_info"]) == 3 and b["caption"][0] == ds.caption(0)
    # max_objects=1: every scene is a single shape
    one = ShapesDataset(32, seed=0, max_objects=1, captions=cfg)
    assert all(len(one[i]["objects"]) == 1 for i in range(20))


def test_legacy_captions_and_images_unchanged():
    old = ShapesDataset(32, seed=0, size=200, max_objects=2).batch(0, 200)
    # the captions the shipped weights were trained on (seed 0, max 2 objects), as before the grammar
    assert hashlib.sha256("|".join(old["caption"]).encode()).hexdigest()[:16] == "03a4d0529464cab5"
    new = ShapesDataset(32, seed=0, size=200, max_objects=2, captions=CaptionConfig()).batch(0, 200)
    assert new["caption"] == old["caption"] and torch.equal(new["image"], old["image"])
    assert "caption_info" not in new


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="mode"):
        CaptionConfig(mode="fancy")
    with pytest.raises(ValueError, match="unknown families"):
        CaptionConfig(families=("plain", "poetic"))
    with pytest.raises(ValueError, match="held_out"):
        CaptionConfig(held_out="poetic")
    with pytest.raises(ValueError, match="no wording family left"):
        CaptionConfig(mode="grammar", families=("plain",), held_out="plain")
    with pytest.raises(ValueError, match="kind_weights"):
        CaptionConfig(kind_weights=(1, 0, 0))
    with pytest.raises(ValueError, match="needs 2 objects"):
        plan_scene(np.random.default_rng(0), "relation", max_objects=1)
    assert CaptionConfig.from_dict({"mode": "grammar", "families": ["plain", "comma"], "held_out": ""}) == \
        CaptionConfig(mode="grammar", families=("plain", "comma"), held_out="")
