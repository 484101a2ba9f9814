"""Requests of OpenAI's Images API, checked: every bad value is a 4xx whose ``{"error": {"message",
"type", "param"}}`` names the field. Our extra fields (``seed``, ``prior_steps``,
``decoder_steps``, ``upsampler_steps``, ``prior_guidance``, ``decoder_guidance``) sit beside
OpenAI's; a field neither knows is refused (a typo is never silently ignored)."""
from __future__ import annotations

import io
import math
import secrets
from dataclasses import dataclass, field

import torch

from dalle2_fast.serve.config import MODEL_ALIASES, MODEL_ID, ServeConfig

MAX_SEED = 2**63 - 1
STEPS = ("prior_steps", "decoder_steps", "upsampler_steps")
GUIDANCE = ("prior_guidance", "decoder_guidance")
OPENAI_COMMON = ("n", "size", "response_format", "model", "user")
GENERATION_FIELDS = ("prompt", *OPENAI_COMMON, "seed", *STEPS, *GUIDANCE)
VARIATION_FIELDS = ("image", *OPENAI_COMMON, "seed", "decoder_steps", "upsampler_steps", "decoder_guidance")
# OpenAI fields this server does not implement: refused with that reason rather than "unknown"
UNSUPPORTED = ("quality", "style", "background", "moderation", "output_compression", "output_format",
               "partial_images", "stream", "mask")


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, type: str = "invalid_request_error",
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.headers = status, message, param, type, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": None}}


@dataclass
class ImageRequest:
    """One checked request: ``n`` images, image k from ``seed + k``."""

    kind: str                      # 'generation' | 'variation'
    n: int
    seed: int
    response_format: str
    overrides: dict = field(default_factory=dict)  # the steps / guidance the request sets
    prompt: str | None = None
    image: torch.Tensor | None = None  # a variation's source, (3, H, W) in [-1, 1]


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param)


# the pipeline's per-call stage options (split decoder guidance, samplers): refused with the reason
NOT_PER_REQUEST = ("decoder_image_guidance", "decoder_text_guidance", "decoder_sampler", "upsampler_sampler",
                   "decoder_eta")


def _check_fields(got, known: tuple, where: str) -> None:
    for k in got:
        if k in NOT_PER_REQUEST:
            raise _bad(k, "not a per-request option of this server (requests are batched together under the "
                          "pipeline's own samplers and one decoder guidance scale); use decoder_guidance, or the "
                          "Python API / `dalle2-fast sample` for this option")
        if k in UNSUPPORTED:
            raise _bad(k, f"not supported by this server (dalle2_fast {where}); remove it")
        if k not in known:
            raise ApiError(400, f"Unrecognized request argument supplied: {k} (this endpoint accepts "
                                f"{', '.join(known)})", k)


def _int(name: str, v, lo: int, hi: int, form: bool) -> int:
    if form and isinstance(v, str):  # multipart fields arrive as text
        try:
            v = int(v.strip())
        except ValueError:
            raise _bad(name, f"expected an integer in [{lo}, {hi}], got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(name, f"expected an integer in [{lo}, {hi}], got {v!r}"[:200])
    return v


def _number(name: str, v, lo: float, hi: float, form: bool) -> float:
    if form and isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise _bad(name, f"expected a number in [{lo:g}, {hi:g}], got {v!r}") from None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise _bad(name, f"expected a finite number in [{lo:g}, {hi:g}], got {v!r}"[:200])
    return float(v)


def _common(body: dict, cfg: ServeConfig, size: int, kind: str, form: bool) -> ImageRequest:
    n = _int("n", body.get("n", 1), 1, cfg.max_n, form)
    native = f"{size}x{size}"
    sz = body.get("size", native)
    if sz not in (native, "auto"):
        raise _bad("size", f"this model draws {native} images; expected {native!r} (or 'auto'), got {sz!r}"[:200])
    fmt = body.get("response_format", "url")
    if fmt not in ("url", "b64_json"):
        raise _bad("response_format", f"expected 'url' or 'b64_json', got {fmt!r}"[:200])
    model = body.get("model", MODEL_ID)
    if model not in (MODEL_ID, *MODEL_ALIASES):
        raise _bad("model", f"this server serves {MODEL_ID!r} (alias {', '.join(MODEL_ALIASES)}), got {model!r}"[:200])
    user = body.get("user", "")
    if not isinstance(user, str) or len(user) > 256:
        raise _bad("user", "expected a string of at most 256 characters")
    if "seed" in body and body["seed"] is not None:
        seed = _int("seed", body["seed"], 0, MAX_SEED - (n - 1), form)
    else:
        seed = secrets.randbelow(2**31)  # reported back with every image
    overrides = {}
    for k in STEPS:
        if body.get(k) is not None:
            overrides[k] = _int(k, body[k], 1, cfg.max_steps, form)
    for k in GUIDANCE:
        if body.get(k) is not None:
            overrides[k] = _number(k, body[k], 0.0, 100.0, form)
    return ImageRequest(kind, n, seed, fmt, overrides)


def parse_generation(body, cfg: ServeConfig, size: int) -> ImageRequest:
    """``POST /v1/images/generations`` JSON body -> a checked request."""
    if not isinstance(body, dict):
        raise ApiError(400, f"expected a JSON object with a 'prompt', got {type(body).__name__}", None)
    _check_fields(body, GENERATION_FIELDS, "images/generations")
    if "prompt" not in body:
        raise _bad("prompt", "missing; give the text to draw")
    prompt = body["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad("prompt", f"expected non-empty text, got {prompt!r}"[:200])
    if len(prompt) > cfg.max_prompt_chars:
        raise _bad("prompt", f"{len(prompt)} characters is longer than the {cfg.max_prompt_chars} accepted")
    req = _common(body, cfg, size, "generation", form=False)
    req.prompt = prompt
    return req


def decode_image(data: bytes, param: str = "image", max_side: int = 512) -> torch.Tensor:
    """An uploaded image file -> (3, H, W) in [-1, 1] (RGB; alpha dropped; shrunk to ``max_side``)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise _bad(param, "empty file; upload a PNG (or JPEG/WebP) image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width * im.height > 64_000_000:
                raise _bad(param, f"{im.width}x{im.height} pixels is too large")
            im = im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise _bad(param, f"not an image this server can read ({e})"[:300]) from None
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
    x = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.height, im.width, 3)
    return x.permute(2, 0, 1).float().div(127.5).sub(1.0)


def parse_variation(fields: dict, image: bytes | None, cfg: ServeConfig, size: int) -> ImageRequest:
    """``POST /v1/images/variations`` multipart fields (text) and the uploaded image -> a checked request."""
    _check_fields(list(fields) + (["image"] if image is not None else []), VARIATION_FIELDS, "images/variations")
    if image is None:
        raise _bad("image", "missing; upload the image to vary as the multipart file field 'image'")
    req = _common(fields, cfg, size, "variation", form=True)
    req.image = decode_image(image)
    return req


__all__ = ["ApiError", "ImageRequest", "parse_generation", "parse_variation", "decode_image", "GENERATION_FIELDS",
           "VARIATION_FIELDS"]
