"""The candidate pipeline from a run's stages: its CLIP, prior and decoder, the shipped upsamplers
(their stage keys equal this recipe's) and the shipped sampling defaults, with the recipe.json.

    PYTHONPATH=. python assemble.py runs/u16 runs/u16/cand
"""
import json, sys, dataclasses
from pathlib import Path
from dalle2_fast.pipeline import UnCLIPPipeline, read_manifest, shipped_weights_dir
from dalle2_fast.recipes.unclip import StageStore, recipe_from_args
from dalle2_fast.checkpoint import load_pretrained
run, out = Path(sys.argv[1]), Path(sys.argv[2])
r = recipe_from_args(0, 1.0, None, None, 'grammar', 'bpe', 2, 3)
store = StageStore(run, r)
for s in ("clip", "prior", "decoder"):
    assert store.done(s), s
shipped = UnCLIPPipeline.from_pretrained(None)
pipe = UnCLIPPipeline(store.load("clip"), store.load("prior"), store.load("decoder"), shipped.upsamplers,
                      defaults=read_manifest(shipped_weights_dir())["defaults"])
pipe.save_pretrained(out)
(out / "recipe.json").write_text(json.dumps(dataclasses.asdict(r), indent=2))
print("saved", out)
