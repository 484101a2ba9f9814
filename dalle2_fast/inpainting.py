"""Edits for :class:`~dalle2_fast.pipeline.UnCLIPPipeline`: inpainting (fill a masked region from
a caption) and outpainting (extend an image past a border). Method 'repaint' (training-free):
every diffusion stage keeps the known pixels, forward-noised to each step's level, inside the
fused sampling step, and the decoder resamples with jumps back in time so the fill harmonises
with its border (``dalle2_fast.diffusion.repaint``). Method 'conditioned': the pipeline's
mask-conditioned decoder (GLIDE's inpainting model, ``recipes.unclip`` stage ``inpaint``) is
given the known pixels and the mask; nothing is blended, so the kept pixels are the model's.

Masks at this level (API and command line) say what to **fill**: 1 / white = generate, 0 /
black = keep (the sampling ops take the complement: 1 = keep). Behaviour at the edges:

- a mask of another size than the image: ``ValueError`` naming both sizes;
- a mask that is not binary (values other than 0 and 1): ``ValueError`` (threshold it first;
  the command line thresholds PNG masks at 50%);
- an all-zero mask (nothing to fill): the input image, ``n`` times, without sampling;
- an all-one mask (everything to fill): plain generation (``pipeline(prompt)``, same seeds);
- an image outside [-1, 1], not finite, or not 3 channels: ``ValueError`` (``_check_image``).

Images of another size than the pipeline's output are resized (bicubic) and their masks with
them (nearest, then kept binary); the result is at the pipeline's size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

DIRECTIONS = ("left", "right", "up", "down")
METHODS = ("repaint", "conditioned")
# what UnCLIPPipeline.inpaint (and the service's edits) use unless told otherwise
# (30 cases of the eval, benchmarks/results/cpu-xeon-2core/inpaint/README.md: mask_reduce 'area'
# took the mean border step from 15.1 to 5.4 levels at the same fill rate; jumps (5, 5) filled
# 24/30 against (5, 3)'s 22/30; the harmonize pass took the median border step from 3.1 to 1.5
# levels (the mean from 6.9 to 5.3; 0.9 between kept neighbours) and kept 24/30; image_mix 0.3
# lost 3 fills and stays off)
EDIT_DEFAULTS = {"jumps": (5, 5), "image_mix": 0.0, "mask_reduce": "area", "harmonize": True}


def check_mask(mask, image_hw: tuple[int, int]) -> torch.Tensor:
    """A fill mask (H, W), (1, H, W) or (1, 1, H, W) of 0 / 1 (bool, int or float) at the image's
    size -> (1, 1, H, W) float32 of {0, 1}, 1 = fill."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a tensor (H, W) of 0 (keep) and 1 (fill), got {type(mask).__name__}")
    m = mask
    while m.dim() > 2 and m.shape[0] == 1:
        m = m[0]
    if m.dim() != 2:
        raise ValueError(f"mask must be (H, W), (1, H, W) or (1, 1, H, W), got {tuple(mask.shape)}")
    if tuple(m.shape) != tuple(image_hw):
        raise ValueError(f"mask must have the image's size {tuple(image_hw)} (H, W), got {tuple(m.shape)}")
    m = m.float()
    if not bool(((m == 0) | (m == 1)).all()):
        bad = m[(m != 0) & (m != 1)]
        raise ValueError(f"mask must be binary: 0 = keep, 1 = fill (got other values, e.g. {float(bad[0]):.3g}; "
                         "threshold it, e.g. mask > 0.5)")
    return m[None, None]


def box_mask(box, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) fill mask of the box (x0, y0, x1, y1) in pixels, x1 / y1 exclusive."""
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be four ints x0,y0,x1,y1, got {box!r}") from None
    h, w = size
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"box must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} (the image's width and "
                         f"height), got {(x0, y0, x1, y1)}")
    m = torch.zeros(h, w)
    m[y0:y1, x0:x1] = 1
    return m


def resize_pair(image: torch.Tensor, fill: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, 3, H, W) image and (1, 1, H, W) fill mask at the pipeline's size (no-op when equal)."""
    if tuple(image.shape[-2:]) == (size, size):
        return image.float(), fill
    x = F.interpolate(image.float(), size=(size, size), mode="bicubic", antialias=True).clamp(-1, 1)
    m = (F.interpolate(fill, size=(size, size), mode="nearest") > 0.5).float()
    return x, m


MASK_REDUCE = ("max", "area", "min")


def stage_mask(fill: torch.Tensor, size: int, reduce: str = "max") -> torch.Tensor:
    """The fill mask at a stage's resolution. ``reduce`` says how the pixels one low-res pixel
    covers decide it: 'max' (filled when any is: the hole never shrinks), 'min' (filled only when
    all are) or 'area' (the filled fraction: a soft mask, the fused blend interpolates). Not a
    whole factor, or upsampling: nearest."""
    if reduce not in MASK_REDUCE:
        raise ValueError(f"mask_reduce must be one of {MASK_REDUCE}, got {reduce!r}")
    h = fill.shape[-1]
    if h == size:
        return fill
    if h % size == 0:
        f = h // size
        if reduce == "max":
            return F.max_pool2d(fill, f)
        if reduce == "min":
            return -F.max_pool2d(-fill, f)
        return F.avg_pool2d(fill, f)
    return (F.interpolate(fill, size=(size, size), mode="nearest") > 0.5).float()


def outpaint_canvas(image: torch.Tensor, direction: str, pixels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift (1, 3, S, S) ``image`` away from ``direction`` by ``pixels`` and return (canvas, fill
    mask): the new strip on that side is to be filled, the rest is the image (the canvas keeps
    the pipeline's size; chain calls to extend further)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    s = image.shape[-1]
    if isinstance(pixels, bool) or not isinstance(pixels, int) or not 1 <= pixels < s:
        raise ValueError(f"pixels must be an int in [1, {s - 1}] (the image is {s} wide), got {pixels!r}")
    canvas, fill = torch.zeros_like(image), torch.zeros(1, 1, s, s, device=image.device)
    p = pixels
    if direction == "right":
        canvas[..., :, : s - p], fill[..., :, s - p :] = image[..., :, p:], 1
    elif direction == "left":
        canvas[..., :, p:], fill[..., :, :p] = image[..., :, : s - p], 1
    elif direction == "down":
        canvas[..., : s - p, :], fill[..., s - p :, :] = image[..., p:, :], 1
    else:
        canvas[..., p:, :], fill[..., :p, :] = image[..., : s - p, :], 1
    return canvas, fill


def check_jumps(jumps) -> tuple[int, int] | None:
    """None (the plain fused blend) or (jump_length, jump_n_sample), both ints >= 1."""
    if jumps is None:
        return None
    try:
        jl, jn = jumps
    except (TypeError, ValueError):
        raise ValueError(f"jumps must be (jump_length, jump_n_sample) or None, got {jumps!r}") from None
    for name, v in (("jump_length", jl), ("jump_n_sample", jn)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"jumps: {name} must be an int >= 1, got {v!r}")
    return jl, jn


def stage_known(image: torch.Tensor, fill: torch.Tensor, size: int, reduce: str = "max") -> dict:
    """{'known': image at ``size``, 'mask': keep-mask (1 = keep) at ``size``} for one stage
    (``reduce``: :func:`stage_mask`)."""
    known = image if image.shape[-1] == size else \
        F.interpolate(image, size=(size, size), mode="bicubic", antialias=True).clamp(-1, 1)
    return {"known": known, "mask": 1.0 - stage_mask(fill, size, reduce)}


def context_image(image: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """The image with its hole painted the mean colour of the kept pixels (what ``image_mix``
    embeds: the context, without whatever the hole held)."""
    keep = 1.0 - fill
    mean = (image * keep).sum((-2, -1), keepdim=True) / keep.sum((-2, -1), keepdim=True).clamp_min(1.0)
    return image * keep + mean * fill


_SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x moved so that pixel p holds x[p + (dy, dx)] (zero beyond the edge)."""
    p = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    return p[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


@torch.no_grad()
def harmonize(out: torch.Tensor, known: torch.Tensor, fill: torch.Tensor, max_step: float = 0.2,
              iters: int = 500, tol: float = 1e-5) -> torch.Tensor:
    """A harmonisation pass (Perez et al. 2003's seamless cloning with the fill as the source):
    the hole of ``out`` (B, C, H, W) in [-1, 1] is shifted by the smoothest field h (a membrane,
    Laplace's equation inside the hole) for which each hole pixel next to a kept pixel matches
    it, so the fill's own gradients are kept and a colour offset across the border is spread
    over the hole. Only border pairs that differ by at most ``max_step`` (every channel; 0.2 =
    25 levels) are matched: a larger step is an edge the fill drew there (an object reaching
    the border), left as it is rather than smeared into the background. Only hole pixels
    change (``fill`` (B or 1, 1, H, W), 1 = hole); the kept ones are returned bit for bit.
    Conjugate gradients, every image and channel at once."""
    hole = fill.to(out).expand(out.shape[0], 1, *out.shape[-2:])
    known = known.to(out).expand_as(out)
    deg = torch.zeros_like(out[:, :1])
    b = torch.zeros_like(out)
    links = []
    for dy, dx in _SHIFTS:
        inside = _shift(torch.ones_like(hole), dy, dx)  # the neighbour exists
        nb_hole = _shift(hole, dy, dx)
        nb_known = _shift(known, dy, dx)
        pair = hole * inside * (1 - nb_hole)  # p in the hole, q kept
        close = ((nb_known - out).abs().amax(1, keepdim=True) <= max_step).to(out)
        matched = pair * close
        deg = deg + hole * inside * nb_hole + matched
        b = b + matched * (nb_known - out)
        links.append((dy, dx, hole * nb_hole))

    def A(h):
        r = deg * h
        for dy, dx, both in links:
            r = r - both * _shift(h, dy, dx)
        return r

    h = torch.zeros_like(out)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum()
    stop = tol * tol * max(float((b * b).sum()), 1e-30)
    for _ in range(iters):
        if float(rr) <= stop:
            break
        Ap = A(p)
        alpha = rr / (p * Ap).sum().clamp_min(1e-30)
        h = h + alpha * p
        r = r - alpha * Ap
        rr_new = (r * r).sum()
        p = r + (rr_new / rr.clamp_min(1e-30)) * p
        rr = rr_new
    return torch.where(hole.expand_as(out) > 0, (out + h).clamp(-1, 1), out)


def check_image_mix(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
        raise ValueError(f"image_mix must be a number in [0, 1] (0 = the caption's z_i alone), got {v!r}")
    return float(v)


def mix_embeddings(z: torch.Tensor, z_ctx: torch.Tensor, t: float) -> torch.Tensor:
    """slerp(z, z_ctx, t) along the unit sphere, with the norm interpolated linearly (so
    unnormalised embeddings keep their scale; unit ones stay unit)."""
    from dalle2_fast.pipeline import slerp_with_norms

    return slerp_with_norms(z, z_ctx.expand_as(z), t)


def run_inpaint(pipe, image, fill, prompt: str, n: int, seed: int, method: str, jumps, batch_size: int,
                opts: dict, progress: bool, image_mix: float = EDIT_DEFAULTS["image_mix"],
                mask_reduce: str = EDIT_DEFAULTS["mask_reduce"],
                harmonize_pass: bool = EDIT_DEFAULTS["harmonize"]) -> torch.Tensor:
    """The body of ``UnCLIPPipeline.inpaint`` (arguments checked here, before any work):
    (n, 3, S, S) in [0, 1]."""
    from dalle2_fast.pipeline import to_unit_range
    from dalle2_fast.seeding import check_seed, sample_seeds

    x = pipe._check_image("image", image)
    fill = check_mask(fill, tuple(x.shape[-2:]))
    pipe._check_text("prompt", prompt)
    pipe._check_count("n", n)
    pipe._check_count("batch_size", batch_size)
    check_seed(seed)
    seeds = sample_seeds(seed, n)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "conditioned" and getattr(pipe, "inpaint_decoder", None) is None:
        raise ValueError("method 'conditioned' needs a mask-conditioned decoder (`dalle2-fast train unclip --stages "
                         "inpaint`); this pipeline has none: use method='repaint'")
    jumps = check_jumps(jumps)
    image_mix = check_image_mix(image_mix)
    stage_mask(fill, fill.shape[-1], mask_reduce)  # checks the name
    if not isinstance(harmonize_pass, bool):
        raise ValueError(f"harmonize must be True or False, got {harmonize_pass!r}")
    for k, v in opts.items():
        pipe._opt(k, v)
    size = pipe.image_size
    x, fill = resize_pair(x, fill, size)
    x, fill = x.to(pipe.device), fill.to(pipe.device)
    if not bool(fill.any()):  # nothing to fill: the input
        return to_unit_range(x.expand(n, -1, -1, -1))
    if bool(fill.all()):  # everything to fill: plain generation
        return pipe([prompt], n, seed=seed, batch_size=batch_size, progress=progress, **opts)
    out = []
    for i in range(0, n, batch_size):
        chunk = seeds[i : i + batch_size]
        out.append(edit_batch(pipe, x, fill, [prompt] * len(chunk), chunk, opts, jumps, method, image_mix,
                              mask_reduce, harmonize_pass, progress))
    return to_unit_range(torch.cat(out))


def edit_batch(pipe, images: torch.Tensor, fills: torch.Tensor, prompts, seeds, opts: dict,
               jumps=EDIT_DEFAULTS["jumps"], method: str = "repaint", image_mix: float = EDIT_DEFAULTS["image_mix"],
               mask_reduce: str = EDIT_DEFAULTS["mask_reduce"], harmonize_pass: bool = EDIT_DEFAULTS["harmonize"],
               progress: bool = False) -> torch.Tensor:
    """One batch of edits, arguments already checked: ``images`` (B or 1, 3, S, S) in [-1, 1] and
    ``fills`` (B or 1, 1, S, S) of {0, 1} at the pipeline's size S, one prompt and seed per image
    -> (B, 3, S, S) in [-1, 1]. ``image_mix`` > 0: the prior's z_i is slerped that far toward the
    CLIP embedding of the image's context (:func:`context_image`); ``harmonize_pass``: the
    output's hole through :func:`harmonize` (kept pixels unchanged)."""
    text, z = pipe.text_to_embeddings(list(prompts), seeds, opts.get("prior_steps"), opts.get("prior_guidance"))
    if image_mix > 0:
        z = mix_embeddings(z, pipe._image_embed(context_image(images, fills)), image_mix)
    x = pipe.decode_embeddings(z, text, seeds, opts.get("decoder_steps"), opts.get("upsampler_steps"),
                               opts.get("decoder_guidance"), progress,
                               inpaint=(images, fills, jumps, method, mask_reduce))
    return harmonize(x, images, fills) if harmonize_pass else x


__all__ = ["EDIT_DEFAULTS", "harmonize", "run_inpaint", "edit_batch", "stage_known", "context_image", "mix_embeddings", "check_image_mix", "MASK_REDUCE", "check_mask", "box_mask", "resize_pair", "stage_mask", "outpaint_canvas", "check_jumps", "DIRECTIONS",
           "METHODS"]
