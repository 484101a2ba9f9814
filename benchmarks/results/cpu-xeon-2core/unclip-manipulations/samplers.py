"""Caption match of the shipped pipeline (shapes detector, decoder's 32 px, single-object prompts
never used as training sentences) under the decoder's samplers and split guidance scales.

    PYTHONPATH=. python benchmarks/results/cpu-xeon-2core/unclip-manipulations/samplers.py
"""
import json
import time
from pathlib import Path

import torch

from dalle2_fast.eval.captions import caption_match_rate, eval_prompts
from dalle2_fast.pipeline import UnCLIPPipeline

torch.set_num_threads(2)
CONFIGS = {
    "default (ddim eta 1, guidance 3)": {},
    "ddpm ancestral, learned variance": {"decoder_sampler": "ddpm"},
    "split: image 3, text 5": {"decoder_image_guidance": 3.0, "decoder_text_guidance": 5.0},
    "split: image 5, text 1": {"decoder_image_guidance": 5.0, "decoder_text_guidance": 1.0},
}

if __name__ == "__main__":
    pipe = UnCLIPPipeline.from_pretrained(None)
    prompts = eval_prompts()
    out = {}
    for name, kw in CONFIGS.items():
        t0 = time.time()
        out[name] = {**caption_match_rate(pipe, prompts, n_per_prompt=2, seed=0, **kw), "seconds": round(time.time() - t0)}
        print(name, out[name], flush=True)
    (Path(__file__).parent / "samplers.json").write_text(json.dumps(out, indent=2) + "\n")
