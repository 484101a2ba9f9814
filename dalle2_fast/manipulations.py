"""The paper's CLIP-latent manipulations (Ramesh et al. 2022, Sec. 3), done as the paper does them.

The decoder's input is the bipartite latent (z_i, x_T): the CLIP image embedding and the
decoder's starting noise. For a given image, x_T is its DDIM inversion under z_i
(:func:`invert_images`): decoding (z_i, x_T) with DDIM at eta = 0 gives the image back.

- **Variations** (Sec. 3.1, Fig. 3): decode (z_i, x_T) of the input image with DDIM at eta > 0;
  eta = 0 reconstructs the image, a larger eta adds noise at every step and with it variety
  (``latent='inverted'``, the default). ``latent='noise'``: fresh seeded noise instead of x_T.
- **Interpolations** (Sec. 3.2, Fig. 4): frames along slerp(z_1, z_2, theta) decoded from one
  seeded noise (``latent='noise'``, the default) or from slerp of the two images' inverted
  latents (``latent='inverted'``, deterministic: the end frames reconstruct the inputs).
- **Text diffs** (Sec. 3.3, Fig. 5): z_d = normalise(z_t(to) - z_t(from)), frames
  slerp(z_i, z_d, theta), each decoded from the inverted x_T of the image (``invert=True``, the
  default) with DDIM at eta = 0, so the theta = 0 frame reconstructs the input.

Inversion and decoding share everything that makes the round trip exact: the strided DDIM
timesteps (:func:`dalle2_fast.pipeline.inversion_steps`: t = T - 1 is left out), the
conditioning (z_i and no caption: the paper's manipulations condition on the image embedding;
the to-caption would change the theta = 0 frame) and the guidance (``decoder_guidance``, or
``decoder_image_guidance`` when set; the measured effect of guidance on the round trip is in
``benchmarks/results/cpu-xeon-2core/unclip-manipulations/``). Images come out of the whole
cascade (decoder, then the upsamplers with seeded noise).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dalle2_fast.pipeline import VARIATION_ETA, inversion_steps, slerp, slerp_with_norms, to_unit_range
from dalle2_fast.seeding import check_seed, sample_seeds

LATENTS = ("inverted", "noise")


def slerp_latents(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two Gaussian latents a, b (1, C, H, W) at t (n,) -> (n, C, H, W):
    the angle between the flattened vectors interpolated, and their norms linearly (so a
    frame stays at the norm of typical noise)."""
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    na, nb = fa.norm(dim=1, keepdim=True), fb.norm(dim=1, keepdim=True)
    t = t.to(fa).reshape(-1, 1)
    u = slerp(fa / na, fb / nb, t).to(fa)
    return (u * ((1 - t) * na + t * nb)).to(a.dtype).reshape(-1, *a.shape[1:])


def _guidance(pipe, kw: dict) -> float:
    """The scale z_i is guided with (no caption here): ``decoder_image_guidance`` if set."""
    g = kw.get("decoder_image_guidance")
    return pipe._opt("decoder_guidance", kw.get("decoder_guidance")) if g is None else g


def invert_images(pipe, images: torch.Tensor, image_embed: torch.Tensor, kw: dict) -> torch.Tensor:
    """x_T (B, 3, s, s) of ``images`` (B, 3, H, W) in [-1, 1] under z_i ``image_embed`` (B, D), no
    caption, the guidance and strided DDIM steps that :meth:`UnCLIPPipeline.decode_embeddings`
    decodes an x_T with (``kw``: its options)."""
    if not callable(getattr(pipe.decoder, "invert", None)):
        raise ValueError(f"{type(pipe.decoder).__name__} cannot invert images (it has no invert method): decode "
                         "from noise instead (variations/interpolate latent='noise', text_diff invert=False)")
    steps = inversion_steps(pipe._opt("decoder_steps", kw.get("decoder_steps")))
    s = pipe.decoder.image_size
    x = F.interpolate(images.float(), size=(s, s), mode="bicubic", antialias=True).clamp(-1, 1).to(pipe.device)
    with pipe._running(pipe.decoder):
        return pipe.decoder.invert(x, image_embed, None, steps=steps, guidance=_guidance(pipe, kw),
                                   **pipe._null_kw(pipe.decoder)).float()


def _latent(name: str, latent: str) -> str:
    if latent not in LATENTS:
        raise ValueError(f"{name}: latent must be one of {LATENTS}, got {latent!r}")
    return latent


def _check_eta(name: str, eta) -> float:
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta <= 1e3:
        raise ValueError(f"{name}: eta must be a number >= 0 (0: deterministic), got {eta!r}")
    return float(eta)


@torch.no_grad()
def variations(pipe, image: torch.Tensor, n: int, seed: int, latent: str = "inverted", eta: float = VARIATION_ETA,
               **kw) -> torch.Tensor:
    """(n, 3, H, W) in [0, 1]: image k decoded from z_i of ``image`` with seed + k (module docstring)."""
    x = pipe._check_image("image", image)
    pipe._check_count("n", n)
    _latent("variations", latent)
    eta = _check_eta("variations", eta)
    seeds = sample_seeds(seed, n)
    z = pipe._image_embed(x)
    if latent == "noise":
        return to_unit_range(pipe.decode_embeddings(z.expand(n, -1), None, seeds, **kw))
    x_T = invert_images(pipe, x, z, kw).expand(n, -1, -1, -1)
    return to_unit_range(pipe.decode_embeddings(z.expand(n, -1), None, seeds, x_T=x_T, decoder_eta=eta, **kw))


@torch.no_grad()
def interpolate(pipe, image_a: torch.Tensor, image_b: torch.Tensor, n: int, seed: int, latent: str = "noise",
                **kw) -> torch.Tensor:
    """(n, 3, H, W) in [0, 1] along slerp(z_a, z_b, theta), theta = 0 .. 1 (module docstring)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"interpolate: n must be an int >= 2, got {n!r}")
    check_seed(seed)
    _latent("interpolate", latent)
    xa, xb = pipe._check_image("image_a", image_a), pipe._check_image("image_b", image_b)
    za, zb = pipe._image_embed(xa), pipe._image_embed(xb)
    t = torch.linspace(0, 1, n, device=za.device)[:, None]
    # unnormalised embeddings: the norm interpolated linearly along the arc
    z = slerp_with_norms(za, zb, t) if pipe._raw() else slerp(za, zb, t)
    x_T = None
    if latent == "inverted":
        lat = invert_images(pipe, torch.cat([xa, xb]), torch.cat([za, zb]), kw)
        x_T = slerp_latents(lat[:1], lat[1:], t[:, 0])
    return to_unit_range(pipe.decode_embeddings(z, None, [seed] * n, x_T=x_T, **kw))


@torch.no_grad()
def text_diff(pipe, image: torch.Tensor, from_text: str, to_text: str, n: int, max_angle: float, seed: int,
              invert: bool = True, **kw) -> torch.Tensor:
    """(n, 3, H, W) in [0, 1]: frames slerp(z_i, z_d, theta), theta = 0 .. ``max_angle`` (the paper
    uses 0.25-0.5). ``invert``: decoded from the inverted latent with no caption, the theta = 0
    frame reconstructing the input; else from seeded noise with the to-caption."""
    x = pipe._check_image("image", image)
    pipe._check_text("from_text", from_text)
    pipe._check_text("to_text", to_text)
    pipe._check_count("n", n)
    check_seed(seed)
    if isinstance(max_angle, bool) or not isinstance(max_angle, (int, float)) or not 0 < max_angle <= 1:
        raise ValueError(f"text_diff: max_angle must be a number in (0, 1], got {max_angle!r}")
    if not isinstance(invert, bool):
        raise ValueError(f"text_diff: invert must be True or False, got {invert!r}")
    zi = pipe._image_embed(x)
    with pipe._running(pipe.clip):
        te = pipe.clip.encode_text([from_text, to_text])
        to = None if invert else pipe.clip.encode_text([to_text] * n)
    zd = F.normalize(te.embed[1:] - te.embed[:1], dim=-1)
    z = slerp(zi, zd, torch.linspace(0, max_angle, n, device=zi.device)[:, None])
    if pipe._raw():  # unnormalised embeddings: keep z_i's norm
        z = z * zi.norm(dim=-1, keepdim=True)
    x_T = invert_images(pipe, x, zi, kw).expand(n, -1, -1, -1) if invert else None
    return to_unit_range(pipe.decode_embeddings(z, to, [seed] * n, x_T=x_T, **kw))


__all__ = ["variations", "interpolate", "text_diff", "invert_images", "slerp_latents", "LATENTS"]
