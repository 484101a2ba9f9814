"""Inpainting with a prompt that words the whole result (the asked object and the kept one), 30
cases of the inpainting eval.

    PYTHONPATH=. python inpaint/whole_prompt.py PIPELINE_DIR|shipped
"""
import sys, torch
from dalle2_fast.pipeline import UnCLIPPipeline
from dalle2_fast.eval.inpaint import inpaint_cases, score_case
torch.set_grad_enabled(False)
pipe = UnCLIPPipeline.from_pretrained(None if sys.argv[1] == "shipped" else sys.argv[1])
cases = inpaint_cases(30, pipe.image_size)
ok = kept = 0
for i, c in enumerate(cases):
    b = c["kept"]; shape, colour = c["want"]
    a = c["removed"]
    # the whole result in words, the new object first, with its true relation when one is clear
    prompt = f"a {colour} {shape} and a {b.colour} {b.shape}"
    x = pipe.inpaint(c["image"], c["fill"], prompt, n=1, seed=i)[0]
    s = score_case(c, x)
    ok += s["fill_ok"]; kept += s.get("other_kept", 0)
print(sys.argv[1], "whole-result prompt", ok, "/30", "other kept", kept, flush=True)
