"""Inpainting variants on a pipeline directory: image_mix 0.3 / 0.5, prior guidance 4.

    PYTHONPATH=. python inpaint/variants2.py PIPELINE_DIR OUT
"""
import sys, torch
from dalle2_fast.pipeline import UnCLIPPipeline
from dalle2_fast.eval.inpaint import evaluate_inpainting
torch.set_grad_enabled(False)
pipe = UnCLIPPipeline.from_pretrained(sys.argv[1])
settings = {"mix3": {"image_mix": 0.3}, "mix5": {"image_mix": 0.5}, "pg4": {"prior_guidance": 4.0}}
r = evaluate_inpainting(pipe, sys.argv[2], 30, 0, settings=settings)
print({k: (round(v["fill_rate"], 3), round(v["seam_border_mean"], 2)) for k, v in r["results"].items()})
