"""Inpainting with an oracle embedding: the CLIP image embedding of the wanted result (the kept
object and the asked one drawn where the removed one was) in place of the prior's z_i, with the
prompt as the decoder's caption and without it; 30 cases of the inpainting eval.

    PYTHONPATH=. python inpaint/oracle.py PIPELINE_DIR|shipped
"""
import sys, numpy as np, torch
from dataclasses import replace
from dalle2_fast.pipeline import UnCLIPPipeline
from dalle2_fast.eval.inpaint import inpaint_cases, score_case
from dalle2_fast.data.shapes import ShapesDataset
torch.set_grad_enabled(False)
pipe = UnCLIPPipeline.from_pretrained(None if sys.argv[1] == "shipped" else sys.argv[1])
cases = inpaint_cases(30, pipe.image_size)
ds = ShapesDataset(resolution=32)
orig = pipe.text_to_embeddings
for mode in ("oracle_z", "oracle_z_notext"):
    ok = 0
    for i, c in enumerate(cases):
        a, b = c["removed"], c["kept"]
        shape, colour = c["want"]
        comp = [b, replace(a, shape=shape, colour=colour)]
        img = torch.from_numpy(ds.render(comp, np.random.default_rng(i), False).copy()).permute(2, 0, 1).float() / 127.5 - 1
        z = pipe._image_embed(img[None])
        def tte(*a_, **k_):
            t, zz = orig(*a_, **k_)
            return (None if mode.endswith("notext") else t), z.expand_as(zz)
        pipe.text_to_embeddings = tte
        x = pipe.inpaint(c["image"], c["fill"], c["prompt"], n=1, seed=i)[0]
        ok += score_case(c, x)["fill_ok"]
    pipe.text_to_embeddings = orig
    print(sys.argv[1], mode, ok, "/30", flush=True)
