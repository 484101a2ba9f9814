"""The candidate pipeline with a continued decoder: PIPELINE_DIR's CLIP, prior and upsamplers, the
decoder from RUN/stages/decoder/final.

    PYTHONPATH=. python longer/assemble_longer.py runs/u16/cand /tmp/ft runs/u16/cand6500
"""
import json, sys, shutil
from pathlib import Path
from dalle2_fast.pipeline import UnCLIPPipeline, read_manifest, shipped_weights_dir
from dalle2_fast.models.clip import ClipAdapter
from dalle2_fast.checkpoint import load_pretrained
cand, ft, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
base = UnCLIPPipeline.from_pretrained(cand)
dec = load_pretrained(ft / "stages/decoder/final").eval()
pipe = UnCLIPPipeline(base.clip, base.prior, dec, base.upsamplers, defaults=base.defaults)
pipe.save_pretrained(out)
shutil.copy(cand / "recipe.json", out / "recipe.json")
print("saved", out)
