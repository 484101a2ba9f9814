"""DALLE2-pytorch's diffusion prior sampling loop, timed by a parent over a pipe (the ``caches``
bench family, :mod:`dalle2_fast.bench.caches`): a child process under the reference's own paths
(``tests/_peers.py`` builds them; ``tests/interop/_dalle2_reference.py`` stubs the modules its
package imports for other models).

    DALLE2_REF_PATHS=... python dalle2_prior_child.py DIM DEPTH HEADS DIM_HEAD TEXT_LEN BATCH STEPS THREADS

Builds ``DiffusionPriorNetwork(dim, depth, heads, dim_head, max_text_len)`` in a
``DiffusionPrior`` (random weights: the cost does not depend on them), prints ``ready``, then
for every ``run`` line on stdin samples ``p_sample_loop`` once (BATCH embeddings, STEPS DDIM
steps, no guidance) and prints ``done``; exits on ``quit`` or end of input.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import tests.interop._dalle2_reference as R  # noqa: E402  (sets up the reference's paths and stubs)
import torch  # noqa: E402


def main(dim, depth, heads, dim_head, text_len, batch, steps, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = R.ref.DiffusionPriorNetwork(dim=dim, depth=depth, heads=heads, dim_head=dim_head, max_text_len=text_len,
                                      num_timesteps=1000)
    prior = R.ref.DiffusionPrior(net, image_embed_dim=dim, timesteps=1000, condition_on_text_encodings=True).eval()
    cond = dict(text_embed=torch.nn.functional.normalize(torch.randn(batch, dim), dim=-1),
                text_encodings=torch.randn(batch, text_len, dim))
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        with torch.no_grad():
            prior.p_sample_loop((batch, dim), text_cond=cond, cond_scale=1.0, timesteps=steps)
        print("done", flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:9]))
