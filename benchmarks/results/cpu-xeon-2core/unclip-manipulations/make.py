"""Regenerates this directory: the DDIM-inversion round trip on the shipped decoder (PSNR) and a
grid of the paper's manipulations with the shipped pipeline.

    PYTHONPATH=. python benchmarks/results/cpu-xeon-2core/unclip-manipulations/make.py [--grid-only]
"""
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dalle2_fast.data.images import make_grid, save_png
from dalle2_fast.data.shapes import ShapesDataset
from dalle2_fast.pipeline import UnCLIPPipeline

OUT = Path(__file__).parent
torch.set_num_threads(2)


def psnr(a, b):
    return 10 * torch.log10(4 / ((a.clamp(-1, 1) - b) ** 2).mean(dim=(1, 2, 3)))


def inversion_table(pipe):
    """Decoder-level round trip (32 px): invert 8 images, decode at eta 0 under the same guidance."""
    dec = pipe.decoder
    x = ShapesDataset(resolution=32, seed=123, size=8).batch(0, 8)["image"]
    z = pipe._image_embed(x)
    rows = []
    for steps in ("15", "ddim15", "ddim25", "ddim50"):
        for g in (1.0, 3.0):
            x_T = dec.invert(x, z, None, steps=steps, guidance=g)
            back = dec.sample(z, None, seeds=range(8), steps=steps, guidance=g, x_T=x_T, eta=0.0, clip=None,
                              sampler="ddim")
            p = psnr(back, x)
            rows.append({"steps": steps, "guidance": g, "psnr_mean_db": round(p.mean().item(), 2),
                         "psnr_min_db": round(p.min().item(), 2), "n": 8})
            print(rows[-1], flush=True)
    return rows


def grid(pipe):
    data = ShapesDataset(resolution=128, seed=123, size=2).batch(0, 2)
    xa, xb = data["image"][0], data["image"][1]
    cap = data["caption"][0]
    colours = ("red", "green", "blue", "yellow", "purple", "orange")
    old = next(c for c in colours if c in cap.split())
    new = "blue" if old != "blue" else "red"
    to = cap.replace(old, new, 1)
    rows, t0, meta = [], time.time(), {}
    rows.append(torch.cat([xa[None] * 0.5 + 0.5, pipe.variations(xa, n=4, seed=0)]))
    rows.append(torch.cat([xa[None] * 0.5 + 0.5, pipe.variations(xa, n=4, seed=0, latent="noise")]))
    rows.append(pipe.interpolate(xa, xb, n=5, seed=0))
    rows.append(pipe.interpolate(xa, xb, n=5, seed=0, latent="inverted"))
    td = pipe.text_diff(xa, cap, to, n=5, max_angle=0.5, seed=0)
    rows.append(td)
    rows.append(pipe.text_diff(xa, cap, to, n=5, max_angle=0.5, seed=0, invert=False))
    meta["seconds"] = round(time.time() - t0)
    meta["text_diff"] = {"from": cap, "to": to, "theta0_psnr_db_128px": round(psnr(td[:1] * 2 - 1, xa[None]).item(), 2)}
    meta["interp_inverted_end_psnr_db_128px"] = [round(psnr(rows[3][:1] * 2 - 1, xa[None]).item(), 2),
                                                 round(psnr(rows[3][-1:] * 2 - 1, xb[None]).item(), 2)]
    img = torch.cat(rows) * 2 - 1
    small = F.interpolate(img, size=(96, 96), mode="bicubic", antialias=True).clamp(-1, 1)
    save_png(make_grid(small, nrow=5, pad=2), OUT / "manipulations.png", {"rows": [
        "input | variations (inverted latent, eta 1)", "input | variations (fresh noise)",
        "interpolation (one seeded noise)", "interpolation (slerp of inverted latents)",
        f"text diff {cap!r} -> {to!r} (inverted latent)", "text diff (seeded noise, to-caption)"]})
    print(meta, flush=True)
    return meta


if __name__ == "__main__":
    pipe = UnCLIPPipeline.from_pretrained(None)
    res = {"machine": "Intel Xeon, 2 cores (cpu-xeon-2core), shared with other jobs"}
    if "--grid-only" not in sys.argv:
        res["inversion"] = inversion_table(pipe)
    res["grid"] = grid(pipe)
    (OUT / "results.json").write_text(json.dumps(res, indent=2) + "\n")
