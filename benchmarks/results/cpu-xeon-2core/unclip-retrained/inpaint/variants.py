"""Inpainting variants on a pipeline directory: the caption dropped from the decoder (notext) or
its scale set to 1 (tg1), each with decoder guidance 3 and 5.

    PYTHONPATH=. python inpaint/variants.py PIPELINE_DIR notext|tg1 OUT
"""
import sys, torch
from dalle2_fast.pipeline import UnCLIPPipeline
from dalle2_fast.eval.inpaint import evaluate_inpainting
torch.set_grad_enabled(False)
pipe = UnCLIPPipeline.from_pretrained(sys.argv[1])
mode = sys.argv[2]
if mode == "notext":
    orig = pipe.text_to_embeddings
    pipe.text_to_embeddings = lambda *a, **k: (None, orig(*a, **k)[1])
elif mode == "tg1":
    orig = pipe.decode_embeddings
    pipe.decode_embeddings = lambda *a, **k: orig(*a, decoder_text_guidance=1.0, **k)
settings = {"defaults": {}, "g5": {"decoder_guidance": 5.0}}
r = evaluate_inpainting(pipe, sys.argv[3], 30, 0, settings=settings)
print(mode, {k: (round(v["fill_rate"], 3), round(v["seam_border_mean"], 2)) for k, v in r["results"].items()})
