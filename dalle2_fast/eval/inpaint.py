"""Does inpainting keep what it must and fill what it is asked? The report of
``dalle2-fast eval --inpaint`` on the shapes data, judged by the shapes detector.

Protocol (fixed before looking at any output): case i is item i of a two-object
``ShapesDataset`` (seed 7000, plain or textured backgrounds); the hole is a square around the
first object A, of side A.side + 0.07 (by the dataset's layout margin it never touches the
second object B's bounding square); the prompt asks for a class other than A's, cycling through
all 25 (shape, colour) pairs; image i uses seed ``seed + i``. Measured per case:

- **kept**: the largest 8-bit difference between input and output outside the hole (0 = the
  known pixels kept exactly) and the PSNR there, and whether the detector still finds B outside
  the hole;
- **fill**: the detector finds the prompt's (shape, colour), score >= 0.5, with its centre
  inside the hole;
- **seams**: the mean colour step (mean over RGB of |difference| in 8-bit levels) between
  4-neighbour pixels that straddle the hole's border, against the same step between
  4-neighbours both outside the hole (every unmasked neighbour pair of the same images); and,
  so that a pass that only moves the step inward cannot hide it, the same step between
  4-neighbours both inside the hole within 3 pixels of its border (``seam_inner``).

Rates come with Wilson 95% intervals. The pipeline is duck-typed: ``pipe.inpaint(image, mask,
prompt, n, seed, jumps=..., **kw) -> (n, 3, S, S) in [0, 1]`` and ``pipe.image_size``.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from dalle2_fast.data.shapes import COLOUR_NAMES, SHAPES, ShapesDataset
from dalle2_fast.eval.detector import detect
from dalle2_fast.eval.metrics import wilson

DATA_SEED = 7000
# the pipeline's edit defaults (inpainting.EDIT_DEFAULTS), the same without the harmonize pass,
# and the earlier default (RePaint (5, 3), the hole max-pooled for the low-resolution stages, no pass)
DEFAULT_SETTINGS = {"defaults": {}, "no_harmonize": {"harmonize": False},
                    "j5_r3_max": {"jumps": (5, 3), "mask_reduce": "max", "harmonize": False}}




def inpaint_cases(n: int, size: int) -> list[dict]:
    """The fixed cases: image (3, S, S) in [-1, 1], fill mask (S, S), hole box (x0, y0, x1, y1)
    in pixels, prompt, wanted (shape, colour), the removed object A and the kept object B."""
    ds = ShapesDataset(resolution=size, seed=DATA_SEED, min_objects=2, max_objects=2)
    classes = [(s, c) for s in SHAPES for c in COLOUR_NAMES]
    out = []
    for i in range(n):
        it = ds.item(i)
        a, b = it["objects"][:2]
        half = a.side / 2 + 0.035
        x0, y0 = max(0, math.floor((a.cx - half) * size)), max(0, math.floor((a.cy - half) * size))
        x1, y1 = min(size, math.ceil((a.cx + half) * size)), min(size, math.ceil((a.cy + half) * size))
        fill = torch.zeros(size, size)
        fill[y0:y1, x0:x1] = 1
        k = i % len(classes)
        while classes[k] == (a.shape, a.colour):
            k = (k + 1) % len(classes)
        shape, colour = classes[k]
        out.append({"image": it["image"], "fill": fill, "box": (x0, y0, x1, y1), "prompt": f"a {colour} {shape}",
                    "want": (shape, colour), "removed": a, "kept": b})
    return out


def _inside(d, box, size) -> bool:
    x0, y0, x1, y1 = box
    return x0 <= d.cx * size < x1 and y0 <= d.cy * size < y1


def seam_steps(img8: np.ndarray, fill: np.ndarray) -> tuple[float, float]:
    """(mean step across the hole border, mean step between unmasked neighbours) in 8-bit levels."""
    x = img8.astype(np.float64)
    border, inside = [], []
    for ax in (0, 1):
        d = np.abs(np.diff(x, axis=ax)).mean(-1)
        f = np.diff(fill.astype(np.int8), axis=ax) != 0
        both_out = (np.delete(fill, -1, axis=ax) == 0) & (np.delete(fill, 0, axis=ax) == 0)
        border.append(d[f])
        inside.append(d[both_out])
    return float(np.concatenate(border).mean()), float(np.concatenate(inside).mean())


def inner_band_step(img8: np.ndarray, fill: np.ndarray, width: int = 3) -> float:
    """Mean step between 4-neighbours both inside the hole and within ``width`` pixels of its
    border (8-bit levels; nan when the hole has no such pair)."""
    f = fill.astype(bool)
    inner = f.copy()  # the hole eroded by ``width`` 4-neighbour steps (beyond the image counts as hole)
    for _ in range(width):
        e = inner.copy()
        e[1:] &= inner[:-1]
        e[:-1] &= inner[1:]
        e[:, 1:] &= inner[:, :-1]
        e[:, :-1] &= inner[:, 1:]
        inner = e
    ring = f & ~inner
    x = img8.astype(np.float64)
    steps = []
    for ax in (0, 1):
        d = np.abs(np.diff(x, axis=ax)).mean(-1)
        steps.append(d[np.delete(ring, -1, axis=ax) & np.delete(ring, 0, axis=ax)])
    s = np.concatenate(steps)
    return float(s.mean()) if s.size else float("nan")


def _u8(x: torch.Tensor) -> np.ndarray:
    """(3, S, S) in [0, 1] -> (S, S, 3) uint8 (the PNG a user would get)."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two 8-bit arrays (inf when equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


@torch.no_grad()
def score_case(case: dict, out01: torch.Tensor) -> dict:
    size = out01.shape[-1]
    got, src = _u8(out01), _u8((case["image"] + 1) / 2)
    fill = case["fill"].numpy()
    keep = fill == 0
    dets = [d for d in detect(out01 * 2 - 1) if d.score >= 0.5]
    b = case["kept"]
    border, inside = seam_steps(got, fill)
    return {
        "prompt": case["prompt"],
        "kept_max_diff": int(np.abs(got.astype(int) - src.astype(int))[keep].max()),
        "kept_psnr_db": _psnr(got[keep], src[keep]),
        "fill_ok": any((d.shape, d.colour) == case["want"] and _inside(d, case["box"], size) for d in dets),
        "other_found": any((d.shape, d.colour) == (b.shape, b.colour) and not _inside(d, case["box"], size)
                           for d in dets),
        "seam_border": border,
        "seam_unmasked": inside,
        "seam_inner": inner_band_step(got, fill),
        "detections": [(d.shape, d.colour, round(d.cx, 2), round(d.cy, 2), round(d.score, 2)) for d in dets],
    }


def summarise(rows: list[dict], seconds: float) -> dict:
    n = len(rows)
    k_fill = sum(r["fill_ok"] for r in rows)
    k_other = sum(r["other_found"] for r in rows)
    k_exact = sum(r["kept_max_diff"] == 0 for r in rows)
    sb = float(np.mean([r["seam_border"] for r in rows]))
    su = float(np.mean([r["seam_unmasked"] for r in rows]))
    si = float(np.nanmean([r.get("seam_inner", float("nan")) for r in rows]))
    return {"n": n, "fill_rate": k_fill / n, "fill_ci95": wilson(k_fill, n),
            "other_kept_rate": k_other / n, "other_kept_ci95": wilson(k_other, n),
            "kept_exact_rate": k_exact / n, "kept_max_diff": max(r["kept_max_diff"] for r in rows),
            "kept_psnr_db_min": min(r["kept_psnr_db"] for r in rows),
            "kept_psnr_db_median": float(np.median([r["kept_psnr_db"] for r in rows])),
            "seam_border_mean": sb, "seam_unmasked_mean": su, "seam_ratio": sb / su if su else float("nan"),
            "seam_border_median": float(np.median([r["seam_border"] for r in rows])), "seam_inner_mean": si,
            "seconds": round(seconds, 1), "seconds_per_image": round(seconds / n, 2)}


def evaluate_inpainting(pipe, out_dir: str | Path, n_cases: int = 50, seed: int = 0, settings=None,
                        progress: bool = True, **kw) -> dict:
    """Run the protocol for each ``settings`` entry (name -> extra ``inpaint`` keywords, default
    ``DEFAULT_SETTINGS``); write ``inpaint.json`` (after each setting) and
    ``inpaint.png`` (per case: input with the hole greyed, then each setting's output)."""
    from dalle2_fast.data.images import make_grid, save_png

    settings = settings or DEFAULT_SETTINGS
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = pipe.image_size
    cases = inpaint_cases(n_cases, size)
    res = {"protocol": {"n_cases": n_cases, "data_seed": DATA_SEED, "seed": seed, "size": size,
                        "defaults": dict(getattr(pipe, "defaults", {})), **{k: str(v) for k, v in kw.items()}},
           "results": {}, "cases": {}}
    pics = {name: [] for name in settings}
    for name, extra in settings.items():
        rows, t0 = [], time.time()
        for i, c in enumerate(cases):
            x = pipe.inpaint(c["image"], c["fill"], c["prompt"], n=1, seed=seed + i, **extra, **kw)[0].cpu()
            rows.append(score_case(c, x))
            if i < 8:
                pics[name].append(x)
            if progress:
                print(f"{name} {i + 1}/{n_cases} fill_ok={rows[-1]['fill_ok']} kept={rows[-1]['kept_max_diff']}",
                      flush=True)
        res["results"][name] = summarise(rows, time.time() - t0)
        res["results"][name]["settings"] = {k: list(v) if isinstance(v, tuple) else v for k, v in extra.items()}
        res["cases"][name] = rows
        if progress:
            print(name, {k: v for k, v in res["results"][name].items()}, flush=True)
        (out / "inpaint.json").write_text(json.dumps(res, indent=1, default=str))  # after each setting
    shown = []
    for i, c in enumerate(cases[:8]):
        inp = (c["image"] + 1) / 2
        shown.append(torch.where(c["fill"].bool(), 0.5 + 0.5 * inp, inp))  # the hole washed out
        shown.extend(pics[name][i] for name in settings)
    save_png(make_grid(torch.stack(shown) * 2 - 1, nrow=1 + len(settings), pad=2), out / "inpaint.png",
             {"rows": "cases 0-7", "columns": ["input (hole washed out)", *settings], "seed": seed})
    return res


__all__ = ["evaluate_inpainting", "inpaint_cases", "score_case", "seam_steps", "inner_band_step", "wilson", "summarise"]
