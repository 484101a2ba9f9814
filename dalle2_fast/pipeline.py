"""UnCLIPPipeline: text -> CLIP text embedding -> prior -> z_i -> decoder -> upsamplers -> image.

Ramesh et al. 2022 ("Hierarchical Text-Conditional Image Generation with CLIP Latents"): a prior
P(z_i | y) produces a CLIP image embedding from the caption, a diffusion decoder P(x | z_i, y)
inverts it into a small image, and diffusion upsamplers raise the resolution. The CLIP latent
space also gives the paper's manipulations (Sec. 3): variations of an image, interpolations
between two images, and text-diff edits.

Seeds follow the package's one rule (``dalle2_fast.seeding``): image k of a call with seed s is
the image of seed s + k, whatever ``batch_size``; inside an image, each stage draws from its own
stream (``stage_seeds``). ``iter_images`` streams any number of images batch by batch (flat
memory) for large jobs; ``__call__`` returns them all.

The stages are duck-typed by the protocols below (what the pipeline calls is exactly what they
declare): any prior, decoder or upsampler with these methods plugs in. A stage whose
classifier-free guidance contrasts with a caption's encoding (Karlo's: the empty prompt) says so
with a ``null_prompt`` attribute; the pipeline then passes that caption's encoding as
``null_text``. A decoder with ``config.raw_embeddings`` gets CLIP's unnormalised image
embeddings in variations and interpolations.

Real checkpoints: :meth:`UnCLIPPipeline.from_diffusers` reads a diffusers UnCLIPPipeline folder
(Karlo v1 alpha), :meth:`UnCLIPPipeline.from_karlo` Kakao Brain's original checkpoints;
:meth:`from_pretrained` recognises both. For big weights: ``dtype`` loads them in bfloat16 /
float16 and samples under autocast, and :meth:`enable_offload` keeps every stage on the CPU
except the one running on the accelerator.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dalle2_fast.inpainting import EDIT_DEFAULTS
from dalle2_fast.models.clip import ClipAdapter, TextEncoding
from dalle2_fast.nn.winograd import winograd_convs
from dalle2_fast.seeding import check_seed, sample_seeds, stage_seeds


class Prior(Protocol):
    def sample(self, text: TextEncoding, seeds: Sequence[int], *, steps: int, guidance: float,
               progress: bool = False) -> torch.Tensor: ...  # (B, D) unit-norm z_i


class Decoder(Protocol):
    image_size: int  # side of the images it draws

    def sample(self, image_embed: torch.Tensor, text: TextEncoding | None, *, seeds: Sequence[int], steps: int,
               guidance: float, progress: bool = False, **kw) -> torch.Tensor: ...  # (B, 3, s, s) in [-1, 1]

    def invert(self, images: torch.Tensor, image_embed: torch.Tensor, text: TextEncoding | None = None, *,
               steps: int, guidance: float = 1.0) -> torch.Tensor: ...  # (B, 3, s, s) latents x_T


class Upsampler(Protocol):
    def sample(self, low_res: torch.Tensor, *, seeds: Sequence[int], steps: int,
               progress: bool = False) -> torch.Tensor: ...  # (B, 3, H, W) in [-1, 1]


STAGE_PRIOR, STAGE_DECODER, STAGE_UP = 1, 2, 3
SHIPPED_DIR = Path(__file__).parent / "weights" / "unclip_shapes"
MANIFEST = "unclip.json"
DEFAULTS = dict(prior_steps=64, decoder_steps=50, upsampler_steps=10, prior_guidance=1.0, decoder_guidance=3.0)
# Call options beside DEFAULTS; None = the stage's own: decoder_image_guidance / decoder_text_guidance
# split decoder_guidance into a scale on z_i and one on the caption (three-branch guidance);
# decoder_sampler / upsampler_sampler pick 'ddpm' (ancestral, the learned variance: as the paper
# samples), 'ddim' or 'dpmpp'; decoder_eta is the decoder's DDIM eta.
OPTIONS = dict(decoder_image_guidance=None, decoder_text_guidance=None, decoder_sampler=None, upsampler_sampler=None,
               decoder_eta=None)
SAMPLER_CHOICES = ("ddpm", "ddim", "dpmpp")
VARIATION_ETA = 1.0  # variations' DDIM eta from the inverted latent (dalle2_fast.manipulations)


def shipped_weights_dir() -> Path | None:
    """The package's trained shapes pipeline, or None when this build ships no weights."""
    return SHIPPED_DIR if (SHIPPED_DIR / MANIFEST).is_file() else None


def slerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between unit vectors a, b (..., D) at t in [0, 1] (Shoemake 1985)."""
    a, b = F.normalize(a.float(), dim=-1), F.normalize(b.float(), dim=-1)
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    omega = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    out = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / so
    lin = (1 - t) * a + t * b  # nearly parallel vectors: slerp -> lerp
    return F.normalize(torch.where(so.abs() < 1e-4, lin, out), dim=-1)


def slerp_with_norms(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """:func:`slerp` of the directions of a, b (..., D) with their norms interpolated linearly, so
    unnormalised embeddings keep their scale along the arc (unit ones stay unit)."""
    return slerp(a, b, t) * ((1 - t) * a.norm(dim=-1, keepdim=True) + t * b.norm(dim=-1, keepdim=True))


def inversion_steps(steps: int) -> str:
    """The respacing spec that DDIM inversion and the decoding of an inverted latent share: the
    strided DDIM timesteps 0, k, 2k, .. (< T - 1). An even spacing ends at t = T - 1, where the
    cosine schedule's abar is ~0: the inversion's last step there is ill-conditioned (x0 from x_t
    divides by sqrt(abar_t)) and the round trip loses the image."""
    return f"ddim{int(steps)}"


def to_unit_range(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((x.float() + 1) / 2).clamp(0, 1)


def read_manifest(path: Path) -> dict:
    """``unclip.json`` of a pipeline directory, validated (``dalle2_fast.files``): the stage paths
    (inside the directory, existing) resolved against it, and the known defaults."""
    from dalle2_fast.files import read_pipeline_manifest

    meta = read_pipeline_manifest(path)
    out = {k: Path(path) / meta[k] for k in ("clip", "prior", "decoder")}
    out["upsamplers"] = [Path(path) / u for u in meta["upsamplers"]]
    out["defaults"] = meta["defaults"]
    out["inpaint_decoder"] = Path(path) / meta["inpaint_decoder"] if "inpaint_decoder" in meta else None
    return out


@dataclass
class Generated:
    """One image of a streaming call: its index in the call, prompt, seed and pixels (3, H, W) in [-1, 1]."""

    index: int
    prompt: str
    seed: int
    image: torch.Tensor


class UnCLIPPipeline:
    """The unCLIP text-to-image chain. Build from parts, or :meth:`from_pretrained` a directory."""

    def __init__(self, clip: ClipAdapter, prior: Prior, decoder: Decoder, upsamplers: Sequence[Upsampler] = (),
                 defaults: dict | None = None):
        self.clip = clip.eval()
        self.prior = prior
        self.decoder = decoder
        self.upsamplers = list(upsamplers)
        self.defaults = dict(DEFAULTS)
        for k, v in (defaults or {}).items():
            if k not in self.defaults:
                raise ValueError(f"UnCLIPPipeline: unknown default {k!r} (known: {sorted(self.defaults)})")
            self.defaults[k] = self._opt(k, v)
        self.inpaint_decoder = None  # optional mask-conditioned decoder (inpaint(method='conditioned'))
        self.offload_device: torch.device | None = None  # enable_offload
        self.compute_dtype: torch.dtype = torch.float32  # autocast dtype when not float32
        self.winograd = False  # fast_convs
        self._null_cache: dict = {}

    # ---- persistence --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> "UnCLIPPipeline":
        """Load ``clip/``, ``prior``, ``decoder`` and ``upsampler{1,2}`` from a pipeline directory
        (written by :meth:`save_pretrained`); ``None`` or ``"shapes"``: the weights shipped in the package.
        A diffusers UnCLIPPipeline folder (``model_index.json``) or Karlo's original checkpoints are
        converted on the way (:meth:`from_diffusers`, :meth:`from_karlo`). ``dtype``: the stages'
        weights in bfloat16 / float16, sampled under autocast."""
        from dalle2_fast.checkpoint import load_pretrained

        if path is None or str(path) == "shapes":
            path = shipped_weights_dir()
            if path is None:
                raise FileNotFoundError(f"UnCLIPPipeline.from_pretrained: this install ships no weights ({SHIPPED_DIR} "
                                        "is missing); train them with `dalle2-fast train unclip --out DIR` and pass "
                                        "--pipeline DIR/pipeline")
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"UnCLIPPipeline.from_pretrained: {path} is not a directory (a pipeline directory "
                                    "holds unclip.json, clip/, prior, decoder and upsampler files)")
        if not (path / MANIFEST).is_file():
            from dalle2_fast.interop.karlo import is_karlo_folder

            if (path / "model_index.json").is_file():
                return cls.from_diffusers(path, device=device, dtype=dtype)
            if is_karlo_folder(path):
                return cls.from_karlo(path, device=device, dtype=dtype)
            raise FileNotFoundError(f"UnCLIPPipeline.from_pretrained: {path / MANIFEST} not found (a pipeline "
                                    "directory holds unclip.json, clip/, prior, decoder and upsampler files; a "
                                    "diffusers UnCLIPPipeline folder holds model_index.json; a Karlo folder its "
                                    "four original checkpoint files)")
        meta = read_manifest(path)
        clip = ClipAdapter.from_pretrained(meta["clip"], map_location=device)
        prior = load_pretrained(meta["prior"], map_location=device).eval()
        decoder = load_pretrained(meta["decoder"], map_location=device).eval()
        ups = [load_pretrained(u, map_location=device).eval() for u in meta["upsamplers"]]
        pipe = cls(clip, prior, decoder, ups, meta["defaults"])
        if meta["inpaint_decoder"] is not None:
            pipe.inpaint_decoder = load_pretrained(meta["inpaint_decoder"], map_location=device).eval()
        if _check_dtype(dtype) != torch.float32:
            for m in (prior, decoder, *ups, *([pipe.inpaint_decoder] if pipe.inpaint_decoder is not None else [])):
                m.to(dtype)
            for b in ("clip_mean", "clip_std"):  # the prior's normalisation statistics stay float32
                if hasattr(prior, b):
                    getattr(prior, b).data = getattr(prior, b).data.float()
            pipe.compute_dtype = dtype
        return pipe

    @classmethod
    def from_diffusers(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> "UnCLIPPipeline":
        """A diffusers UnCLIPPipeline folder (Karlo v1 alpha's layout), converted once into our
        stages (:mod:`dalle2_fast.interop.diffusers_unclip`); ``dtype`` bfloat16 / float16 loads
        the weights in that dtype and samples under autocast."""
        from dalle2_fast.interop.diffusers_unclip import pipeline_parts_from_diffusers

        return cls._assemble(pipeline_parts_from_diffusers(path, dtype=_check_dtype(dtype)), device, dtype)

    @classmethod
    def from_karlo(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, text_encoder: str | os.PathLike | None = None,
                   overrides: dict | None = None) -> "UnCLIPPipeline":
        """Kakao Brain's original Karlo checkpoints (a folder with the prior, decoder and
        super-resolution ``.ckpt`` files and ``ViT-L-14_stats.th``) plus a CLIP ViT-L/14 text
        encoder (:mod:`dalle2_fast.interop.karlo`)."""
        from dalle2_fast.interop.karlo import pipeline_parts_from_karlo

        parts = pipeline_parts_from_karlo(path, text_encoder=text_encoder, dtype=_check_dtype(dtype),
                                          overrides=overrides)
        return cls._assemble(parts, device, dtype)

    @classmethod
    def _assemble(cls, parts: dict, device, dtype) -> "UnCLIPPipeline":
        pipe = cls(parts["clip"], parts["prior"], parts["decoder"], parts["upsamplers"], parts["defaults"])
        pipe.compute_dtype = dtype
        return pipe.to(device)

    def enable_offload(self, device: str | torch.device = "cuda") -> "UnCLIPPipeline":
        """Keep every stage on the CPU and move each to ``device`` only while it runs (peak
        accelerator memory: the largest stage, not their sum)."""
        self.to("cpu")
        self.offload_device = torch.device(device)
        return self

    def channels_last(self, enabled: bool = True) -> "UnCLIPPipeline":
        """Hold the image stages' convolution weights in channels-last (NHWC) memory format, so the
        convolutions and the fused GroupNorm kernels run on NHWC activations (oneDNN's preferred
        layout on CPUs: measured 10% faster in float32 and up to ~2.5x under bfloat16 autocast on
        this project's Xeon; ``benchmarks/results/cpu-xeon-2core/unclip-peers/``). Same images."""
        fmt = torch.channels_last if enabled else torch.contiguous_format
        for m in (self.decoder, *self.upsamplers):
            m.to(memory_format=fmt)
        return self

    def fast_convs(self, enabled: bool = True) -> "UnCLIPPipeline":
        """Run the stages' 3x3 convolutions by Winograd's F(4x4, 3x3) on the CPU in float32
        (:func:`dalle2_fast.nn.winograd_convs`: 4x fewer multiplies).
        Not bit-equal to the default direct convolutions: relative error ~4e-6 per convolution
        instead of ~4e-7. Other devices and dtypes are unaffected. The transforms work on
        channels-last activations: enabling it also enables :meth:`channels_last`. Memory: one layer's
        transformed filters (4x its filters' size) at a time (:mod:`dalle2_fast.nn.winograd`)."""
        self.winograd = bool(enabled)
        return self.channels_last() if enabled else self

    @contextlib.contextmanager
    def _running(self, stage):
        """Run a stage: on the offload device while inside (then back to the CPU), under autocast
        in ``compute_dtype`` when that is not float32, with Winograd convolutions (``fast_convs``)."""
        dev = self.device
        if self.offload_device is not None:
            stage.to(self.offload_device)
        amp = (torch.autocast(dev.type, dtype=self.compute_dtype) if self.compute_dtype != torch.float32
               else contextlib.nullcontext())
        convs = winograd_convs(stage) if self.winograd and isinstance(stage, nn.Module) else contextlib.nullcontext()
        try:
            with amp, convs:
                yield
        finally:
            if self.offload_device is not None:
                stage.to("cpu")

    def _null_kw(self, stage) -> dict:
        """{'null_text': the encoding of the stage's ``null_prompt``} or {} (cached per prompt)."""
        prompt = getattr(stage, "null_prompt", None)
        if prompt is None:
            return {}
        key = (prompt, str(self.device))
        if key not in self._null_cache:
            with self._running(self.clip):
                self._null_cache[key] = self.clip.encode_text([prompt])
        return {"null_text": self._null_cache[key]}

    def _raw(self) -> bool:
        return bool(getattr(getattr(self.decoder, "config", None), "raw_embeddings", False))

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        from dalle2_fast.checkpoint import atomic_write_text, save_pretrained

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.clip.save_pretrained(path / "clip")
        save_pretrained(self.prior, path / "prior.safetensors")
        save_pretrained(self.decoder, path / "decoder.safetensors")
        names = []
        for i, u in enumerate(self.upsamplers):
            names.append(f"upsampler{i + 1}.safetensors")
            save_pretrained(u, path / names[-1])
        meta = {"clip": "clip", "prior": "prior.safetensors", "decoder": "decoder.safetensors",
                "upsamplers": names, "defaults": self.defaults}
        if self.inpaint_decoder is not None:
            save_pretrained(self.inpaint_decoder, path / "inpaint_decoder.safetensors")
            meta["inpaint_decoder"] = "inpaint_decoder.safetensors"
        atomic_write_text(path / MANIFEST, json.dumps(meta, indent=2))
        return path

    def to(self, device: str | torch.device) -> "UnCLIPPipeline":
        for m in (self.clip, self.prior, self.decoder, *self.upsamplers,
                  *([self.inpaint_decoder] if self.inpaint_decoder is not None else [])):
            m.to(device)
        self.offload_device = None
        self._null_cache.clear()
        return self

    def compile(self, **options) -> "UnCLIPPipeline":
        """``torch.compile`` the networks of the prior, the decoder and the upsamplers in place
        (``nn.Module.compile(**options)``, e.g. ``mode=``, ``backend=``, ``dynamic=``; our custom
        ops are registered with fake implementations, so they stay inside the graphs). Compilation
        happens at the first call of each shape, so the first images pay for it. Returns self."""
        for m in (self.prior, self.decoder, *self.upsamplers):
            m.compile(**options)
        return self

    @property
    def device(self) -> torch.device:
        """Where the stages run (the offload device when offloading)."""
        return self.offload_device if self.offload_device is not None else self.clip.mean.device

    @property
    def image_size(self) -> int:
        """Side of the final images: the decoder's, times each upsampler's factor."""
        s = self.decoder.image_size
        for u in self.upsamplers:
            s *= getattr(u, "factor", 1)
        return s

    # ---- argument checks (before any work) ------------------------------------------------------
    def _opt(self, name, value):
        if name in OPTIONS:
            return self._option(name, value)
        v = self.defaults[name] if value is None else value
        if name.endswith("_steps"):
            self._check_count(name, v)
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 100:
            raise ValueError(f"UnCLIPPipeline: {name} must be a finite number in [0, 100] (1 = no guidance), "
                             f"got {v!r}")
        return v

    @staticmethod
    def _option(name, v):
        """A checked :data:`OPTIONS` value (None: the stage's own)."""
        if v is None:
            return None
        if name.endswith("_sampler"):
            if v not in SAMPLER_CHOICES:
                raise ValueError(f"UnCLIPPipeline: {name} must be one of {SAMPLER_CHOICES}, got {v!r}")
            return v
        high = 1e3 if name == "decoder_eta" else 100
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= high:
            raise ValueError(f"UnCLIPPipeline: {name} must be a finite number in [0, {high:g}], got {v!r}")
        return v

    def check_options(self, options: dict) -> dict:
        """``options`` restricted to known :data:`OPTIONS` names, each checked; an unknown name raises."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"UnCLIPPipeline: unknown options {unknown} (known: {sorted(DEFAULTS) + sorted(OPTIONS)})")
        return {k: self._option(k, v) for k, v in options.items()}

    def settings(self, **overrides) -> dict:
        """The sampling settings a call with ``overrides`` uses (every option resolved; the
        :data:`OPTIONS` only when set): what each written image records."""
        out = {k: self._opt(k, overrides.get(k)) for k in self.defaults}
        out.update({k: self._option(k, overrides[k]) for k in OPTIONS if overrides.get(k) is not None})
        return out

    def _check_image(self, name: str, image) -> torch.Tensor:
        """A (3, H, W) or (1, 3, H, W) image in [-1, 1], finite -> (1, 3, H, W)."""
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
        return image if image.dim() == 4 else image[None]

    @staticmethod
    def _check_count(name: str, v, low: int = 1) -> None:
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"UnCLIPPipeline: {name} must be an int >= {low}, got {v!r}")

    @staticmethod
    def _check_text(name: str, v) -> None:
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"UnCLIPPipeline: {name} must be a non-empty string, got {v!r}")

    @staticmethod
    def _check_prompts(prompts) -> list[str]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError(f"UnCLIPPipeline: prompts must be a non-empty string or list of non-empty strings, "
                             f"got {prompts!r}"[:300])
        return prompts

    # ---- the chain ----------------------------------------------------------------------------
    @torch.no_grad()
    def decode_embeddings(self, image_embed: torch.Tensor, text: TextEncoding | None, seeds: Sequence[int],
                          decoder_steps: int | None = None, upsampler_steps: int | None = None,
                          decoder_guidance: float | None = None, progress: bool = False,
                          x_T: torch.Tensor | None = None, inpaint: tuple | None = None,
                          decoder_image_guidance: float | None = None, decoder_text_guidance: float | None = None,
                          decoder_sampler: str | None = None, upsampler_sampler: str | None = None,
                          decoder_eta: float | None = None) -> torch.Tensor:
        """z_i (B, D) (+ optional text) -> images (B, 3, H, W) in [-1, 1] through decoder and upsamplers.
        ``x_T``: the decoder's starting latent (default: noise from the seeds), an inverted one
        (:func:`dalle2_fast.manipulations.invert_images`): decoded over the same strided DDIM
        steps, without thresholding, with ``decoder_eta`` (default 0: deterministic, the inverse
        of :meth:`Decoder.invert`). :data:`OPTIONS`: ``decoder_image_guidance`` /
        ``decoder_text_guidance`` (default ``decoder_guidance``; when they differ, three-branch
        guidance), ``decoder_sampler`` / ``upsampler_sampler``, ``decoder_eta``.
        ``inpaint``: (image (1 or B, 3, H, W), fill mask (1 or B, 1, H, W), jumps, method[,
        mask_reduce]) at the final size — 'repaint': every stage keeps the image outside the mask, the decoder resampling
        with ``jumps``; 'conditioned': the mask-conditioned decoder (:attr:`inpaint_decoder`) is
        given the known pixels and mask, nothing is blended (:mod:`dalle2_fast.inpainting`)."""
        from dalle2_fast.inpainting import stage_known

        opts = self.check_options(dict(decoder_image_guidance=decoder_image_guidance,
                                       decoder_text_guidance=decoder_text_guidance, decoder_sampler=decoder_sampler,
                                       upsampler_sampler=upsampler_sampler, decoder_eta=decoder_eta))
        steps = self._opt("decoder_steps", decoder_steps)
        extra = {} if x_T is None else {"x_T": x_T, "eta": opts["decoder_eta"] or 0.0, "clip": None}
        if x_T is not None:
            if opts["decoder_sampler"] not in (None, "ddim"):
                raise ValueError(f"UnCLIPPipeline: an inverted latent (x_T) is decoded with DDIM (decoder_eta sets "
                                 f"its noise), not decoder_sampler={opts['decoder_sampler']!r}")
            steps = inversion_steps(steps)
        else:
            for k, name in (("sampler", "decoder_sampler"), ("eta", "decoder_eta")):
                if opts[name] is not None:
                    extra[k] = opts[name]
        g = self._opt("decoder_guidance", decoder_guidance)
        g_image = g if opts["decoder_image_guidance"] is None else opts["decoder_image_guidance"]
        g_text = g if opts["decoder_text_guidance"] is None else opts["decoder_text_guidance"]
        if g_text != g_image:
            extra["text_guidance"] = g_text
        up_extra = [{} for _ in self.upsamplers]
        decoder = self.decoder
        if inpaint is not None:
            image, fill, jumps, method, *rest = inpaint
            # the conditioned decoder was trained on binary masks: the hole reduced by 'max' for it
            reduce = "max" if method == "conditioned" else (rest[0] if rest else EDIT_DEFAULTS["mask_reduce"])
            k = stage_known(image, fill, self.decoder.image_size, reduce)
            if method == "conditioned":  # the model alone sees the known pixels: nothing blended
                decoder = self.inpaint_decoder
                extra["inpaint_image"] = decoder.inpaint_condition(k["known"], k["mask"])
            else:
                extra.update(k, jumps=jumps)
                s = self.decoder.image_size
                for i, up in enumerate(self.upsamplers):
                    s *= getattr(up, "factor", 1)
                    up_extra[i] = stage_known(image, fill, s, reduce)
        if x_T is not None and getattr(getattr(self.decoder, "config", None), "sampling", None) is not None:
            extra["sampler"] = "ddim"  # the inverse of Decoder.invert: deterministic DDIM
        extra.update(self._null_kw(decoder))
        with self._running(decoder):
            x = decoder.sample(image_embed, text, seeds=stage_seeds(seeds, STAGE_DECODER), steps=steps,
                               guidance=g_image, progress=progress, **extra).float()
        for i, up in enumerate(self.upsamplers):
            if opts["upsampler_sampler"] is not None:
                up_extra[i]["sampler"] = opts["upsampler_sampler"]
            with self._running(up):
                x = up.sample(x, seeds=stage_seeds(seeds, STAGE_UP + i),
                              steps=self._opt("upsampler_steps", upsampler_steps), progress=progress,
                              **up_extra[i]).float()
        return x

    @torch.no_grad()
    def text_to_embeddings(self, prompts: Sequence[str], seeds: Sequence[int], prior_steps: int | None = None,
                           prior_guidance: float | None = None, progress: bool = False):
        """(TextEncoding of the prompts, z_i (B, D) drawn by the prior) for one batch."""
        with self._running(self.clip):
            text = self.clip.encode_text(list(prompts))
        null = self._null_kw(self.prior)
        with self._running(self.prior):
            z = self.prior.sample(text, stage_seeds(seeds, STAGE_PRIOR), steps=self._opt("prior_steps", prior_steps),
                                  guidance=self._opt("prior_guidance", prior_guidance), progress=progress, **null)
        return text, z.float()

    @torch.no_grad()
    def iter_images(self, prompts: str | Sequence[str], num_images_per_prompt: int = 1, *, seed: int = 0,
                    batch_size: int = 16, start: int = 0, stop: int | None = None, prior_steps: int | None = None,
                    decoder_steps: int | None = None, upsampler_steps: int | None = None,
                    prior_guidance: float | None = None, decoder_guidance: float | None = None,
                    progress: bool = False, **options) -> Iterator[list[Generated]]:
        """Yields the images of a call batch by batch (lists of :class:`Generated`, prompts-major:
        image k is prompt k // num_images_per_prompt with seed seed + k), holding one batch at a
        time. ``start``/``stop`` select images [start, stop) of the call (a shard or a resume).
        ``options``: :data:`OPTIONS` (checked; an unknown name raises)."""
        prompts = self._check_prompts(prompts)
        self._check_count("num_images_per_prompt", num_images_per_prompt)
        self._check_count("batch_size", batch_size)
        check_seed(seed)
        total = len(prompts) * num_images_per_prompt
        stop = total if stop is None else stop
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= total):
            raise ValueError(f"UnCLIPPipeline: need 0 <= start <= stop <= {total}, got start={start}, stop={stop}")
        sample_seeds(seed, total)  # checks the seed range of the whole call
        opts = dict(prior_steps=prior_steps, decoder_steps=decoder_steps, upsampler_steps=upsampler_steps,
                    prior_guidance=prior_guidance, decoder_guidance=decoder_guidance)
        for k, v in opts.items():
            self._opt(k, v)  # checks every option before any work
        options = self.check_options(options)
        for i in range(start, stop, batch_size):
            idx = list(range(i, min(stop, i + batch_size)))
            texts = [prompts[k // num_images_per_prompt] for k in idx]
            seeds = [seed + k for k in idx]
            text, z = self.text_to_embeddings(texts, seeds, prior_steps, prior_guidance)
            x = self.decode_embeddings(z, text, seeds, decoder_steps, upsampler_steps, decoder_guidance, progress,
                                       **options)
            yield [Generated(k, p, s, img) for k, p, s, img in zip(idx, texts, seeds, x)]

    @torch.no_grad()
    def __call__(self, prompts: str | Sequence[str], num_images_per_prompt: int = 1, prior_steps: int | None = None,
                 decoder_steps: int | None = None, upsampler_steps: int | None = None,
                 prior_guidance: float | None = None, decoder_guidance: float | None = None, seed: int = 0,
                 batch_size: int = 16, progress: bool = False, **options) -> torch.Tensor:
        """Images for ``prompts``: (len(prompts) * num_images_per_prompt, 3, H, W) in [0, 1], prompts-major.
        ``options``: :data:`OPTIONS` (e.g. ``decoder_text_guidance=5.0``, ``decoder_sampler='ddpm'``)."""
        chunks = self.iter_images(prompts, num_images_per_prompt, seed=seed, batch_size=batch_size,
                                  prior_steps=prior_steps, decoder_steps=decoder_steps,
                                  upsampler_steps=upsampler_steps, prior_guidance=prior_guidance,
                                  decoder_guidance=decoder_guidance, **options)
        if progress:
            from tqdm.auto import tqdm

            n = len(self._check_prompts(prompts)) * num_images_per_prompt
            chunks = tqdm(chunks, desc="unclip", unit="batch", total=math.ceil(n / batch_size))
        return to_unit_range(torch.stack([g.image for chunk in chunks for g in chunk]))

    # ---- CLIP-latent manipulations (Sec. 3) -----------------------------------------------------
    def _image_embed(self, image: torch.Tensor) -> torch.Tensor:
        with self._running(self.clip):
            if self._raw():  # CLIP's unnormalised embedding, what such a decoder reads
                return self.clip.encode_image(image.to(self.device), normalize=False).float()
            return self.clip.encode_image(image.to(self.device)).float()

    @torch.no_grad()
    def variations(self, image: torch.Tensor, n: int = 4, seed: int = 0, *, latent: str = "inverted",
                   eta: float = VARIATION_ETA, **kw) -> torch.Tensor:
        """``n`` images (n, 3, H, W) in [0, 1] that keep the CLIP content of ``image`` (3, H, W) in
        [-1, 1] (image k from seed + k): decoded from the DDIM-inverted latent of the image with
        DDIM at ``eta`` (0 reconstructs it; the paper's variations use eta > 0), or from fresh
        noise (``latent='noise'``). :mod:`dalle2_fast.manipulations`; ``kw``: decode_embeddings'."""
        from dalle2_fast.manipulations import variations

        return variations(self, image, n, seed, latent=latent, eta=eta, **kw)

    @torch.no_grad()
    def interpolate(self, image_a: torch.Tensor, image_b: torch.Tensor, n: int = 5, seed: int = 0, *,
                    latent: str = "noise", **kw) -> torch.Tensor:
        """``n`` images along slerp(z_a, z_b, t), t = 0 .. 1, all decoded from one seeded noise
        (``latent='noise'``) or from slerp of the images' inverted latents (``'inverted'``: the
        end frames reconstruct the inputs). :mod:`dalle2_fast.manipulations`."""
        from dalle2_fast.manipulations import interpolate

        return interpolate(self, image_a, image_b, n, seed, latent=latent, **kw)

    @torch.no_grad()
    def text_diff(self, image: torch.Tensor, from_text: str, to_text: str, n: int = 5, max_angle: float = 0.5,
                  seed: int = 0, invert: bool = True, **kw) -> torch.Tensor:
        """Edit ``image`` toward ``to_text``: z_d = normalise(z_t(to) - z_t(from)); frames slerp(z_i, z_d, t),
        t = 0 .. max_angle (the paper uses 0.25-0.5). ``invert`` (default, as in the paper): every
        frame decoded from the DDIM inversion of ``image`` under the same guidance, so the t = 0
        frame reconstructs the input; else from seeded noise with the to-caption.
        :mod:`dalle2_fast.manipulations`."""
        from dalle2_fast.manipulations import text_diff

        return text_diff(self, image, from_text, to_text, n, max_angle, seed, invert=invert, **kw)

    # ---- edits (dalle2_fast/inpainting.py) ---------------------------------------------------------
    @torch.no_grad()
    def inpaint(self, image: torch.Tensor, mask: torch.Tensor, prompt: str, n: int = 4, seed: int = 0, *,
                method: str = "repaint", jumps: tuple[int, int] | None = EDIT_DEFAULTS["jumps"], batch_size: int = 16,
                progress: bool = False, image_mix: float = EDIT_DEFAULTS["image_mix"],
                mask_reduce: str = EDIT_DEFAULTS["mask_reduce"], harmonize: bool = EDIT_DEFAULTS["harmonize"],
                **opts) -> torch.Tensor:
        """``n`` images (n, 3, S, S) in [0, 1] that keep ``image`` (3, H, W) in [-1, 1] where ``mask``
        (H, W) is 0 and fill it from ``prompt`` where it is 1 (image k from seed + k). ``method``
        'repaint': training-free, the known pixels blended into every fused sampling step of every
        stage, the decoder resampling with ``jumps`` = (jump_length, jump_n_sample) (None: no
        resampling); 'conditioned': the mask-conditioned decoder (:attr:`inpaint_decoder`, GLIDE's
        inpainting model) sees the known pixels and the mask, nothing is blended. ``image_mix``
        in [0, 1]: the prior's z_i slerped that far toward the CLIP embedding of the image with
        its hole painted the kept pixels' mean colour; ``mask_reduce``: how the hole is reduced
        for the lower-resolution stages ('max': any covered pixel, 'area': the covered fraction
        as a soft mask, 'min': all covered pixels); ``harmonize``: a final pass that shifts the
        hole by the smoothest field matching its border (Poisson blending; kept pixels
        unchanged). Defaults: ``inpainting.EDIT_DEFAULTS``. ``opts``: prior_steps,
        decoder_steps, upsampler_steps, prior_guidance, decoder_guidance. Edge cases (mask size,
        non-binary, all zero / all one) as :mod:`dalle2_fast.inpainting` documents."""
        from dalle2_fast.inpainting import run_inpaint

        unknown = sorted(set(opts) - set(self.defaults))
        if unknown:
            raise ValueError(f"UnCLIPPipeline.inpaint: unknown options {unknown} (known: {sorted(self.defaults)})")
        return run_inpaint(self, image, mask, prompt, n, seed, method, jumps, batch_size, opts, progress, image_mix,
                           mask_reduce, harmonize)

    @torch.no_grad()
    def outpaint(self, image: torch.Tensor, direction: str, pixels: int, prompt: str, n: int = 4, seed: int = 0,
                 **kw) -> torch.Tensor:
        """Extend ``image`` (3, H, W) in [-1, 1] past its ``direction`` border ('left', 'right', 'up',
        'down') by ``pixels`` (at the pipeline's size S): the image moves away from that side and
        the new strip is filled from ``prompt`` (:meth:`inpaint`'s other arguments)."""
        from dalle2_fast.inpainting import outpaint_canvas, resize_pair

        x = self._check_image("image", image)
        x, _ = resize_pair(x, torch.zeros(1, 1, *x.shape[-2:]), self.image_size)
        canvas, fill = outpaint_canvas(x, direction, pixels)
        return self.inpaint(canvas[0], fill[0, 0], prompt, n, seed, **kw)


def _check_dtype(dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"UnCLIPPipeline: dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype!r}")
    return dtype


__all__ = ["UnCLIPPipeline", "Prior", "Decoder", "Upsampler", "Generated", "slerp", "slerp_with_norms", "to_unit_range", "inversion_steps",
           "OPTIONS",
           "shipped_weights_dir", "read_manifest", "SHIPPED_DIR", "DEFAULTS"]
