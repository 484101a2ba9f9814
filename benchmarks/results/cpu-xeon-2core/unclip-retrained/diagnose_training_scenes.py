"""The decoder alone on its own training scenes: 40 two-object training items (every 10th of the
first 2000), decoded from their true CLIP image embedding and their training caption, judged by
the detector; writes a picture (inputs above, decodes below).

    PYTHONPATH=. python diagnose_training_scenes.py PIPELINE_DIR
"""
import sys, json, numpy as np, torch
from dalle2_fast.pipeline import UnCLIPPipeline
from dalle2_fast.eval.wordings import wording_prompts, judge, training_sentences, read_recipe
from dalle2_fast.eval.detector import detect
from dalle2_fast.data.shapes import ShapesDataset
from dalle2_fast.data.captions import CaptionConfig
from dalle2_fast.data.images import make_grid, save_png
torch.set_grad_enabled(False)
pdir = sys.argv[1]
pipe = UnCLIPPipeline.from_pretrained(pdir); pipe.upsamplers = []
rec = read_recipe(pdir)
ds = ShapesDataset(resolution=32, seed=0, size=20000, max_objects=rec["max_objects"], captions=CaptionConfig(mode="grammar", held_out=rec["held_out"]))
items = [ds.item(i) for i in range(0, 2000, 10)]
items = [it for it in items if len(it["objects"]) == 2 and it["caption_info"]["kind"] in ("relation", "list")][:40]
imgs = torch.stack([it["image"] for it in items])
caps = [it["caption"] for it in items]
def ok(x, objs):
    dets = [d for d in detect(x) if d.score >= 0.7]
    return all(any((d.shape, d.colour) == (o.shape, o.colour) for d in dets) for o in objs)
print("truth", sum(ok(x, it["objects"]) for x, it in zip(imgs, items)), len(items))
zi = pipe._image_embed(imgs)
text = pipe.clip.encode_text(caps)
seeds = list(range(len(items)))
x = pipe.decode_embeddings(zi, text, seeds)
print("train-scenes true zi + caption:", sum(ok(a, it["objects"]) for a, it in zip(x, items)))
for c in caps[:8]: print(c)
save_png(make_grid(torch.cat([imgs[:16], x[:16].clamp(-1, 1)]), nrow=16), sys.argv[2] if len(sys.argv) > 2 else "diag_training_scenes.png", scale=4)
