"""One forward of a Karlo-reduced U-Net (the first super-resolution network at 256 px, or the
decoder), eager against torch.compile with inductor's freezing (constant weights: oneDNN
convolutions with prepacked weights and fused epilogues); min of 3 each, interleaved.

    PYTHONPATH=. python freeze_compile.py THREADS up|dec cl|nchw
"""
import time, sys, torch
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
from dalle2_fast.bench.unclip_peers import pipelines, STEPS, PROMPTS
torch.set_grad_enabled(False)
P = pipelines(False)
which = sys.argv[2] if len(sys.argv) > 2 else "up"
cl = sys.argv[3] == "cl" if len(sys.argv) > 3 else True
pipe = P["ours_cl" if cl else "ours"]
mod = pipe.upsamplers[0] if which == "up" else pipe.decoder
net = mod.unet
cap = {}
def hook(m, args, kwargs):
    cap.setdefault("a", (args, kwargs))
h = net.register_forward_pre_hook(hook, with_kwargs=True)
pipe(PROMPTS[:2], seed=0, batch_size=2, prior_steps=2, decoder_steps=2, upsampler_steps=2)
h.remove()
args, kwargs = cap["a"]
print(which, "cl" if cl else "nchw", [tuple(a.shape) for a in args if torch.is_tensor(a)], {k: (tuple(v.shape) if torch.is_tensor(v) else v) for k, v in kwargs.items()}, flush=True)
def bench(f, n=3):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); f(*args, **kwargs); ts.append(time.perf_counter() - t0)
    return min(ts)
ref = net(*args, **kwargs)
e = bench(net)
print("eager", round(e, 3), flush=True)
t0 = time.perf_counter()
comp = torch.compile(net, options={"freezing": True})
out = comp(*args, **kwargs)
print("compile s", round(time.perf_counter() - t0, 1), "maxdiff", (out - ref).abs().max().item(), flush=True)
c = bench(comp)
e2 = bench(net)
print("eager", round(e2, 3), "frozen-compiled", round(c, 3), "ratio", round(min(e, e2) / c, 2), flush=True)
