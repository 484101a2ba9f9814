"""VQ-VAE-2 sampling throughput (issue 6): top prior (PixelCNN with attention) -> bottom prior
(gated PixelCNN conditioned on the top codes) -> decoder, for a batch of images at 32x32.

Variants, timed in the same run on the same randomly initialised models (throughput does not
depend on the weights):
- ``cached`` (ours): the bottom prior's row-wise cached sampler (vertical stack once per row on
  a receptive-field band, horizontal stack on one row per pixel, conditioning computed once),
  default backend dispatch;
- ``cached/torch``: the same with ``DALLE2_FAST_BACKEND=torch`` forced;
- ``full`` (baseline): the textbook sampler, a full forward of each prior over the whole code
  map per sampled position (``naive_sample``).
Report codes/s = images * (top codes + bottom codes) / time and images/s = images / time
(``throughput(result)``).
"""
from __future__ import annotations

import torch

from dalle2_fast.bench.core import Case, Variant, forced_backend
from dalle2_fast.data.shapes import NUM_CLASSES
from dalle2_fast.models import VQVAE2, VQVAE2Config, VQVAE2Generator

FAMILY = "vqvae2"



def build_generator(resolution: int = 32, device: str = "cpu") -> VQVAE2Generator:
    """Default VQ-VAE-2 with the prior sizes used for the shapes quality run."""
    torch.manual_seed(0)
    vq = VQVAE2(VQVAE2Config(resolution=resolution))
    return VQVAE2Generator.from_vqvae(vq, channels=64, n_layers=8, attention_every=4,
                                      num_classes=NUM_CLASSES).to(device).eval()


@torch.no_grad()
def naive_sample(prior, n: int, label, cond, generator) -> torch.Tensor:
    """Baseline: the whole network on the whole map for every position (no caching at all)."""
    c = prior.config
    x = torch.zeros(n, c.height, c.width, dtype=torch.long, device=prior.embed.weight.device)
    for i in range(c.height):
        for j in range(c.width):
            logits = prior(x, label, cond)[:, :, i, j]
            x[:, i, j] = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
    return x


def _sampler(gen: VQVAE2Generator, n: int, ours: bool, backend: str | None, device: str):
    labels = (torch.arange(n) % gen.config.top.num_classes).to(device)

    @torch.no_grad()
    def run():
        with forced_backend(backend):
            g = torch.Generator(device=device).manual_seed(0)
            if ours:
                top, bottom = gen.sample_codes(n, labels, generator=g)
            else:
                top = naive_sample(gen.top_prior, n, labels, None, g)
                bottom = naive_sample(gen.bottom_prior, n, labels, top, g)
            return gen.vqvae.decode_indices(top, bottom)
    return run


def specs(device: str = "cpu", quick: bool = False) -> list[dict]:
    """Name and params of the case, without building models (for the roofline)."""
    n = 8 if quick else 64
    return [dict(name=f"sample-{n}x32px", params=dict(images=n, resolution=32))]


def cases(device: str = "cpu", quick: bool = False) -> list[Case]:
    n = 8 if quick else 64
    gen = build_generator(32, device)
    c = gen.config
    codes = n * (c.top.height * c.top.width + c.bottom.height * c.bottom.width)
    # The comparison: fast backends vs DALLE2_FAST_BACKEND=torch on the same sampler.
    # The uncached textbook sampler (~25x slower) is timed only in full runs (not --quick).
    variants = [
        Variant("cached", _sampler(gen, n, True, None, device), "ours"),
        Variant("cached/torch", _sampler(gen, n, True, "torch", device), "baseline"),
    ]
    if not quick:
        variants.append(Variant("full (uncached)", _sampler(gen, n, False, None, device), "peer"))
    params = dict(images=n, resolution=32, top=f"{c.top.height}x{c.top.width}",
                  bottom=f"{c.bottom.height}x{c.bottom.width}", codes=codes)
    return [Case(FAMILY, f"sample-{n}x32px", params, variants, "cached/torch", device=device)]


def throughput(result: dict) -> dict[str, dict[str, float]]:
    """{variant: {'codes_per_s', 'images_per_s'}} from a ``run_case`` result."""
    p = result["params"]
    return {k: {"codes_per_s": p["codes"] / t, "images_per_s": p["images"] / t} for k, t in result["times"].items()}


def main() -> None:  # python -m dalle2_fast.bench.vqvae2 [--quick] [--repeats N]
    import json
    import sys

    from dalle2_fast.bench.core import run_case

    quick = "--quick" in sys.argv
    repeats = int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else (3 if quick else 1)
    for case in cases("cuda" if torch.cuda.is_available() else "cpu", quick=quick):
        r = run_case(case, repeats=repeats, warmup=1 if quick else 0)
        print(json.dumps({"case": case.name, "params": case.params, "times_s": r["times"],
                          "speedup_vs_torch_backend": r["ratios"], "throughput": throughput(r)}, indent=2))


if __name__ == "__main__":
    main()
