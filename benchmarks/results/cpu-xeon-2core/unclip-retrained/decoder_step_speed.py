"""The decoder's forward+backward+AdamW step at batch 32 (2 threads) with and without the text
transformer: what the text path costs a training step.

    PYTHONPATH=. python decoder_step_speed.py
"""
import time, torch
from dataclasses import replace
from dalle2_fast.recipes.unclip import recipe_from_args, build_decoder
from dalle2_fast.models.clip import ClipAdapter
from dalle2_fast.pipeline import read_manifest, shipped_weights_dir
torch.set_num_threads(2)
clip = ClipAdapter.from_pretrained(read_manifest(shipped_weights_dir())["clip"]).eval()
for layers in (0, 2):
    r = recipe_from_args(0, 1.0, None, None, "grammar", "bpe", layers, 3)
    dec = build_decoder(r, clip).train()
    opt = torch.optim.AdamW(dec.parameters(), 1e-4)
    x = torch.randn(32, 3, 32, 32)
    caps = ["a red circle above a blue square"] * 32
    with torch.no_grad():
        text = clip.encode_text(caps); z = text.embed if hasattr(text, "embed") else None
    ts = []
    for i in range(8):
        t0 = time.perf_counter()
        t = torch.randint(0, 1000, (32,))
        out = dec(x, t, torch.nn.functional.normalize(torch.randn(32, clip.embed_dim), dim=-1), text.tokens, text.mask)
        loss = out.float().pow(2).mean(); opt.zero_grad(); loss.backward(); opt.step()
        ts.append(time.perf_counter() - t0)
    print("text layers", layers, "params %.2fM" % (sum(p.numel() for p in dec.parameters()) / 1e6), "s/step median", sorted(ts[2:])[3])
