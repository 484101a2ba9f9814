"""Training tasks for the U-Net family (``train ddpm|iddpm|adm``) and the ADM noisy classifier
(``train classifier``) on the shapes data, plus ``generate``: sampling with any sampler and
guidance, used by the end-of-training picture and by ``dalle2-fast sample``.

Defaults (override any field with ``--set key=value``; U-Net, diffusion and model fields are
told apart by name):

- ddpm:  preset ddpm-32, linear schedule, fixed (small) variance, L_simple; unconditional.
- iddpm: preset iddpm-32, cosine schedule, learned-range variance, hybrid loss; unconditional.
- adm:   preset adm-32, cosine, learned-range, hybrid; class = shape kind, 10% label drop (CFG).
- classifier: preset classifier-32 on x_t at uniform random t of a cosine 1000-step process
  (the iddpm / adm default), class = shape kind.

``--classes shape|colour|class|none`` picks what the label is.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from dalle2_fast.diffusion import (ClassifierFreeGuidance, ClassifierGuidance, DiffusionConfig, GaussianDiffusion,
                                   ddim_sample, ddpm_sample, dpmpp_2m_sample, respace)
from dalle2_fast.models.classifier import NoisyClassifier
from dalle2_fast.models.diffusion_model import (DiffusionModel, DiffusionModelConfig, kind_for_num_classes,
                                                labels_from_batch, num_labels, recognition_rate_of)
from dalle2_fast.models.unet_configs import classifier_preset, unet_preset
from dalle2_fast.seeding import per_sample_rand, per_sample_randint, per_sample_randn
from dalle2_fast.train.distributed import item_dropout

SAMPLERS = ("ddpm", "ddim", "dpmpp")
GUIDANCES = ("none", "classifier", "cfg")

_DEFAULTS = {
    "ddpm": ("ddpm-32", DiffusionConfig(schedule="linear", var_type="fixed_small", loss="simple"), "none", 0.0),
    "iddpm": ("iddpm-32", DiffusionConfig(schedule="cosine", var_type="learned_range", loss="hybrid"), "none", 0.0),
    "adm": ("adm-32", DiffusionConfig(schedule="cosine", var_type="learned_range", loss="hybrid"), "shape", 0.1),
}


def _split_overrides(items, groups: dict) -> dict:
    """``['model_channels=32', 'schedule=linear']`` -> {group: [items]} by which dataclass
    (``groups``: name -> dataclass type or set of names) has the field; unknown names raise."""
    out = {g: [] for g in groups}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k = item.split("=", 1)[0]
        for g, fields in groups.items():
            names = fields if isinstance(fields, set) else {f.name for f in dataclasses.fields(fields)}
            if k in names:
                out[g].append(item)
                break
        else:
            known = sorted(n for f in groups.values()
                           for n in (f if isinstance(f, set) else {x.name for x in dataclasses.fields(f)}))
            raise ValueError(f"--set {k}: unknown field; fields: {known}")
    return out


def _cycle(n: int, k: int) -> torch.Tensor:
    return torch.arange(n) % k


class DiffusionTask:
    """DDPM / Improved DDPM / ADM: ``diffusion.training_losses`` at uniform random steps."""
    default_lr = 5e-4
    default_ema = 0.999  # samples come from an EMA of the weights (Ho et al. 0.9999; ours: short runs)

    def __init__(self, name: str):
        self.name = name
        self.bpd_n, self.sample_steps = 16, 50

    def build(self, args):
        from dalle2_fast.models.unet import UNetConfig
        from dalle2_fast.train.tasks import apply_overrides

        preset, diff, kind, p_uncond = _DEFAULTS[self.name]
        kind = getattr(args, "classes", None) or kind
        self.bpd_n = getattr(args, "bpd_n", 16)
        self.sample_steps = getattr(args, "sample_steps", 50)
        sets = _split_overrides(args.set, {"diffusion": DiffusionConfig, "model": {"p_uncond"}, "unet": UNetConfig})
        diff = apply_overrides(diff, sets["diffusion"])
        for item in sets["model"]:
            p_uncond = float(item.split("=", 1)[1])
        if kind == "none":
            p_uncond = 0.0
        n = num_labels(kind)
        unet = unet_preset(preset, image_size=args.resolution, learn_sigma=diff.var_type == "learned_range",
                           num_classes=(n + (1 if p_uncond > 0 else 0)) if n else None)
        unet = apply_overrides(unet, sets["unet"])
        return DiffusionModel(DiffusionModelConfig(unet=unet, diffusion=diff, label_kind=kind, p_uncond=p_uncond))

    def optimizers(self, model, lr):
        return {"model": torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)}

    def _diffusion(self, model) -> GaussianDiffusion:
        key = (id(model), model.config.diffusion)
        if getattr(self, "_diff_key", None) != key:
            self._diff_key, self._diff = key, model.diffusion()
        return self._diff

    def step(self, model, batch, opts) -> dict:
        """One step on ``diffusion.training_losses``. Item i's timestep, noise, label dropout and
        U-Net dropout masks come from its own seeds (``batch['seeds']``), so ranks on slices of
        the global batch draw what one process draws for the whole batch."""
        model.train()
        d = self._diffusion(model)
        x0, seeds = batch["image"], batch["seeds"]
        y = labels_from_batch(model.config.label_kind, batch["label"])
        if y is not None and model.null_label is not None:
            drop = per_sample_rand(seeds("label_drop"), (), y.device) < model.config.p_uncond
            y = torch.where(drop, torch.full_like(y, model.null_label), y)
        t = per_sample_randint(seeds("t"), d.num_timesteps, x0.device)
        noise = per_sample_randn(seeds("noise"), x0.shape[1:], x0.device, x0.dtype)
        with item_dropout(model, seeds):  # the U-Net's dropout masks too (forward and recompute)
            terms = d.training_losses(model.unet, x0, t, noise=noise, model_kwargs={"y": y} if y is not None else None)
            loss = terms["loss"].mean()
            opts["model"].zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opts["model"].step()
        logs = {"loss": loss.item(), "mse": terms["mse"].mean().item()}
        if "vb" in terms:
            logs["vb"] = terms["vb"].mean().item()
        return logs

    def _labels(self, model, n):
        return _cycle(n, model.num_labels) if model.num_labels else None

    @torch.no_grad()
    def evaluate(self, model, held: dict, gen: torch.Generator) -> dict:
        """Held-out bits/dim (full T-step VLB on ``--bpd-n`` images) and the detector's
        recognition rate of DDIM samples (of their labels for a conditional model)."""
        model.eval()
        d = self._diffusion(model)
        x = held["image"][: self.bpd_n]
        y = labels_from_batch(model.config.label_kind, held["label"][: self.bpd_n])
        bpd = d.calc_bpd_loop(model.unet, x, clip="static", model_kwargs={"y": y} if y is not None else None,
                              generator=gen)
        n = min(64, len(held["image"]))
        labels = self._labels(model, n)
        imgs = generate(model, n, sampler="ddim", steps=self.sample_steps, labels=labels,
                        seeds=[int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) + i for i in range(n)])
        return {"heldout_bpd": round(bpd["total_bpd"].mean().item(), 4), "bpd_images": len(x),
                "prior_bpd": round(bpd["prior_bpd"].mean().item(), 6), "num_timesteps": d.num_timesteps,
                "var_type": d.var_type, "label_kind": model.config.label_kind,
                "sample_recognition_rate": recognition_rate_of(imgs, model.config.label_kind, labels),
                "sample_images": n, "sampler": f"ddim{self.sample_steps}"}

    @torch.no_grad()
    def picture(self, model, held, n, gen):
        model.eval()
        return generate(model, n, sampler="ddim", steps=self.sample_steps, labels=self._labels(model, n),
                        seeds=[int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) + i for i in range(n)])


class ClassifierTask:
    """The noisy classifier: cross-entropy on x_t = q_sample(x0, t) at uniform random t."""
    default_lr = 5e-4

    def build(self, args):
        from dalle2_fast.models.classifier import ClassifierConfig
        from dalle2_fast.train.tasks import apply_overrides

        kind = getattr(args, "classes", None) or "shape"
        if kind == "none":
            raise ValueError("train classifier: --classes must be shape, colour or class, not 'none'")
        sets = _split_overrides(args.set, {"diffusion": DiffusionConfig, "classifier": ClassifierConfig})
        self.diff_cfg = apply_overrides(DiffusionConfig(schedule="cosine"), sets["diffusion"])
        self.diff = GaussianDiffusion.from_config(self.diff_cfg)
        cfg = classifier_preset("classifier-32", image_size=args.resolution, num_classes=num_labels(kind))
        return NoisyClassifier(apply_overrides(cfg, sets["classifier"]))

    def optimizers(self, model, lr):
        return {"model": torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)}

    def _logits(self, model, x0, t, noise=None):
        x_t = self.diff.q_sample(x0, t, noise)
        return model(x_t, self.diff.model_timesteps(t))

    def step(self, model, batch, opts) -> dict:
        model.train()
        x0, seeds = batch["image"], batch["seeds"]
        y = labels_from_batch(kind_for_num_classes(model.config.num_classes), batch["label"])
        t = per_sample_randint(seeds("t"), self.diff.num_timesteps, x0.device)  # item i's own t and noise
        with item_dropout(model, seeds):
            logits = self._logits(model, x0, t, per_sample_randn(seeds("noise"), x0.shape[1:], x0.device, x0.dtype))
            loss = F.cross_entropy(logits, y)
            opts["model"].zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opts["model"].step()
        return {"loss": loss.item(), "acc": (logits.argmax(1) == y).float().mean().item()}

    @torch.no_grad()
    def evaluate(self, model, held: dict, gen: torch.Generator) -> dict:
        """Held-out accuracy at t = 0, T/4, T/2 and 3T/4."""
        model.eval()
        kind = kind_for_num_classes(model.config.num_classes)
        x, y = held["image"], labels_from_batch(kind, held["label"])
        T = self.diff.num_timesteps
        m = {"label_kind": kind, "num_timesteps": T, "schedule": self.diff_cfg.schedule}
        for frac in (0, 0.25, 0.5, 0.75):
            t = torch.full((len(x),), int(frac * T), dtype=torch.long)
            noise = torch.randn(x.shape, generator=gen)
            logits = model(self.diff.q_sample(x, t, noise), self.diff.model_timesteps(t))
            m[f"heldout_acc_t{int(frac * T)}"] = round((logits.argmax(1) == y).float().mean().item(), 4)
        return m

    @torch.no_grad()
    def picture(self, model, held, n, gen):
        """Held-out inputs noised at increasing t (what the classifier sees)."""
        x = held["image"][:n]
        t = torch.linspace(0, self.diff.num_timesteps - 1, len(x)).long()
        return self.diff.q_sample(x, t, torch.randn(x.shape, generator=gen)).clamp(-1, 1)


def generate(model: DiffusionModel, n: int, *, sampler: str = "ddim", steps: int = 50, guidance: str = "none",
             scale: float = 1.0, classifier: NoisyClassifier | None = None, labels: torch.Tensor | None = None,
             seeds=None, eta: float = 0.0, progress: bool = False) -> torch.Tensor:
    """``n`` images (n, C, S, S) in [-1, 1] from ``model`` with ``sampler`` over ``steps``
    respaced steps. guidance: 'none'; 'classifier' (ADM classifier guidance with ``classifier``,
    scale = gradient scale; works for unconditional models too); 'cfg' (classifier-free, needs a
    model trained with p_uncond > 0; scale s = 1 is the conditional model). labels (n,): class
    ids of the model's (or, for an unconditional model, the classifier's) label kind."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if guidance not in GUIDANCES:
        raise ValueError(f"guidance must be one of {GUIDANCES}, got {guidance!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    base = model.diffusion()
    steps = min(steps, base.num_timesteps)
    d = respace(base, f"ddim{steps}" if sampler == "ddim" else str(steps))
    unet, kind = model.unet, model.config.label_kind
    if guidance == "classifier":
        if classifier is None:
            raise ValueError("guidance 'classifier' needs a classifier (--classifier CKPT)")
        ckind = kind_for_num_classes(classifier.config.num_classes)
        if kind != "none" and ckind != kind:
            raise ValueError(f"the classifier predicts {ckind} labels but the model is conditioned on {kind} labels")
        kind = ckind
    if guidance == "cfg" and model.null_label is None:
        raise ValueError("guidance 'cfg' needs a model trained with label dropout (p_uncond > 0); "
                         f"this one has label_kind={kind!r}, p_uncond={model.config.p_uncond}")
    nl = num_labels(kind)
    if nl and labels is None:
        labels = _cycle(n, nl)
    if labels is not None:
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if labels.shape != (n,) or int(labels.min()) < 0 or int(labels.max()) >= max(nl, 1):
            raise ValueError(f"labels must be ({n},) ids in [0, {nl}), got {labels.tolist()[:8]}...")
    kw = {}
    if model.config.label_kind != "none":
        kw["y"] = labels
        den = unet
    else:
        def den(x, t, cls_y=None):  # the unconditional model ignores the classifier's labels
            return unet(x, t)
    if guidance == "classifier":
        if "y" not in kw:
            kw["cls_y"] = labels
        den = ClassifierGuidance(den, classifier.eval(), d, scale, label_key="y" if "y" in kw else "cls_y")
    elif guidance == "cfg":
        den = ClassifierFreeGuidance(unet, scale, {"y": torch.full((1,), model.null_label, dtype=torch.long)})
    S, C = model.config.unet.image_size, model.config.unet.in_channels
    fn = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpmpp": dpmpp_2m_sample}[sampler]
    extra = {"eta": eta} if sampler == "ddim" else {}
    seeds = list(range(n)) if seeds is None else list(seeds)
    with torch.no_grad():
        x = fn(den, d, (n, C, S, S), model_kwargs=kw, clip="static", seeds=seeds, progress=progress, **extra)
    return x.clamp(-1, 1)
