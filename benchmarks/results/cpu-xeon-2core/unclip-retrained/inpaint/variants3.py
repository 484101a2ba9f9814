"""Inpainting variants on a pipeline directory: jumps (10, 10), 30 decoder steps, no jumps, decoder
guidance 1.

    PYTHONPATH=. python inpaint/variants3.py PIPELINE_DIR OUT
"""
import sys, torch
from dalle2_fast.pipeline import UnCLIPPipeline
from dalle2_fast.eval.inpaint import evaluate_inpainting
torch.set_grad_enabled(False)
pipe = UnCLIPPipeline.from_pretrained(sys.argv[1])
settings = {"j10_10": {"jumps": (10, 10)}, "steps30": {"decoder_steps": 30}, "nojumps": {"jumps": None}, "g1": {"decoder_guidance": 1.0}}
r = evaluate_inpainting(pipe, sys.argv[2], 30, 0, settings=settings)
print({k: (round(v["fill_rate"], 3), round(v["seam_border_mean"], 2)) for k, v in r["results"].items()})
