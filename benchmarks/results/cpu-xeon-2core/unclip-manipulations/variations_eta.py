"""Variations from the inverted latent at the decoder's 32 px: how close to the input (PSNR) and
how different from each other (mean pairwise PSNR) they are, per DDIM eta.

    PYTHONPATH=. python benchmarks/results/cpu-xeon-2core/unclip-manipulations/variations_eta.py
"""
import itertools
import json
from pathlib import Path

import torch

from dalle2_fast.data.shapes import ShapesDataset
from dalle2_fast.pipeline import UnCLIPPipeline

torch.set_num_threads(2)


def psnr(a, b):
    return (10 * torch.log10(4 / ((a.clamp(-1, 1) - b) ** 2).mean())).item()


if __name__ == "__main__":
    pipe = UnCLIPPipeline.from_pretrained(None)
    base = UnCLIPPipeline(pipe.clip, pipe.prior, pipe.decoder, [], defaults=pipe.defaults)
    xs = ShapesDataset(resolution=32, seed=123, size=4).batch(0, 4)["image"]
    out = {}
    for eta in (0.0, 0.3, 0.6, 1.0):
        to_in, between = [], []
        for x in xs:
            v = base.variations(x, n=4, seed=0, eta=eta) * 2 - 1
            to_in += [psnr(vi, x) for vi in v]
            between += [psnr(v[i], v[j]) for i, j in itertools.combinations(range(4), 2)]
        out[str(eta)] = {"psnr_to_input_db": round(sum(to_in) / len(to_in), 2),
                         "psnr_between_variations_db": round(sum(between) / len(between), 2),
                         "inputs": 4, "variations_per_input": 4}
        print(eta, out[str(eta)], flush=True)
    (Path(__file__).parent / "variations_eta.json").write_text(json.dumps(out, indent=2) + "\n")
