"""The caption grammar of the shapes data: many wordings of one scene, in named wording families.

A scene (:func:`plan_scene`) is one of four kinds, each drawn so its caption can be true:

- ``single``: one shape;
- ``relation``: two shapes in a clear spatial relation (``above``, ``below``, ``left of``,
  ``right of``; ``next to`` = a horizontal neighbour only, either side);
- ``count``: two or three copies of one shape and colour (one size word for all);
- ``list``: two or three shapes of different classes, no relation stated.

A wording family (:data:`FAMILIES`) says how a scene is put into words:

=============  ================================================================================
``plain``      'a red circle', 'a red circle above a blue square', 'two red circles'
``sized``      with size words: 'a small red circle', 'two large red circles'
``placed``     with position words: 'a red circle at the top left', 'a red circle on the left
               and a blue square on the right'
``full``       size and position words, 'to the left of' (the old captions' shape)
``after_noun`` attribute after the noun: 'a circle that is red', 'two circles that are red'
``comma``      no articles, comma lists and digits: 'red circle, blue square', '2 red circles'
``there``      'there is a red circle above a blue square', 'there are three red circles'
``punct``      capitalised, other articles and end punctuation: 'An orange star.', 'The red
               circle is left of the blue square!'
=============  ================================================================================

:class:`CaptionConfig` picks the families a training run uses and one held-out family that it
never uses (the evaluation reports it as unseen). ``mode='legacy'`` is the old single wording
(``shapes.caption_for``) with the old layouts, bit for bit: the shipped weights were trained on it.

Relations are truthful: :func:`holds` is the meaning of each relation word in terms of the two
objects' centres (image y grows downwards), and every relation caption satisfies it with margin
:data:`CLEAR` (the generator only draws unambiguous pairs).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dalle2_fast.data.shapes import COLOUR_NAMES, SHAPES, SIZES, Obj, _where

FAMILIES = ("plain", "sized", "placed", "full", "after_noun", "comma", "there", "punct")
KINDS = ("single", "relation", "count", "list")
RELATIONS = ("above", "below", "left of", "right of", "next to")
CLEAR = 1.5  # a drawn relation's dominant offset is >= CLEAR x the other one
_NUMBER = {2: "two", 3: "three"}
_PLURAL = {s: s + "s" for s in SHAPES}


def holds(rel: str, a: Obj, b: Obj, margin: float = 1.0) -> bool:
    """Is 'a <rel> b' true of the centres? above/below: the vertical offset dominates (by
    ``margin``x the horizontal one) with a higher/lower; left of/right of: the horizontal
    offset dominates; next to: a horizontal neighbour (left of or right of)."""
    dx, dy = b.cx - a.cx, b.cy - a.cy  # from a to b; y grows downwards
    if rel == "above":
        return dy > 0 and dy >= margin * abs(dx)
    if rel == "below":
        return dy < 0 and -dy >= margin * abs(dx)
    if rel == "left of":
        return dx > 0 and dx >= margin * abs(dy)
    if rel == "right of":
        return dx < 0 and -dx >= margin * abs(dy)
    if rel == "next to":
        return holds("left of", a, b, margin) or holds("right of", a, b, margin)
    raise ValueError(f"holds: unknown relation {rel!r}, expected one of {RELATIONS}")


def true_relation(a: Obj, b: Obj, margin: float = CLEAR) -> str | None:
    """The one of above/below/left of/right of that holds with ``margin``, else None (diagonal)."""
    for rel in RELATIONS[:4]:
        if holds(rel, a, b, margin):
            return rel
    return None


@dataclass(frozen=True)
class CaptionConfig:
    """Which captions a shapes dataset writes (stored with a training recipe).

    mode: 'legacy' (the old captions and layouts, exactly) or 'grammar'.
    families: the wording families training uses (grammar mode); held_out: one family never used
    in training ('' = none), reported as unseen by the evaluation; kind_weights: how often each
    scene kind of :data:`KINDS` is drawn (kinds that need more objects than the dataset's
    ``max_objects`` are skipped); next_to: how often a horizontal relation is worded 'next to'."""

    mode: str = "legacy"
    families: tuple[str, ...] = FAMILIES
    held_out: str = "after_noun"
    kind_weights: tuple[float, ...] = (0.35, 0.3, 0.15, 0.2)
    next_to: float = 0.25

    def __post_init__(self):
        object.__setattr__(self, "families", tuple(self.families))
        object.__setattr__(self, "kind_weights", tuple(float(w) for w in self.kind_weights))
        if self.mode not in ("legacy", "grammar"):
            raise ValueError(f"CaptionConfig.mode: expected 'legacy' or 'grammar', got {self.mode!r}")
        bad = [f for f in self.families if f not in FAMILIES]
        if bad:
            raise ValueError(f"CaptionConfig.families: unknown families {bad}, expected some of {FAMILIES}")
        if self.held_out and self.held_out not in FAMILIES:
            raise ValueError(f"CaptionConfig.held_out: expected '' or one of {FAMILIES}, got {self.held_out!r}")
        if self.mode == "grammar" and not self.training_families:
            raise ValueError(f"CaptionConfig: no wording family left for training (families={self.families}, "
                             f"held_out={self.held_out!r})")
        if len(self.kind_weights) != len(KINDS) or min(self.kind_weights) < 0 or sum(self.kind_weights) <= 0:
            raise ValueError(f"CaptionConfig.kind_weights: expected {len(KINDS)} non-negative weights for {KINDS} "
                             f"with a positive sum, got {self.kind_weights}")
        if not 0.0 <= self.next_to <= 1.0:
            raise ValueError(f"CaptionConfig.next_to: expected a probability in [0, 1], got {self.next_to}")

    @property
    def training_families(self) -> tuple[str, ...]:
        return tuple(f for f in self.families if f != self.held_out)

    @classmethod
    def from_dict(cls, d: dict) -> "CaptionConfig":
        return cls(**d)


# ---- scenes ------------------------------------------------------------------------------------
def _place(rng: np.random.Generator, objs: list[Obj], shape: str, colour: str, size: str) -> Obj | None:
    """One object at a random spot that overlaps none of ``objs`` (with the legacy margins)."""
    side = float(rng.uniform(*SIZES[size]))
    cx, cy = rng.uniform(side / 2 + 0.03, 1 - side / 2 - 0.03, size=2)
    if all(max(abs(cx - o.cx), abs(cy - o.cy)) > (side + o.side) / 2 + 0.04 for o in objs):
        return Obj(shape, colour, size, float(cx), float(cy), side)
    return None


def _size(rng) -> str:
    return "small" if rng.random() < 0.5 else "large"


def _classes(rng, n: int, distinct: bool) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    while len(out) < n:
        c = (SHAPES[rng.integers(len(SHAPES))], COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))])
        if not distinct or c not in out:
            out.append(c)
    return out


def plan_scene(rng: np.random.Generator, kind: str, max_objects: int = 3) -> tuple[list[Obj], str | None]:
    """Objects of a scene of ``kind`` (and the relation, for 'relation': a true one of
    above/below/left of/right of with margin :data:`CLEAR`)."""
    if kind not in KINDS:
        raise ValueError(f"plan_scene: kind must be one of {KINDS}, got {kind!r}")
    need = 1 if kind == "single" else 2
    if max_objects < need:
        raise ValueError(f"plan_scene: a {kind!r} scene needs {need} objects, max_objects is {max_objects}")
    n = 1 if kind == "single" else 2 if kind == "relation" else int(rng.integers(2, max_objects + 1))
    while True:
        if kind == "count":
            cls = _classes(rng, 1, False) * n
            size = _size(rng)
            sizes = [size] * n
        else:
            cls, sizes = _classes(rng, n, True), [_size(rng) for _ in range(n)]
        objs: list[Obj] = []
        for _ in range(200):
            o = _place(rng, objs, *cls[len(objs)], sizes[len(objs)])
            if o is not None:
                objs.append(o)
                if len(objs) == n:
                    break
        if len(objs) < n:
            continue
        if kind != "relation":
            return objs, None
        rel = true_relation(objs[0], objs[1])
        if rel is not None:
            return objs, rel


def pick_kind(rng: np.random.Generator, cfg: CaptionConfig, max_objects: int) -> str:
    w = np.array([0.0 if (k != "single" and max_objects < 2) else cfg.kind_weights[i] for i, k in enumerate(KINDS)])
    if w.sum() <= 0:
        w = np.array([1.0, 0, 0, 0])
    return KINDS[int(rng.choice(len(KINDS), p=w / w.sum()))]


# ---- wordings ----------------------------------------------------------------------------------
def _article(word: str, family: str) -> str:
    return "an" if word[0] in "aeiou" and family != "plain" else "a"


def _noun(o: Obj, family: str, article: str | None = None, sized: bool = False) -> str:
    if family == "after_noun":
        words = [o.size, o.shape] if sized else [o.shape]
        art = article or _article(words[0], family)
        return f"{art} {' '.join(words)} that is {o.colour}"
    words = ([o.size] if sized else []) + [o.colour, o.shape]
    if family == "comma":
        return " ".join(words)
    art = article or _article(words[0], family)
    return f"{art} {' '.join(words)}"


def _count(objs: list[Obj], family: str, sized: bool) -> str:
    o, n = objs[0], len(objs)
    num = str(n) if family == "comma" else _NUMBER[n]
    size = f"{o.size} " if sized else ""
    if family == "after_noun":
        return f"{num} {size}{_PLURAL[o.shape]} that are {o.colour}"
    return f"{num} {size}{o.colour} {_PLURAL[o.shape]}"


def _rel_words(rel: str, family: str) -> str:
    if family == "full" and rel in ("left of", "right of"):
        return f"to the {rel}"
    return rel


def _join(parts: list[str], family: str) -> str:
    if family == "comma":
        return ", ".join(parts)
    if len(parts) == 2:
        return f"{parts[0]} and {parts[1]}"
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def word(kind: str, objs: list[Obj], rel: str | None, family: str, rng: np.random.Generator | None = None,
         next_to: float = 0.0) -> str:
    """The caption of a planned scene in one wording family. ``rng`` picks among the family's
    free choices (e.g. 'next to' for a horizontal relation with probability ``next_to``; in
    'punct' the article and the final mark); None = the first choice."""
    if family not in FAMILIES:
        raise ValueError(f"word: unknown family {family!r}, expected one of {FAMILIES}")
    r = (lambda: 0.5) if rng is None else rng.random
    sized = family in ("sized", "full")
    placed = family in ("placed", "full")
    if kind == "single":
        text = _noun(objs[0], family, sized=sized)
        if placed:
            text += " " + _where(objs[0])
    elif kind == "relation":
        if rel is None or not holds(rel, objs[0], objs[1]):
            raise ValueError(f"word: relation {rel!r} does not hold for the scene's objects")
        if rel in ("left of", "right of") and rng is not None and r() < next_to:
            rel = "next to"
        a, b = _noun(objs[0], family, sized=sized), _noun(objs[1], family, sized=sized)
        if family == "punct":
            text = f"{_noun(objs[0], family, 'the')} is {_rel_words(rel, family)} {_noun(objs[1], family, 'the')}"
        else:
            text = f"{a} {_rel_words(rel, family)} {b}"
    elif kind == "count":
        text = _count(objs, family, sized)
    elif kind == "list":
        parts = [_noun(o, family, sized=sized) + (" " + _where(o) if placed else "") for o in objs]
        text = _join(parts, family)
    else:
        raise ValueError(f"word: kind must be one of {KINDS}, got {kind!r}")
    if family == "there":
        text = ("there are " if kind == "count" else "there is ") + text
    if family == "punct":
        if kind == "single" and r() < 0.5:
            text = "one " + text.split(" ", 1)[1]
        text = text[0].upper() + text[1:] + ("." if r() < 0.7 else "!")
    return text


def scene_caption(rng: np.random.Generator, cfg: CaptionConfig, max_objects: int) -> tuple[list[Obj], str, dict]:
    """A grammar-mode training item's objects, caption and recipe ({'kind', 'family', 'relation'})."""
    kind = pick_kind(rng, cfg, max_objects)
    objs, rel = plan_scene(rng, kind, max_objects)
    fams = cfg.training_families
    family = fams[int(rng.integers(len(fams)))]
    text = word(kind, objs, rel, family, rng, cfg.next_to)
    return objs, text, {"kind": kind, "family": family, "relation": rel}


def family_words(families: tuple[str, ...] = FAMILIES) -> list[str]:
    """Every word the grammar writes in ``families`` (lower case, sorted): what a tokenizer of a
    run that trains on them is fitted to."""
    words = {"a", "an", *COLOUR_NAMES, *SHAPES, *SIZES, "above", "below", "left", "right", "of", "next", "to",
             "and"}
    words |= set(_PLURAL.values()) | set(_NUMBER.values())
    extra = {"placed": ("on", "at", "in", "the", "top", "bottom", "centre"),
             "full": ("on", "at", "in", "the", "top", "bottom", "centre"),
             "after_noun": ("that", "is", "are"), "comma": ("2", "3"), "there": ("there", "is", "are"),
             "punct": ("the", "is", "one")}
    for f in families:
        if f not in FAMILIES:
            raise ValueError(f"family_words: unknown family {f!r}, expected one of {FAMILIES}")
        words |= set(extra.get(f, ()))
    return sorted(words)


__all__ = ["FAMILIES", "KINDS", "RELATIONS", "CLEAR", "CaptionConfig", "holds", "true_relation", "plan_scene",
           "pick_kind", "word", "scene_caption", "family_words"]
