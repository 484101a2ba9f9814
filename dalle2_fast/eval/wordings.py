"""The wording report: does a text-to-image pipeline draw what a prompt says, however it is worded?

For every wording family of the caption grammar (:mod:`dalle2_fast.data.captions`) and every scene
kind, prompts are drawn from a seed fixed in advance (``seed``; the images use the same seed),
never a sentence of the pipeline's training captions (those are rebuilt from the run's
``recipe.json``; without one, the default recipe's legacy captions are assumed and the report says
so). The shapes detector judges each image at base resolution; the rows are

- ``single``: one object, its colour and shape right;
- ``two``: two-object prompts (relations and lists), both objects' colour and shape right;
- ``relation``: relation prompts, both objects right *and* the stated relation true of the detected
  centres (:func:`~dalle2_fast.data.captions.holds`, margin 1);
- ``count``: 'two red circles': exactly that many detections of that colour and shape.

Each cell gives the matches, the number of images and a 95% Wilson interval; the held-out family
of a grammar-trained run is marked unseen. ``dalle2-fast eval --wordings`` writes
``wordings.json``, ``wordings.md`` and ``hardest.png`` (the prompts with the fewest matches, a row
of images each).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dalle2_fast.data.captions import FAMILIES, KINDS, CaptionConfig, holds, plan_scene, word
from dalle2_fast.data.shapes import Obj, ShapesDataset
from dalle2_fast.eval.detector import Detection, detect
from dalle2_fast.eval.metrics import wilson

ROWS = ("single", "two", "relation", "count")
_ROWS_OF = {"single": ("single",), "relation": ("two", "relation"), "list": ("two",), "count": ("count",)}
_MAIN_ROW = {"single": "single", "relation": "relation", "list": "two", "count": "count"}




@dataclass(frozen=True)
class Prompt:
    text: str
    family: str
    kind: str
    objects: tuple[Obj, ...]
    relation: str | None


def wording_prompts(family: str, kind: str, n: int, seed: int = 0, exclude: set[str] = frozenset()) -> list[Prompt]:
    """``n`` distinct prompts of ``family`` and ``kind`` (two objects for relations and lists, two
    or three for counts), none in ``exclude``, drawn from ``(seed, family, kind)``; fewer when the
    family cannot word that many new sentences."""
    rng = np.random.default_rng([seed, 9173, FAMILIES.index(family), KINDS.index(kind)])
    out: list[Prompt] = []
    seen: set[str] = set()
    for _ in range(60 * n):
        if len(out) == n:
            break
        objs, rel = plan_scene(rng, kind, 3 if kind == "count" else 2 if kind != "single" else 1)
        text = word(kind, objs, rel, family, rng, next_to=0.25)
        if text in exclude or text in seen:
            continue
        seen.add(text)
        # the stated relation, as worded ('next to' when the wording chose it)
        said = "next to" if (rel in ("left of", "right of") and " next to " in f" {text} ") else rel
        out.append(Prompt(text, family, kind, tuple(objs), said))
    return out


def _best(dets: list[Detection], shape: str, colour: str) -> Detection | None:
    m = [d for d in dets if (d.shape, d.colour) == (shape, colour)]
    return max(m, key=lambda d: d.area) if m else None


def judge(image: torch.Tensor, p: Prompt, min_score: float = 0.7) -> dict[str, bool]:
    """The rows of ``p.kind`` for one image (3, H, W) in [-1, 1]: {row: matched}."""
    dets = [d for d in detect(image) if d.score >= min_score]
    if p.kind == "count":
        o = p.objects[0]
        return {"count": bool(sum((d.shape, d.colour) == (o.shape, o.colour) for d in dets) == len(p.objects))}
    found = [_best(dets, o.shape, o.colour) for o in p.objects]
    ok = all(f is not None for f in found)
    if p.kind == "single":
        return {"single": ok}
    out = {"two": ok}
    if p.kind == "relation":
        out["relation"] = ok and bool(holds(p.relation, *[Obj(o.shape, o.colour, "small", d.cx, d.cy, d.side)
                                                          for o, d in zip(p.objects, found)]))
    return out


def training_sentences(recipe: dict | None) -> set[str]:
    """The captions a run trained on, rebuilt from its recipe (the unCLIP recipe's fields)."""
    r = recipe or {}
    cfg = None
    if r.get("captions", "legacy") != "legacy":
        cfg = CaptionConfig(mode=r["captions"], held_out=r.get("held_out", ""))
    ds = ShapesDataset(resolution=16, seed=int(r.get("seed", 0)), size=int(r.get("n_train", 20000)),
                       max_objects=int(r.get("max_objects", 2)), captions=cfg)
    return {ds.caption(i) for i in range(ds.size)}


def read_recipe(pipeline_dir: str | Path | None) -> dict | None:
    """The ``recipe.json`` beside a pipeline (in it or its parent run directory), else None."""
    if pipeline_dir is None:
        return None
    for p in (Path(pipeline_dir) / "recipe.json", Path(pipeline_dir).parent / "recipe.json"):
        if p.is_file():
            return json.loads(p.read_text())
    return None


def _cell(k: int, n: int) -> dict:
    lo, hi = wilson(k, n)
    return {"matched": k, "n": n, "rate": (k / n) if n else None, "ci95": [round(lo, 4), round(hi, 4)]}


@torch.no_grad()
def wording_report(pipe, out_dir: str | Path, recipe: dict | None = None, n_prompts: int = 2, n_images: int = 2,
                   seed: int = 0, families=FAMILIES, hardest: int = 8, progress: bool = True, **sample_kw) -> dict:
    """Write the wording report of ``pipe`` (see the module docstring) into ``out_dir``:
    ``n_prompts`` prompts per family and scene kind, ``n_images`` images each. ``recipe``: the
    run's recipe (None: the default recipe's legacy captions are assumed)."""
    from dalle2_fast.data.images import make_grid, save_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    assumed = recipe is None
    rec = recipe or {"captions": "legacy", "seed": 0, "n_train": 20000, "max_objects": 2}
    grammar = rec.get("captions", "legacy") == "grammar"
    held = rec.get("held_out", "") if grammar else ""
    seen = training_sentences(rec)
    res: dict = {"settings": {"seed": seed, "n_prompts": n_prompts, "n_images": n_images, **dict(pipe.defaults),
                              **sample_kw},
                 "training_captions": {"captions": rec.get("captions", "legacy"), "held_out": held,
                                       "assumed_default_recipe": assumed, "sentences": len(seen)},
                 "families": {}, "rows": {}}
    ups = pipe.upsamplers
    pipe.upsamplers = []  # judge the base resolution, as the caption content depends on it
    per_prompt = []
    totals = {r: [0, 0] for r in ROWS}
    try:
        for fam in families:
            t0 = time.time()
            status = ("unseen (held out)" if fam == held else "trained") if grammar else \
                "not a training wording (the run trained on the legacy captions)"
            cells = {r: [0, 0] for r in ROWS}
            short = {}
            for kind in KINDS:
                prompts = wording_prompts(fam, kind, n_prompts, seed, exclude=seen)
                if len(prompts) < n_prompts:
                    short[kind] = n_prompts - len(prompts)
                if not prompts:
                    continue
                imgs = pipe([p.text for p in prompts], num_images_per_prompt=n_images, seed=seed, **sample_kw)
                for j, p in enumerate(prompts):
                    shots = imgs[j * n_images:(j + 1) * n_images]
                    verdicts = [judge(x * 2 - 1, p) for x in shots]
                    for row in _ROWS_OF[kind]:
                        k = sum(v[row] for v in verdicts)
                        cells[row][0] += k
                        cells[row][1] += len(verdicts)
                    main = _MAIN_ROW[kind]
                    per_prompt.append({"prompt": p.text, "family": fam, "kind": kind, "row": main,
                                       "matched": sum(v[main] for v in verdicts), "n": len(verdicts),
                                       "images": shots})
            for r in ROWS:
                totals[r][0] += cells[r][0]
                totals[r][1] += cells[r][1]
            res["families"][fam] = {"status": status, **{r: _cell(*cells[r]) for r in ROWS},
                                    **({"prompts_short": short} if short else {}),
                                    "seconds": round(time.time() - t0, 1)}
            if progress:
                print(fam, {r: f"{cells[r][0]}/{cells[r][1]}" for r in ROWS}, flush=True)
    finally:
        pipe.upsamplers = ups
    res["rows"] = {r: _cell(*totals[r]) for r in ROWS}
    worst = sorted(per_prompt, key=lambda q: (q["matched"] / q["n"], q["family"], q["prompt"]))[:hardest]
    res["hardest"] = [{k: v for k, v in q.items() if k != "images"} for q in worst]
    (out / "wordings.json").write_text(json.dumps(res, indent=2))
    (out / "wordings.md").write_text(markdown(res))
    if worst:
        grid = torch.cat([q["images"] for q in worst])
        save_png(make_grid(grid * 2 - 1, nrow=n_images), out / "hardest.png",
                 {"prompts": [q["prompt"] for q in worst], "seed": seed, "images_per_prompt": n_images,
                  "rows": "one prompt per row, hardest first", **sample_kw})
    return res


def markdown(res: dict) -> str:
    """The report as a Markdown table: a row per family, a column per row kind."""
    def fmt(c):
        if not c["n"]:
            return "–"
        return f"{c['matched']}/{c['n']} = {100 * c['rate']:.0f}% [{100 * c['ci95'][0]:.0f}, {100 * c['ci95'][1]:.0f}]"

    tc = res["training_captions"]
    lines = [f"# Wording report (seed {res['settings']['seed']}, {res['settings']['n_prompts']} prompts per family "
             f"and scene kind, {res['settings']['n_images']} images each)", "",
             f"Training captions: {tc['captions']}" + (f", held-out family {tc['held_out']!r}" if tc["held_out"] else "")
             + (" (assumed: the default recipe; no recipe.json beside the pipeline)" if tc["assumed_default_recipe"]
                else "") + f"; prompts exclude its {tc['sentences']} training sentences.", "",
             "Cells: matched/images = rate [95% Wilson interval], judged by the shapes detector at base resolution.",
             "", "| family | status | " + " | ".join(ROWS) + " |", "|---|---|" + "---|" * len(ROWS)]
    for fam, d in res["families"].items():
        lines.append(f"| {fam} | {d['status']} | " + " | ".join(fmt(d[r]) for r in ROWS) + " |")
    lines.append("| **all** | | " + " | ".join(fmt(res["rows"][r]) for r in ROWS) + " |")
    lines += ["", "Hardest prompts (hardest.png, one row each):", ""]
    lines += [f"- {q['matched']}/{q['n']} `{q['prompt']}` ({q['family']}, {q['row']})" for q in res["hardest"]]
    return "\n".join(lines) + "\n"


__all__ = ["ROWS", "Prompt", "wilson", "wording_prompts", "judge", "training_sentences", "read_recipe",
           "wording_report", "markdown"]
