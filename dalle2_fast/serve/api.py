"""Requests of OpenAI's Images API, checked: every bad value is a 4xx whose ``{"error": {"message",
"type", "param"}}`` names the field. Our extra fields (``seed``, ``prior_steps``,
``decoder_steps``, ``upsampler_steps``, ``prior_guidance``, ``decoder_guidance``; for edits
``jumps``; for variations ``latent`` and ``eta``) sit beside OpenAI's; a field neither knows is
refused (a typo is never silently ignored).

Edits (``POST /v1/images/edits``, OpenAI's shape): a square ``image`` and an optional ``mask`` of
the same size, as multipart files or, in a JSON body, base64 strings (data URLs too). The mask
says what to fill in either of two ways: transparent pixels (alpha 0, OpenAI's convention; a
mask with an alpha channel that is not fully opaque is read so), or, for a mask without
transparency, white = fill and black = keep (grey levels or RGB with equal channels). Without a
mask, the image's own transparent pixels are the hole. Anything else is a 400 naming the field:
a mask of another size, values other than 0 and 255 (partial transparency, grey, anti-aliased
edges: threshold it first), coloured RGB, a non-square image. A mask with nothing to fill
answers the input image; one that fills everything answers a plain generation."""
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
VARIATION_FIELDS = ("image", *OPENAI_COMMON, "seed", "decoder_steps", "upsampler_steps", "decoder_guidance", "latent",
                    "eta")
EDIT_FIELDS = ("image", "mask", "prompt", *OPENAI_COMMON, "seed", *STEPS, *GUIDANCE, "jumps")
# OpenAI fields this server does not implement: refused with that reason rather than "unknown"
UNSUPPORTED = ("quality", "style", "background", "moderation", "output_compression", "output_format",
               "partial_images", "stream", "input_fidelity")
IMAGE_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa")  # what an image or mask may be


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

    kind: str                      # 'generation' | 'variation' | 'edit' | 'unchanged' (an edit with nothing to fill)
    n: int
    seed: int
    response_format: str
    overrides: dict = field(default_factory=dict)  # the steps / guidance (and an edit's jumps) the request sets
    prompt: str | None = None
    image: torch.Tensor | None = None  # a variation's or edit's source, (3, H, W) in [-1, 1]
    fill: torch.Tensor | None = None   # an edit's hole at the model's size, (1, S, S) of {0, 1}, 1 = fill


def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param)


# the pipeline's per-call stage options (split decoder guidance, samplers): refused with the reason
NOT_PER_REQUEST = ("decoder_image_guidance", "decoder_text_guidance", "decoder_sampler", "upsampler_sampler",
                   "decoder_eta")


def _check_fields(got, known: tuple, where: str) -> None:
    for k in got:
        if k in known:
            continue
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


def _prompt(fields, cfg: ServeConfig, what: str) -> str:
    """The request's 'prompt': present, non-empty text, at most ``cfg.max_prompt_chars``."""
    if "prompt" not in fields:
        raise _bad("prompt", f"missing; give {what}")
    prompt = fields["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise _bad("prompt", f"expected non-empty text, got {prompt!r}"[:200])
    if len(prompt) > cfg.max_prompt_chars:
        raise _bad("prompt", f"{len(prompt)} characters is longer than the {cfg.max_prompt_chars} accepted")
    return prompt


def parse_generation(body, cfg: ServeConfig, size: int) -> ImageRequest:
    """``POST /v1/images/generations`` JSON body -> a checked request."""
    if not isinstance(body, dict):
        raise ApiError(400, f"expected a JSON object with a 'prompt', got {type(body).__name__}", None)
    _check_fields(body, GENERATION_FIELDS, "images/generations")
    prompt = _prompt(body, cfg, "the text to draw")
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
    return _rgb_tensor(im)


def _rgb_tensor(im) -> torch.Tensor:
    """A PIL image -> (3, H, W) in [-1, 1] (its RGB channels)."""
    rgb = im.convert("RGB")
    x = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
    return x.permute(2, 0, 1).float().div(127.5).sub(1.0)


def parse_variation(fields: dict, image: bytes | None, cfg: ServeConfig, size: int) -> ImageRequest:
    """``POST /v1/images/variations`` multipart fields (text) and the uploaded image -> a checked request."""
    _check_fields(list(fields) + (["image"] if image is not None else []), VARIATION_FIELDS, "images/variations")
    if image is None:
        raise _bad("image", "missing; upload the image to vary as the multipart file field 'image'")
    req = _common(fields, cfg, size, "variation", form=True)
    from dalle2_fast.manipulations import LATENTS  # a variation's starting latent

    latent = fields.get("latent", "inverted")
    if latent not in LATENTS:
        raise _bad("latent", f"expected one of {', '.join(LATENTS)} (inverted: decode from the image's DDIM-inverted "
                             f"latent, the default; noise: from fresh seeded noise), got {latent!r}"[:300])
    req.overrides["latent"] = latent
    if fields.get("eta") is not None:
        if latent != "inverted":
            raise _bad("eta", "only with latent=inverted (the DDIM noise added to the inverted latent's decode); "
                              "latent=noise decodes with the pipeline's own sampler")
        req.overrides["eta"] = _number("eta", fields["eta"], 0.0, 1000.0, form=True)
    req.image = decode_image(image)
    return req


def _open(data: bytes, param: str):
    """An uploaded file -> a loaded PIL image (400 naming ``param`` when it is not one)."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise _bad(param, "empty file; upload a PNG image")
    try:
        im = Image.open(io.BytesIO(data))
        if im.width * im.height > 64_000_000:
            raise _bad(param, f"{im.width}x{im.height} pixels is too large")
        im.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as e:
        raise _bad(param, f"not an image this server can read ({e})"[:300]) from None
    if im.mode not in IMAGE_MODES:
        raise _bad(param, f"expected an RGB(A) or greyscale image, got {len(im.getbands())} channels of mode "
                          f"{im.mode!r}")
    return im


def _alpha(im):
    """The alpha channel (a PIL 'L' image) when ``im`` has transparency that is not fully opaque, else None."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        a = im.convert("RGBA").getchannel("A")
        if a.getextrema()[0] < 255:
            return a
    return None


def _binary(values: torch.Tensor, param: str, what: str, fill_value: int) -> torch.Tensor:
    """(H, W) uint8 levels that must all be 0 or 255 -> (H, W) fill mask, 1 where == ``fill_value``."""
    bad = (values != 0) & (values != 255)
    if bool(bad.any()):
        v = int(values[bad][0])
        raise _bad(param, f"must be binary: {what} of 0 or 255 only, got {int(bad.sum())} pixels with other values "
                          f"(e.g. {v}); threshold it (e.g. at 128)")
    return (values == fill_value).float()


def _levels(im) -> torch.Tensor:
    return torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(im.height, im.width)


def decode_edit(image: bytes, mask: bytes | None, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An edit's uploads -> (image (3, size, size) in [-1, 1], fill (1, size, size) of {0, 1}).
    The rules (transparent = fill, else white = fill) are the module's."""
    from dalle2_fast.inpainting import resize_pair

    im = _open(image, "image")
    if im.width != im.height:
        raise _bad("image", f"must be square (the model draws {size}x{size}), got {im.width}x{im.height}")
    if mask is None:
        a = _alpha(im)
        if a is None:
            raise _bad("mask", "missing, and the image has no transparent pixels: upload a mask (transparent or "
                               "white = fill, black = keep) or an image whose transparent pixels are the hole")
        fill = _binary(_levels(a), "image", "the image's alpha (its transparency is the mask)", 0)
    else:
        mk = _open(mask, "mask")
        if mk.size != im.size:
            raise _bad("mask", f"must have the image's size {im.width}x{im.height}, got {mk.width}x{mk.height}")
        a = _alpha(mk)
        if a is not None:  # OpenAI's convention: the fully transparent pixels are the hole
            fill = _binary(_levels(a), "mask", "alpha", 0)
        else:  # no transparency: white = fill, black = keep
            rgb = mk.convert("RGB")
            r, g, b = (_levels(c) for c in rgb.split())
            if not (torch.equal(r, g) and torch.equal(g, b)):
                raise _bad("mask", "expected a greyscale mask (white = fill, black = keep) or one with transparency "
                                   "(transparent = fill), got a coloured RGB image")
            fill = _binary(r, "mask", "grey levels", 255)
    x, m = resize_pair(_rgb_tensor(im)[None], fill[None, None], size)
    return x[0], m[0]


def decode_b64(name: str, v) -> bytes:
    """A JSON edit's base64 file field (a data URL too) -> bytes."""
    import base64
    import binascii

    if not isinstance(v, str) or not v:
        raise _bad(name, f"expected a base64-encoded PNG (or a data URL) as a string, got {type(v).__name__}")
    if v.startswith("data:"):
        v = v.partition(",")[2]
    try:
        return base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(name, "not valid base64; encode the PNG file's bytes (or send multipart/form-data)") from None


def _jumps(v, form: bool):
    """``jumps``: 'L,N' / [L, N] (RePaint's jump length and count) or 'none' / null (the blend alone)."""
    if v is None or (isinstance(v, str) and v.strip().lower() == "none"):
        return None
    if isinstance(v, str):
        parts = v.split(",")
    elif isinstance(v, list):
        parts = v
    else:
        parts = None
    try:
        jl, jn = (int(p) if not isinstance(p, (bool, float)) else None for p in parts)
    except (TypeError, ValueError):
        jl = jn = None
    if not (isinstance(jl, int) and isinstance(jn, int) and 1 <= jl <= 100 and 1 <= jn <= 20):
        raise _bad("jumps", f"expected 'LENGTH,COUNT' with LENGTH in [1, 100] and COUNT in [1, 20], or 'none', "
                            f"got {v!r}"[:200])
    return (jl, jn)


def parse_edit(fields: dict, image: bytes | None, mask: bytes | None, cfg: ServeConfig, size: int,
               form: bool) -> ImageRequest:
    """``POST /v1/images/edits`` fields (multipart text or JSON values) and the image / mask files
    -> a checked request: kind 'edit', or 'unchanged' (nothing to fill) or 'generation'
    (everything to fill)."""
    got = list(fields) + (["image"] if image is not None else []) + (["mask"] if mask is not None else [])
    _check_fields(got, EDIT_FIELDS, "images/edits")
    if image is None:
        raise _bad("image", "missing; upload the image to edit (multipart file 'image', or base64 in JSON)")
    prompt = _prompt(fields, cfg, "the text to draw in the hole")
    jumps = _jumps(fields["jumps"], form) if "jumps" in fields else "default"
    req = _common(fields, cfg, size, "edit", form)
    req.prompt = prompt
    req.image, req.fill = decode_edit(image, mask, size)
    if not bool(req.fill.any()):
        req.kind = "unchanged"
    elif bool(req.fill.all()):
        req.kind, req.image, req.fill = "generation", None, None
    elif jumps != "default":
        req.overrides["jumps"] = jumps
    return req


__all__ = ["ApiError", "ImageRequest", "parse_generation", "parse_variation", "parse_edit", "decode_image", "decode_b64",
           "decode_edit", "GENERATION_FIELDS", "VARIATION_FIELDS", "EDIT_FIELDS"]
