"""The ``dalle2-fast train unclip`` recipe: CLIP, prior, decoder and upsamplers on the shapes data.

Stages, in order, each from the one seed (``UnCLIPRecipe.seed``):

1. the tiny open_clip (``dalle2fast-shapes-tiny``, word tokenizer over the shapes vocabulary),
   contrastive (open_clip's ``ClipLoss``), on base-resolution images and their captions;
2. the diffusion prior on (caption -> CLIP image embedding) pairs from the frozen CLIP;
3. the decoder on (image, z_i, caption tokens);
4. the upsamplers, each on (high-res, its degraded low-res) pairs.

Training images are rendered once (``n_train`` items of ``ShapesDataset(seed)``, at every
resolution of the cascade). With fixed step counts the result is a function of the seed
(``max_minutes`` per stage trades that for a wall-clock bound). The output directory holds the
``UnCLIPPipeline`` (``pipeline/``, loadable with ``UnCLIPPipeline.from_pretrained``) and
``log.csv`` (stage, step, loss).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from dalle2_fast.clip import TINY_SHAPES_MODEL, ClipAdapter, WordTokenizer
from dalle2_fast.clip_train import ClipTrainConfig, train_clip


@dataclass
class Stage:
    steps: int
    batch_size: int = 64
    lr: float = 1e-3
    max_minutes: float | None = None  # stop early after this long (breaks seed-exactness)
    ema: float = 0.0                  # keep an exponential moving average of the weights (0: off)


@dataclass
class UnCLIPRecipe:
    seed: int = 0
    n_train: int = 20000
    n_train_upsampler: int = 3000               # images rendered at each upsampler's resolution
    base_res: int = 32
    upsample_res: tuple[int, ...] = (64, 128)   # the two upsamplers (the paper: 64 -> 256 -> 1024)
    max_objects: int = 2
    clip: Stage = field(default_factory=lambda: Stage(1500, 128, 1e-3))
    prior: Stage = field(default_factory=lambda: Stage(3000, 128, 3e-4, ema=0.999))
    decoder: Stage = field(default_factory=lambda: Stage(5000, 32, 8e-4, ema=0.999))
    upsampler: Stage = field(default_factory=lambda: Stage(1200, 16, 5e-4, ema=0.995))
    prior_kind: str = "diffusion"               # 'diffusion' | 'ar' (autoregressive prior)
    prior_width: int = 128
    prior_layers: int = 4
    decoder_channels: int = 32
    decoder_res_blocks: int = 1
    upsampler_channels: int = 32
    upsampler_residual: bool = True             # diffuse hr - bicubic(low) (SRDiff-style) ...
    upsampler_pred: str = "x0"                  # ... predicting x0: an under-trained model stays near bicubic


def build_clip(r: UnCLIPRecipe) -> ClipAdapter:
    from dalle2_fast.data.shapes import VOCAB

    tok = WordTokenizer([w for w in VOCAB if w != "<pad>"], vocab_size=128, context_length=24)
    return ClipAdapter.create(TINY_SHAPES_MODEL, tokenizer=tok)


def build_prior(r: UnCLIPRecipe, clip: ClipAdapter):
    from dalle2_fast.models.prior import ARPriorConfig, AutoregressivePrior, DiffusionPrior, DiffusionPriorConfig

    if r.prior_kind == "ar":
        return AutoregressivePrior(ARPriorConfig(clip_dim=clip.embed_dim, text_width=clip.text_width,
                                                 text_len=clip.context_length, n_components=32, n_buckets=64,
                                                 n_dot_buckets=8, width=r.prior_width, layers=r.prior_layers,
                                                 heads=max(1, r.prior_width // 64)))
    if r.prior_kind != "diffusion":
        raise ValueError(f"UnCLIPRecipe.prior_kind must be 'diffusion' or 'ar', got {r.prior_kind!r}")
    return DiffusionPrior(DiffusionPriorConfig(clip_dim=clip.embed_dim, text_width=clip.text_width,
                                               text_len=clip.context_length, width=r.prior_width,
                                               layers=r.prior_layers, heads=max(1, r.prior_width // 64)))


def build_decoder(r: UnCLIPRecipe, clip: ClipAdapter):
    from dalle2_fast.models.decoder import DecoderConfig, UnCLIPDecoder
    from dalle2_fast.models.unet import UNetConfig

    mc = r.decoder_channels
    unet = UNetConfig(image_size=r.base_res, in_channels=3, model_channels=mc, channel_mult=(1, 2, 2),
                      num_res_blocks=r.decoder_res_blocks, attention_resolutions=(r.base_res // 2, r.base_res // 4),
                      num_head_channels=min(32, mc), learn_sigma=True, use_scale_shift_norm=True,
                      resblock_updown=True, cond_dim=clip.embed_dim, context_dim=mc * 2, cond_tokens=4,
                      num_groups=min(32, mc // 2))
    return UnCLIPDecoder(DecoderConfig(unet=unet, clip_dim=clip.embed_dim, text_width=clip.text_width,
                                       text_len=clip.context_length))


def build_upsampler(r: UnCLIPRecipe, low: int, high: int, k: int):
    from dalle2_fast.models.unet import UNetConfig
    from dalle2_fast.models.upsampler import UnCLIPUpsampler, UpsamplerConfig

    uc = r.upsampler_channels
    ucfg = UNetConfig(image_size=high, in_channels=3, low_res_channels=3, model_channels=uc, channel_mult=(1, 2, 2),
                      num_res_blocks=1, attention_resolutions=(), use_scale_shift_norm=True,
                      num_groups=min(32, uc // 2))
    crop = high // 2 if high >= 64 else 0
    diff = dataclasses.replace(UpsamplerConfig().diffusion, mean_type=r.upsampler_pred)
    return UnCLIPUpsampler(UpsamplerConfig(unet=ucfg, diffusion=diff, low_res=low, high_res=high,
                                           augment="blur" if k == 0 else "bsr", train_crop=crop,
                                           residual=r.upsampler_residual))


PIPELINE_DEFAULTS = dict(prior_steps=32, decoder_steps=25, upsampler_steps=8, prior_guidance=2.0,
                         decoder_guidance=3.0)  # guidance chosen on a seed-1 prompt set; reported on seed 0


def _render(seed: int, n: int, res: int, max_objects: int) -> tuple[torch.Tensor, list[str]]:
    from dalle2_fast.data.shapes import ShapesDataset

    ds = ShapesDataset(resolution=res, seed=seed, size=n, min_objects=1, max_objects=max_objects)
    b = ds.batch(0, n)
    return b["image"], b["caption"]


def _adam(params, lr):
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _loop(name: str, stage: Stage, step_fn: Callable[[int, torch.Generator], torch.Tensor], module: torch.nn.Module,
          seed: int, log: Callable[[str, int, float], None]) -> None:
    """AdamW with a short warmup and cosine decay; ``step_fn(step, generator) -> loss``. With
    ``stage.ema`` the module ends holding the exponential moving average of its weights
    (``torch.optim.swa_utils``), which is what gets saved and sampled."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    params = [p for p in module.parameters() if p.requires_grad]
    opt = _adam(params, stage.lr)
    ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(stage.ema), use_buffers=True) if stage.ema else None
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    warm = max(1, min(100, stage.steps // 20))
    module.train()
    for step in range(stage.steps):
        lr = stage.lr * min(1.0, (step + 1) / warm) * (0.55 + 0.45 * math.cos(math.pi * step / stage.steps))
        for grp in opt.param_groups:
            grp["lr"] = lr
        loss = step_fn(step, g)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"unclip recipe: {name} loss is {float(loss)} at step {step} (lower {name}.lr)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if ema is not None:
            ema.update_parameters(module)
        log(name, step, float(loss.detach()))
        if stage.max_minutes is not None and time.time() - t0 > 60 * stage.max_minutes:
            log(name, step, float("nan"))  # marks a time-limited stop
            break
    if ema is not None:
        module.load_state_dict(ema.module.state_dict())
    module.eval()


def _batch_idx(g: torch.Generator, n: int, b: int) -> torch.Tensor:
    return torch.randint(0, n, (b,), generator=g)


def _train_clip_stage(r: UnCLIPRecipe, x_base, captions, log) -> ClipAdapter:
    clip = build_clip(r)
    gc = torch.Generator().manual_seed(r.seed + 1)
    n = len(captions)

    def clip_batches():
        while True:
            i = _batch_idx(gc, n, r.clip.batch_size)
            yield x_base[i], [captions[j] for j in i.tolist()]

    train_clip(clip, clip_batches(), ClipTrainConfig(steps=r.clip.steps, lr=r.clip.lr, warmup=50, seed=r.seed,
                                                     max_minutes=r.clip.max_minutes),
               on_step=lambda s, v: log("clip", s, v))
    return clip.eval().requires_grad_(False)


def train_clip_only(recipe: UnCLIPRecipe, out_dir: str | Path, progress: bool = True) -> ClipAdapter:
    """``dalle2-fast train clip``: stage 1 alone; writes ``clip/`` (open_clip local-dir) and
    ``metrics.json`` (zero-shot accuracy on held-out images)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    x_base, captions = _render(recipe.seed, recipe.n_train, recipe.base_res, recipe.max_objects)
    t0 = time.time()

    def log(stage, step, loss):
        if progress and step % 100 == 0:
            print(f"[{time.time() - t0:7.1f}s] {stage} step {step} loss {loss:.4f}", flush=True)

    clip = _train_clip_stage(recipe, x_base, captions, log)
    clip.save(out / "clip")
    metrics = {"clip_zero_shot": clip_zero_shot(clip, recipe.seed + 1000, recipe.base_res)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if progress:
        print("CLIP zero-shot on held-out images:", metrics["clip_zero_shot"], flush=True)
    return clip


STAGES = ("clip", "prior", "decoder", "upsampler1", "upsampler2")


def stage_names(r: UnCLIPRecipe) -> list[str]:
    return ["clip", "prior", "decoder"] + [f"upsampler{k + 1}" for k in range(len(r.upsample_res))]


def stage_key(r: UnCLIPRecipe, name: str) -> dict:
    """The recipe fields a stage's result depends on (its own and its inputs')."""
    d = dataclasses.asdict(r)
    if name.startswith("upsampler"):
        k = int(name[len("upsampler"):])
        return {"seed": r.seed, "n_train_upsampler": r.n_train_upsampler, "max_objects": r.max_objects,
                "res": [r.base_res, *r.upsample_res[:k]], "upsampler": d["upsampler"],
                "upsampler_channels": r.upsampler_channels, "upsampler_residual": r.upsampler_residual,
                "upsampler_pred": r.upsampler_pred}
    key = {f: d[f] for f in ("seed", "n_train", "base_res", "max_objects", "clip")}
    own = {"prior": ("prior", "prior_kind", "prior_width", "prior_layers"),
           "decoder": ("decoder", "decoder_channels", "decoder_res_blocks"), "clip": ()}[name]
    key.update({f: d[f] for f in own})
    return key


class _StageStore:
    """``<out>/stages/``: each finished stage's weights plus ``<name>.json`` (its recipe key),
    written last, so a stage counts as done only once its weights are complete."""

    def __init__(self, out: Path, r: UnCLIPRecipe):
        self.dir, self.r = out / "stages", r
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.dir / ("clip" if name == "clip" else f"{name}.safetensors")

    def done(self, name: str) -> bool:
        meta = self.dir / f"{name}.json"
        if not meta.is_file():
            return False
        got, want = json.loads(meta.read_text()), json.loads(json.dumps(stage_key(self.r, name)))
        if got != want:
            diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            raise ValueError(f"unclip recipe: stage {name!r} in {self.dir} was trained with a different recipe "
                             f"(fields {diff} differ); delete {self.path(name)} and {meta} to retrain it, or "
                             "train with the recipe it was made with")
        return True

    def load(self, name: str):
        from dalle2_fast.checkpoint import load_pretrained

        return ClipAdapter.load(self.path(name)) if name == "clip" else load_pretrained(self.path(name)).eval()

    def save(self, name: str, module) -> None:
        from dalle2_fast.checkpoint import atomic_write_text, save_pretrained

        module.save(self.path(name)) if name == "clip" else save_pretrained(module, self.path(name))
        atomic_write_text(self.dir / f"{name}.json", json.dumps(stage_key(self.r, name), indent=2))


def train_unclip(recipe: UnCLIPRecipe, out_dir: str | Path, progress: bool = True,
                 stages: Sequence[str] | None = None):
    """Train the recipe's stages into ``out_dir``; returns the assembled
    :class:`~dalle2_fast.pipeline.UnCLIPPipeline` (saved to ``out_dir/pipeline``) once every stage
    is done, else None.

    Each finished stage is kept in ``out_dir/stages`` and never retrained: a rerun after an
    interruption continues with the first unfinished stage. ``stages`` restricts what this call
    trains (default: all), so independent stages can run in parallel processes — the upsamplers
    need nothing, the prior and the decoder need only the CLIP stage::

        dalle2-fast unclip train --out R --stages clip prior upsampler1 upsampler2 &
        (wait for clip) dalle2-fast unclip train --out R --stages decoder
    """
    from dalle2_fast.clip import TextEncoding
    from dalle2_fast.pipeline import UnCLIPPipeline

    r = recipe
    names = stage_names(r)
    want = names if stages is None else list(stages)
    bad = [s for s in want if s not in names]
    if bad:
        raise ValueError(f"train_unclip: unknown stages {bad}; this recipe has {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = _StageStore(out, r)
    (out / "recipe.json").write_text(json.dumps(dataclasses.asdict(r), indent=2))
    log_path = out / ("log.csv" if stages is None else f"log-{'-'.join(want)}.csv")
    new_log = not log_path.exists()
    logf = open(log_path, "a", newline="")
    writer = csv.writer(logf)
    if new_log:
        writer.writerow(["stage", "step", "loss", "seconds"])
    t_start = time.time()

    def log(stage, step, loss):
        writer.writerow([stage, step, f"{loss:.6g}", f"{time.time() - t_start:.1f}"])
        if progress and (step % 100 == 0):
            print(f"[{time.time() - t_start:7.1f}s] {stage} step {step} loss {loss:.4f}", flush=True)
            logf.flush()

    need_base = any(s in want and not store.done(s) for s in ("clip", "prior", "decoder"))
    if need_base:
        torch.manual_seed(r.seed)
        x_base, captions = _render(r.seed, r.n_train, r.base_res, r.max_objects)
        n = len(captions)

    # 1. CLIP ---------------------------------------------------------------------------------
    clip = None
    if store.done("clip"):
        clip = store.load("clip").eval().requires_grad_(False)
    elif "clip" in want:
        clip = _train_clip_stage(r, x_base, captions, log)
        metrics = {"clip_zero_shot": clip_zero_shot(clip, r.seed + 1000, r.base_res)}
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if progress:
            print("CLIP zero-shot on held-out images:", metrics["clip_zero_shot"], flush=True)
        store.save("clip", clip)

    todo = [s for s in ("prior", "decoder") if s in want and not store.done(s)]
    if todo and clip is None:
        raise RuntimeError(f"train_unclip: stages {todo} need the CLIP stage, which is not trained in "
                           f"{store.dir}; train 'clip' first (or in the same call)")
    if todo:
        with torch.no_grad():  # frozen CLIP: encode the training set once
            zi = torch.cat([clip.encode_image(x_base[i:i + 512]) for i in range(0, n, 512)])
            te = [clip.encode_text(captions[i:i + 512]) for i in range(0, n, 512)]
            t_tok, t_mask, t_emb = (torch.cat([getattr(e, k) for e in te]) for k in ("tokens", "mask", "embed"))

    # 2. prior --------------------------------------------------------------------------------
    if "prior" in todo:
        torch.manual_seed(r.seed + 2)
        prior = build_prior(r, clip)
        if r.prior_kind == "ar":
            prior.fit_quantizers(zi, t_emb)
        else:
            prior.fit_embed_scale(zi)

        def prior_step(step, g):
            i = _batch_idx(g, n, r.prior.batch_size)
            return prior.loss({"image_embed": zi[i], "text_tokens": t_tok[i], "text_mask": t_mask[i],
                               "text_embed": t_emb[i], "generator": g})["loss"]

        _loop("prior", r.prior, prior_step, prior, r.seed + 2, log)
        store.save("prior", prior)

    # 3. decoder ------------------------------------------------------------------------------
    if "decoder" in todo:
        torch.manual_seed(r.seed + 3)
        decoder = build_decoder(r, clip)

        def dec_step(step, g):
            i = _batch_idx(g, n, r.decoder.batch_size)
            return decoder.loss(x_base[i], zi[i], TextEncoding(t_tok[i], t_mask[i], t_emb[i]), generator=g)

        _loop("decoder", r.decoder, dec_step, decoder, r.seed + 3, log)
        store.save("decoder", decoder)

    # 4. upsamplers ---------------------------------------------------------------------------
    low = r.base_res
    for k, high in enumerate(r.upsample_res):
        name = f"upsampler{k + 1}"
        if name in want and not store.done(name):
            torch.manual_seed(r.seed + 4 + k)
            x_hi, _ = _render(r.seed, r.n_train_upsampler, high, r.max_objects)
            up = build_upsampler(r, low, high, k)
            m = x_hi.shape[0]

            def up_step(step, g, up=up, x_hi=x_hi):
                return up.loss(x_hi[_batch_idx(g, m, r.upsampler.batch_size)], generator=g)

            _loop(name, r.upsampler, up_step, up, r.seed + 4 + k, log)
            store.save(name, up)
            del x_hi
        low = high
    logf.close()

    if not all(store.done(s) for s in names):
        return None
    pipe = UnCLIPPipeline(store.load("clip"), store.load("prior"), store.load("decoder"),
                          [store.load(f"upsampler{k + 1}") for k in range(len(r.upsample_res))],
                          defaults=PIPELINE_DEFAULTS)
    pipe.save_pretrained(out / "pipeline")
    return pipe


# ---- evaluation ---------------------------------------------------------------------------------
@torch.no_grad()
def clip_zero_shot(clip: ClipAdapter, seed: int, res: int, n: int = 300) -> dict:
    """Zero-shot accuracy of CLIP on ``n`` held-out single-object images (a dataset seed the
    training never used) against the 30 prompts 'a <colour> <shape>' (never training sentences):
    colour and shape right, and each alone."""
    from dalle2_fast.clip_train import zero_shot_predict
    from dalle2_fast.data.shapes import COLOUR_NAMES, SHAPES, ShapesDataset

    b = ShapesDataset(resolution=res, seed=seed, size=n, min_objects=1, max_objects=1).batch(0, n)
    pairs = [(s, c) for s in SHAPES for c in COLOUR_NAMES]
    pred = zero_shot_predict(clip, b["image"], [f"a {c} {s}" for s, c in pairs]).tolist()
    objs = [o[0] for o in b["objects"]]
    ok_s = [pairs[p][0] == o.shape for p, o in zip(pred, objs)]
    ok_c = [pairs[p][1] == o.colour for p, o in zip(pred, objs)]
    return {"colour_and_shape": sum(a and b for a, b in zip(ok_s, ok_c)) / n, "colour": sum(ok_c) / n,
            "shape": sum(ok_s) / n, "n": n}


def eval_prompts(two_objects: bool = False) -> list[tuple[str, list[tuple[str, str]]]]:
    """Prompts in words the training captions use but never as whole sentences (no size or
    position words): ('a red circle', [('circle', 'red')]) or 'a red circle above a blue square'."""
    from dalle2_fast.data.shapes import COLOUR_NAMES, SHAPES

    if not two_objects:
        return [(f"a {c} {s}", [(s, c)]) for s in SHAPES for c in COLOUR_NAMES]
    out = []
    for i, (s1, c1) in enumerate((s, c) for s in SHAPES for c in COLOUR_NAMES):
        s2, c2 = SHAPES[(i * 2 + 1) % len(SHAPES)], COLOUR_NAMES[(i * 5 + 2) % len(COLOUR_NAMES)]
        if c2 == c1:
            c2 = COLOUR_NAMES[(COLOUR_NAMES.index(c1) + 1) % len(COLOUR_NAMES)]
        out.append((f"a {c1} {s1} above a {c2} {s2}", [(s1, c1), (s2, c2)]))
    return out


@torch.no_grad()
def caption_match_rate(pipe, prompts, n_per_prompt: int = 2, seed: int = 0, base_only: bool = True,
                       **sample_kw) -> dict:
    """Fraction of samples the shape/colour detector finds to match their caption.

    base_only: judge the decoder's base-resolution images (upsamplers skipped), which is what the
    caption content depends on. Returns {'rate', 'colour_rate', 'shape_rate', 'n'}."""
    from dalle2_fast.eval.detector import detect, recognised

    ups = pipe.upsamplers
    if base_only:
        pipe.upsamplers = []
    try:
        texts = [p for p, _ in prompts]
        imgs = pipe(texts, num_images_per_prompt=n_per_prompt, seed=seed, **sample_kw)
    finally:
        pipe.upsamplers = ups
    hit = col = shp = 0
    for k, img in enumerate(imgs):
        want = prompts[k // n_per_prompt][1]
        x = img * 2 - 1
        hit += recognised(x, want)
        dets = [d for d in detect(x) if d.score >= 0.5]
        col += all(any(d.colour == c for d in dets) for _, c in want)
        shp += all(any(d.shape == s for d in dets) for s, _ in want)
    m = len(imgs)
    return {"rate": hit / m, "colour_rate": col / m, "shape_rate": shp / m, "n": m}


# ---- command-line entry points (wired into ``dalle2-fast train unclip`` / ``sample``) ----------
def recipe_from_args(seed: int = 0, scale: float = 1.0, max_minutes: float | None = None,
                     upsample_res: tuple[int, ...] | None = None) -> UnCLIPRecipe:
    """The default recipe with every stage's steps multiplied by ``scale`` and, given
    ``max_minutes``, that total wall-clock budget split over the stages (CLIP 10%, prior 10%,
    decoder 60%, upsamplers 20%)."""
    r = UnCLIPRecipe(seed=seed)
    if upsample_res is not None:
        r.upsample_res = tuple(upsample_res)
    shares = {"clip": 0.1, "prior": 0.1, "decoder": 0.6, "upsampler": 0.2 / max(1, len(r.upsample_res))}
    for name, share in shares.items():
        st = getattr(r, name)
        st.steps = max(1, int(round(st.steps * scale)))
        if max_minutes is not None:
            st.max_minutes = max_minutes * share
    return r


def evaluate_pipeline(pipe, out_dir: str | Path, n_single: int = 4, n_two: int = 2, seed: int = 0,
                      progress: bool = True, **sample_kw) -> dict:
    """The issue's quality report: caption match of single-object prompts (30 prompts x
    ``n_single``) and two-object prompts (30 x ``n_two``), all sentences the training never
    contained, judged by the shapes detector at base resolution; plus CLIP zero-shot accuracy
    on held-out images and a picture. Writes ``caption_match.json`` and ``prompts.png``."""
    from dalle2_fast.pipeline import make_grid, to_pil

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = {"settings": {"seed": seed, **{k: pipe.defaults[k] for k in pipe.defaults}, **sample_kw}}
    for name, two, n in (("single", False, n_single), ("two", True, n_two)):
        t0 = time.time()
        res[name] = caption_match_rate(pipe, eval_prompts(two), n_per_prompt=n, seed=seed, **sample_kw)
        res[name]["seconds"] = round(time.time() - t0, 1)
        if progress:
            print(name, res[name], flush=True)
    res["clip_zero_shot"] = clip_zero_shot(pipe.clip, 1000 + seed, pipe.decoder.config.unet.image_size)
    (out / "caption_match.json").write_text(json.dumps(res, indent=2))
    prompts = ["a red circle above a blue square", "a green triangle", "a yellow star", "a purple diamond",
               "a blue circle", "a orange square"]
    imgs = pipe(prompts, num_images_per_prompt=6, seed=seed, **sample_kw)
    to_pil(make_grid(imgs, nrow=6)[None])[0].save(out / "prompts.png")
    return res


def sample_to_file(prompts: list[str], n: int = 16, out: str | Path = "samples.png", seed: int = 0,
                   pipeline: str | Path | None = None, progress: bool = True, **kw) -> Path:
    """``dalle2-fast sample "a red circle" -n 16 -o samples.png``: a grid of ``n`` images per
    prompt (one row block per prompt) from the shipped pipeline or ``pipeline``."""
    from dalle2_fast.pipeline import UnCLIPPipeline, make_grid, to_pil

    pipe = UnCLIPPipeline.from_pretrained(pipeline)
    imgs = pipe(prompts, num_images_per_prompt=n, seed=seed, progress=progress, **kw)
    grid = make_grid(imgs, nrow=max(1, math.ceil(math.sqrt(n))) if len(prompts) == 1 else n)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    to_pil(grid[None])[0].save(out)
    return out
