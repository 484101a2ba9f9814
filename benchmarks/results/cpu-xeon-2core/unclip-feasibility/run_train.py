"""Feasibility run of the unclip recipe on the shared CPU (one process, one thread)."""
import json, sys, time, torch
torch.set_num_threads(1)
from dalle2_fast.unclip_train import (Stage, UnCLIPRecipe, train_unclip, eval_prompts, caption_match_rate)
from dalle2_fast.pipeline import make_grid, to_pil
out = sys.argv[1]
minutes = float(sys.argv[2])
r = UnCLIPRecipe(seed=0, n_train=8000, base_res=32, upsample_res=(64,), max_objects=2,
                 clip=Stage(3000, 64, 1e-3, 0.10 * minutes), prior=Stage(100000, 128, 3e-4, 0.07 * minutes),
                 decoder=Stage(100000, 32, 6e-4, 0.72 * minutes), upsampler=Stage(100000, 8, 5e-4, 0.11 * minutes),
                 prior_width=128, prior_layers=4, decoder_channels=32, decoder_res_blocks=1, upsampler_channels=32)
t0 = time.time()
pipe = train_unclip(r, out, progress=True)
print("trained in", time.time() - t0, flush=True)
res = {}
for name, two in (("single", False), ("two", True)):
    t1 = time.time()
    res[name] = caption_match_rate(pipe, eval_prompts(two), n_per_prompt=2 if not two else 1, seed=0)
    print(name, res[name], "eval s", time.time() - t1, flush=True)
json.dump(res, open(f"{out}/caption_match.json", "w"), indent=2)
imgs = pipe(["a red circle above a blue square", "a green triangle", "a yellow star", "a purple diamond"],
            num_images_per_prompt=4, seed=0)
to_pil(make_grid(imgs, nrow=4)[None])[0].save(f"{out}/demo.png")
print("done", time.time() - t0, flush=True)
