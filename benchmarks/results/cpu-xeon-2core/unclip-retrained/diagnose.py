"""Where two-object prompts fail: for relation / list / count prompts (wording families plain,
placed, full, comma, after_noun; 6 each, seed 5, never training sentences) decode from the CLIP
embedding of the rendered true scene (true_zi) and from the prior's z_i (prior_zi), with the
caption, and judge both; also cos(prior z_i, true z_i).

    PYTHONPATH=. python diagnose.py PIPELINE_DIR|shipped relation,list,count '[{}, {"decoder_guidance": 6.0}]'
"""
import sys, json, numpy as np, torch
from dalle2_fast.pipeline import UnCLIPPipeline
from dalle2_fast.eval.wordings import wording_prompts, judge, training_sentences, read_recipe
from dalle2_fast.data.shapes import ShapesDataset
torch.set_grad_enabled(False)
pdir = sys.argv[1] if sys.argv[1] != "shipped" else None
pipe = UnCLIPPipeline.from_pretrained(pdir); pipe.upsamplers = []
rec = read_recipe(pdir); seen = training_sentences(rec)
ds = ShapesDataset(resolution=32)
fams = ["plain", "placed", "full", "comma", "after_noun"]
kinds = sys.argv[2].split(",") if len(sys.argv) > 2 else ["relation", "list", "count"]
cfgs = json.loads(sys.argv[3]) if len(sys.argv) > 3 else [{}]
for kind in kinds:
    ps = [p for f in fams for p in wording_prompts(f, kind, 6, 5, exclude=seen)]
    imgs = torch.stack([torch.from_numpy(ds.render(list(p.objects), np.random.default_rng(i), False).copy()).permute(2,0,1).float()/127.5-1 for i, p in enumerate(ps)])
    truth = sum(all(judge(x, p).values()) for x, p in zip(imgs, ps))
    zi_true = pipe._image_embed(imgs)
    seeds = list(range(len(ps)))
    text, zp = pipe.text_to_embeddings([p.text for p in ps], seeds)
    cos = torch.nn.functional.cosine_similarity(zp, zi_true).mean().item()
    zt = pipe.clip.encode_text([p.text for p in ps])
    for cfg in cfgs:
        r = {}
        for name, z in (("true_zi", zi_true), ("prior_zi", zp)):
            x = pipe.decode_embeddings(z, text, seeds, **cfg)
            js = [judge(xx, p) for xx, p in zip(x, ps)]
            r[name] = {k: sum(j.get(k, False) for j in js) for k in js[0]}
        print(kind, len(ps), "truth-detect", truth, "cos(prior,true)=%.3f" % cos, cfg, r, flush=True)
