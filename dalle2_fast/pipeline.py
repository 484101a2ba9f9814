"""UnCLIPPipeline: text -> CLIP text embedding -> prior -> z_i -> decoder -> upsamplers -> image.

Ramesh et al. 2022 ("Hierarchical Text-Conditional Image Generation with CLIP Latents"): a prior
P(z_i | y) produces a CLIP image embedding from the caption, a diffusion decoder P(x | z_i, y)
inverts it at low resolution, and two diffusion upsamplers raise the resolution. Besides text to
image, the CLIP latent gives variations (encode an image, decode with new noise), interpolation
(slerp between two image embeddings) and text-diff edits (rotate z_i toward z_t(new) - z_t(old)),
Sec. 3 of the paper.

Stages are duck-typed modules with a ``sample`` method (see :class:`Prior`, :class:`Decoder`,
:class:`Upsampler`); images are (B, 3, H, W) in [-1, 1] inside, returned in [0, 1].

Seeds: image ``k`` of a call gets the seed ``seed + k`` (k counts prompts-major:
prompt 0's images first), and every stage draws its noise from per-image generators derived from it,
so an image does not depend on ``batch_size`` or on the other prompts of the call.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Protocol, Sequence

import torch
import torch.nn.functional as F

from dalle2_fast.clip import ClipAdapter, TextEncoding
from dalle2_fast.seeding import stage_seeds


class Prior(Protocol):
    def sample(self, text_tokens, text_mask, text_embed, seeds: Sequence[int], steps: int,
               guidance: float, **kw) -> torch.Tensor: ...  # (B, D) unit-norm z_i


class Decoder(Protocol):
    def sample(self, image_embed, text: TextEncoding | None, seeds: Sequence[int], steps: int,
               guidance: float, progress: bool = False) -> torch.Tensor: ...  # (B, 3, h, w) in [-1, 1]


class Upsampler(Protocol):
    def sample(self, low_res, seeds: Sequence[int], steps: int,
               progress: bool = False) -> torch.Tensor: ...  # (B, 3, H, W) in [-1, 1]


_STAGE_PRIOR, _STAGE_DECODER, _STAGE_UP = 1, 2, 3
SHIPPED_DIR = Path(__file__).parent / "weights" / "unclip_shapes"


def shipped_weights_dir() -> Path | None:
    """The package's trained shapes pipeline, or None when this build ships no weights."""
    return SHIPPED_DIR if (SHIPPED_DIR / "unclip.json").is_file() else None


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between unit vectors a, b (..., D) at t in [0, 1] (Shoemake 1985)."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    omega = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / so
    lin = (1 - t) * a + t * b  # nearly parallel vectors: slerp -> lerp
    return F.normalize(torch.where(so.abs() < 1e-4, lin, out), dim=-1)


class UnCLIPPipeline:
    """The unCLIP text-to-image chain. Build from parts, or :meth:`from_pretrained` a directory."""

    def __init__(self, clip: ClipAdapter, prior: Prior, decoder: Decoder, upsamplers: Sequence[Upsampler] = (),
                 defaults: dict | None = None):
        self.clip = clip.eval()
        self.prior = prior
        self.decoder = decoder
        self.upsamplers = list(upsamplers)
        self.defaults = dict(prior_steps=64, decoder_steps=50, upsampler_steps=10, prior_guidance=1.0,
                             decoder_guidance=3.0)
        for k, v in (defaults or {}).items():
            if k not in self.defaults:
                raise ValueError(f"UnCLIPPipeline: unknown default {k!r} (known: {sorted(self.defaults)})")
            self.defaults[k] = v

    # ---- persistence --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None,
                        device: str | torch.device = "cpu") -> "UnCLIPPipeline":
        """Load ``clip/``, ``prior``, ``decoder`` and ``upsampler{1,2}`` from a pipeline directory
        (written by :meth:`save_pretrained`); ``None`` or ``"shapes"``: the weights shipped in the package."""
        from dalle2_fast.checkpoint import load_pretrained

        if path is None or str(path) == "shapes":
            path = shipped_weights_dir()
            if path is None:
                raise FileNotFoundError(f"UnCLIPPipeline.from_pretrained: this install ships no weights ({SHIPPED_DIR} "
                                        "is missing); train them with `dalle2-fast unclip train --out DIR` and pass "
                                        "--pipeline DIR")
        path = Path(path)
        manifest = path / "unclip.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"UnCLIPPipeline.from_pretrained: {manifest} not found (a pipeline directory "
                                    "holds unclip.json, clip/, prior, decoder and upsampler files)")
        meta = json.loads(manifest.read_text())
        clip = ClipAdapter.load(path / meta["clip"], device=device)
        prior = load_pretrained(path / meta["prior"], map_location=device).eval()
        decoder = load_pretrained(path / meta["decoder"], map_location=device).eval()
        ups = [load_pretrained(path / u, map_location=device).eval() for u in meta.get("upsamplers", [])]
        return cls(clip, prior, decoder, ups, meta.get("defaults"))

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        from dalle2_fast.checkpoint import atomic_write_text, save_pretrained

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.clip.save(path / "clip")
        save_pretrained(self.prior, path / "prior.safetensors")
        save_pretrained(self.decoder, path / "decoder.safetensors")
        names = []
        for i, u in enumerate(self.upsamplers):
            names.append(f"upsampler{i + 1}.safetensors")
            save_pretrained(u, path / names[-1])
        meta = {"clip": "clip", "prior": "prior.safetensors", "decoder": "decoder.safetensors",
                "upsamplers": names, "defaults": self.defaults}
        atomic_write_text(path / "unclip.json", json.dumps(meta, indent=2))
        return path

    def to(self, device: str | torch.device) -> "UnCLIPPipeline":
        for m in (self.clip, self.prior, self.decoder, *self.upsamplers):
            m.to(device)
        return self

    # ---- the chain ----------------------------------------------------------------------------
    def _opt(self, name, value):
        v = self.defaults[name] if value is None else value
        if name.endswith("_steps"):
            self._check_count(name, v)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 100:
            raise ValueError(f"UnCLIPPipeline: {name} must be a finite number in [0, 100] (1 = no guidance), "
                             f"got {v!r}")
        return v

    def _check_image(self, name: str, image) -> torch.Tensor:
        """A (3, H, W) or (1, 3, H, W) image in [-1, 1], finite."""
        if not isinstance(image, torch.Tensor) or not image.is_floating_point():
            raise ValueError(f"UnCLIPPipeline: {name} must be a floating-point tensor (3, H, W) in [-1, 1], got "
                             f"{type(image).__name__ if not isinstance(image, torch.Tensor) else image.dtype}")
        if not (image.dim() == 3 and image.shape[0] == 3) and not (image.dim() == 4 and image.shape[:2] == (1, 3)):
            raise ValueError(f"UnCLIPPipeline: {name} must be (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}")
        if image.numel() == 0 or not torch.isfinite(image).all():
            raise ValueError(f"UnCLIPPipeline: {name} must be non-empty and finite (no NaN/Inf)")
        if image.min() < -1.01 or image.max() > 1.01:
            raise ValueError(f"UnCLIPPipeline: {name} must be in [-1, 1] (got values in [{float(image.min()):.3g}, "
                             f"{float(image.max()):.3g}]; map [0, 1] images with x * 2 - 1)")
        return image

    @staticmethod
    def _check_count(name: str, v, low: int = 1) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"UnCLIPPipeline: {name} must be an int >= {low}, got {v!r}")

    @staticmethod
    def _check_text(name: str, v) -> None:
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"UnCLIPPipeline: {name} must be a non-empty string, got {v!r}")

    @torch.no_grad()
    def decode_embeddings(self, image_embed: torch.Tensor, text: TextEncoding | None, seeds: Sequence[int],
                          decoder_steps: int | None = None, upsampler_steps: int | None = None,
                          decoder_guidance: float | None = None, progress: bool = False,
                          x_T: torch.Tensor | None = None) -> torch.Tensor:
        """z_i (B, D) (+ optional text) -> images (B, 3, H, W) in [-1, 1] through decoder and upsamplers.
        ``x_T``: the decoder's starting latent (default: noise from the seeds)."""
        extra = {} if x_T is None else {"x_T": x_T, "eta": 0.0}  # a given latent is decoded deterministically
        x = self.decoder.sample(image_embed, text, stage_seeds(seeds, _STAGE_DECODER),
                                steps=self._opt("decoder_steps", decoder_steps),
                                guidance=self._opt("decoder_guidance", decoder_guidance), progress=progress, **extra)
        for i, up in enumerate(self.upsamplers):
            x = up.sample(x, stage_seeds(seeds, _STAGE_UP + i), steps=self._opt("upsampler_steps", upsampler_steps),
                          progress=progress)
        return x

    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str], num_images_per_prompt: int = 1, prior_steps: int | None = None,
                 decoder_steps: int | None = None, upsampler_steps: int | None = None,
                 prior_guidance: float | None = None, decoder_guidance: float | None = None, seed: int = 0,
                 batch_size: int = 16, progress: bool = False) -> torch.Tensor:
        """Images for ``prompts``: (len(prompts) * num_images_per_prompt, 3, H, W) in [0, 1], prompts-major."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"UnCLIPPipeline: prompts must be a non-empty string or list of non-empty strings, "
                             f"got {prompts!r}")
        self._check_count("num_images_per_prompt", num_images_per_prompt)
        self._check_count("batch_size", batch_size)
        self._check_count("seed", seed, 0)
        for name, v in (("prior_steps", prior_steps), ("decoder_steps", decoder_steps),
                        ("upsampler_steps", upsampler_steps), ("prior_guidance", prior_guidance),
                        ("decoder_guidance", decoder_guidance)):
            self._opt(name, v)  # checks every option before any work
        items = [p for p in prompts for _ in range(num_images_per_prompt)]
        seeds = [seed + k for k in range(len(items))]
        out = []
        chunks = range(0, len(items), batch_size)
        if progress:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="unclip", unit="batch")
        for i in chunks:
            text = self.clip.encode_text(items[i:i + batch_size])
            s = seeds[i:i + batch_size]
            z = self.prior.sample(text, stage_seeds(s, _STAGE_PRIOR), steps=self._opt("prior_steps", prior_steps),
                                  guidance=self._opt("prior_guidance", prior_guidance))
            out.append(self.decode_embeddings(z, text, s, decoder_steps, upsampler_steps, decoder_guidance,
                                              progress))
        return to_unit_range(torch.cat(out))

    # ---- CLIP-latent manipulations (Sec. 3) -----------------------------------------------------
    def _image_embed(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() == 3:
            image = image[None]
        return self.clip.encode_image(image.to(self.clip.mean.device))

    @torch.no_grad()
    def variations(self, image: torch.Tensor, n: int = 4, seed: int = 0, **kw) -> torch.Tensor:
        """``n`` images that keep the CLIP content of ``image`` (3, H, W) in [-1, 1], decoded with new noise."""
        self._check_image("image", image)
        self._check_count("n", n)
        z = self._image_embed(image).expand(n, -1)
        return to_unit_range(self.decode_embeddings(z, None, [seed + k for k in range(n)], **kw))

    @torch.no_grad()
    def interpolate(self, image_a: torch.Tensor, image_b: torch.Tensor, n: int = 5, seed: int = 0,
                    **kw) -> torch.Tensor:
        """``n`` images along slerp(z_a, z_b, t), t = 0 .. 1, with the same decoder noise for all frames."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ValueError(f"interpolate: n must be an int >= 2, got {n!r}")
        self._check_image("image_a", image_a)
        self._check_image("image_b", image_b)
        za, zb = self._image_embed(image_a), self._image_embed(image_b)
        z = slerp(za, zb, torch.linspace(0, 1, n, device=za.device)[:, None])
        return to_unit_range(self.decode_embeddings(z, None, [seed] * n, **kw))

    @torch.no_grad()
    def text_diff(self, image: torch.Tensor, from_text: str, to_text: str, n: int = 5, max_angle: float = 0.5,
                  seed: int = 0, invert: bool = False, **kw) -> torch.Tensor:
        """Edit ``image`` toward ``to_text``: z_d = normalise(z_t(to) - z_t(from)); frames slerp(z_i, z_d, t),
        t = 0 .. max_angle (the paper uses 0.25-0.5), decoded with the same latent and the new caption.
        ``invert``: that latent is the DDIM inversion of ``image`` (as in the paper), else seeded noise."""
        self._check_image("image", image)
        self._check_text("from_text", from_text)
        self._check_text("to_text", to_text)
        self._check_count("n", n)
        if not isinstance(max_angle, (int, float)) or not 0 < max_angle <= 1:
            raise ValueError(f"text_diff: max_angle must be in (0, 1], got {max_angle!r}")
        x = image[None] if image.dim() == 3 else image
        zi = self._image_embed(x)
        te = self.clip.encode_text([from_text, to_text])
        zd = F.normalize(te.embed[1:] - te.embed[:1], dim=-1)
        z = slerp(zi, zd, torch.linspace(0, max_angle, n, device=zi.device)[:, None])
        to = self.clip.encode_text([to_text] * n)
        x_T = None
        if invert:
            s = self.decoder.config.unet.image_size
            base = F.interpolate(x.float(), size=(s, s), mode="bicubic", antialias=True).clamp(-1, 1)
            steps = kw.get("decoder_steps") or self.defaults["decoder_steps"]
            x_T = self.decoder.invert(base.to(zi.device), zi, None, steps=steps).expand(n, -1, -1, -1)
        return to_unit_range(self.decode_embeddings(z, to, [seed] * n, x_T=x_T, **kw))


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def to_pil(images: torch.Tensor):
    """(B, 3, H, W) in [0, 1] -> list of PIL images."""
    from PIL import Image

    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def make_grid(images: torch.Tensor, nrow: int | None = None) -> torch.Tensor:
    """(B, 3, H, W) -> (3, rows*H, nrow*W) grid, row-major."""
    b, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / nrow)
    grid = images.new_zeros(c, rows * h, nrow * w)
    for i in range(b):
        r, q = divmod(i, nrow)
        grid[:, r * h:(r + 1) * h, q * w:(q + 1) * w] = images[i]
    return grid
